//! # Woken: a side future that is polled only when it woke its task.
//!
//! A connection task waits on its connection and, beside it, on rare events: shutdown (two
//! `CancellationToken`s shared by every connection) and its own idle clock. A plain `select!`
//! polls every branch each time the task wakes, and the task wakes several times per request
//! (each read and write of either socket). Polling a token's `WaitForCancellationFuture`
//! locks the token's mutex and then its `Notify`'s waiter list, and both are shared by every
//! connection of the process, so both forwarding threads took the same two locks for each
//! of the two tokens on nearly every wake-up (~0.45 µs per response at 64 connections, stop
//! 62's profile, with the cache lines moving between cores).
//!
//! [`Woken`] gives the side future a waker of its own. The side future is polled on the first
//! poll and then only after that waker fired (or after [`Woken::rearm`]); any other wake-up
//! of the task returns `Pending` for it at the cost of one uncontended per-connection lock.
//! No wake-up is lost: the task's waker is stored before the flag is read, and the side
//! future's waker sets the flag before it wakes the task.
//!
//! [`Killable`] is `task` ended when its `kill` token fires, with the token behind a
//! [`Woken`]: what `tokio_util`'s `with_cancellation_token_owned` does, without the per-poll
//! locks.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pin_project_lite::pin_project! {
    /// `F`, polled only when its own waker fired since its last poll, on the first poll, and
    /// after [`Woken::rearm`]; `Pending` otherwise.
    #[derive(Debug)]
    pub struct Woken<F> {
        #[pin]
        inner: F,
        flag: Arc<Flag>,
        waker: Waker,
        // The task waker last stored in `flag`, kept here too so that a poll by the same
        // task (nearly every poll) compares two pointers instead of taking the lock.
        registered: Option<Waker>,
    }
}

/// What the side future's waker sets, and the task it wakes.
#[derive(Debug)]
struct Flag {
    /// The side future's waker fired since it was last polled (true at first).
    woke: AtomicBool,
    /// The waker of the task that last polled the [`Woken`].
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The flag first: the task this wakes must find it set.
        self.woke.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

impl<F> Woken<F> {
    /// `inner`, to be polled at the first poll.
    pub fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            woke: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let waker = Waker::from(flag.clone());
        Woken {
            inner,
            flag,
            waker,
            registered: None,
        }
    }

    /// The inner future, to change it (e.g. `Sleep::reset`): it is polled at the next poll,
    /// so a change that needs a poll to take effect (a new deadline registered) gets one.
    pub fn rearm(self: Pin<&mut Self>) -> Pin<&mut F> {
        let this = self.project();
        this.flag.woke.store(true, Ordering::Release);
        this.inner
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Before the flag is read: a wake-up after the read finds this waker. Only this
        // future writes `flag.task`, so `registered` is what it holds.
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let w = cx.waker().clone();
            *this
                .flag
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(w.clone());
            *this.registered = Some(w);
        }
        if !this.flag.woke.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

pin_project_lite::pin_project! {
    /// `task`, dropped unfinished when `kill` fires (`None` then). `kill` is looked at before
    /// `task` on each poll, as `tokio_util`'s `with_cancellation_token_owned` does, but only
    /// when it woke the task (see the module docs).
    #[derive(Debug)]
    pub struct Killable<F> {
        #[pin]
        task: F,
        #[pin]
        kill: Woken<WaitForCancellationFutureOwned>,
    }
}

impl<F> Killable<F> {
    /// `task`, dropped when `kill` fires.
    pub fn new(task: F, kill: CancellationToken) -> Self {
        Killable {
            task,
            kill: Woken::new(kill.cancelled_owned()),
        }
    }
}

impl<F: Future> Future for Killable<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.kill.poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        this.task.poll(cx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, and then wakes nothing itself.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_after_its_own_waker_fired() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(Mutex::new(None::<Waker>));
        let mut w = Box::pin(Woken::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        }));
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);

        assert!(w.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled on the first poll");
        // Other wake-ups of the task: the inner future is left alone.
        for _ in 0..5 {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);

        // Its own waker fires: the task is woken, and the next poll reaches it.
        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert!(w.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_rearmed_future_is_polled_again() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut w = Box::pin(Woken::new(Probe {
            polls: polls.clone(),
            ready: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(Mutex::new(None)),
        }));
        let task_waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&task_waker);
        assert!(w.as_mut().poll(&mut cx).is_pending());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        w.as_mut().rearm();
        assert!(w.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_latest_task_waker_is_the_one_woken() {
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(Mutex::new(None::<Waker>));
        let mut w = Box::pin(Woken::new(Probe {
            polls: Arc::new(AtomicUsize::new(0)),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        }));
        let first = Arc::new(Count(AtomicUsize::new(0)));
        let second = Arc::new(Count(AtomicUsize::new(0)));
        let (w1, w2) = (Waker::from(first.clone()), Waker::from(second.clone()));
        assert!(w.as_mut().poll(&mut Context::from_waker(&w1)).is_pending());
        // The task moved (another waker): a later wake-up must reach the new one.
        assert!(w.as_mut().poll(&mut Context::from_waker(&w2)).is_pending());
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn killable_ends_its_task_when_the_token_fires() {
        let kill = CancellationToken::new();
        let killed = Killable::new(std::future::pending::<()>(), kill.clone());
        let canceller = tokio::spawn({
            let kill = kill.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                kill.cancel();
            }
        });
        let out = tokio::time::timeout(Duration::from_secs(5), killed)
            .await
            .expect("the task ends when kill fires");
        assert_eq!(out, None);
        canceller.await.unwrap();
        // A task that finishes first gives its output.
        let out = Killable::new(async { 7 }, CancellationToken::new()).await;
        assert_eq!(out, Some(7));
        // An already fired token ends the task before it is polled.
        let fired = CancellationToken::new();
        fired.cancel();
        assert_eq!(Killable::new(async { 7 }, fired).await, None);
    }
}
