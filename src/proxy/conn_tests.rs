//! Unit tests of [the connection clock](super): the verdict of [`Activity`] at each deadline,
//! under a paused tokio clock.

use super::*;

const LIMITS: Limits = Limits {
    header_read: Duration::from_secs(10),
    idle: Duration::from_secs(120),
};

fn after(a: &Activity, secs: u64) -> Instant {
    a.start + Duration::from_secs(secs)
}

#[tokio::test(start_paused = true)]
async fn a_fresh_connection_gets_header_read_for_its_first_head() {
    let a = Activity::new();
    assert_eq!(
        a.verdict(after(&a, 9), LIMITS),
        Verdict::Until(after(&a, 10))
    );
    assert_eq!(
        a.verdict(after(&a, 10), LIMITS),
        Verdict::Close(Why::FirstHead)
    );
    // Bytes of the head arriving do not buy more time for the first request.
    a.on_read();
    assert_eq!(
        a.verdict(after(&a, 10), LIMITS),
        Verdict::Close(Why::FirstHead)
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_is_never_cut() {
    let a = Activity::new();
    let guard = a.begin(Version::HTTP_11);
    for secs in [10, 121, 10_000] {
        assert!(matches!(
            a.verdict(after(&a, secs), LIMITS),
            Verdict::Until(_)
        ));
    }
    drop(guard);
}

#[tokio::test(start_paused = true)]
async fn idle_then_a_slow_head_on_http1() {
    let a = Activity::new();
    tokio::time::advance(Duration::from_secs(5)).await;
    drop(a.begin(Version::HTTP_11)); // a request at 5 s, done at once: idle from 5 s
    assert_eq!(
        a.verdict(after(&a, 100), LIMITS),
        Verdict::Until(after(&a, 125))
    );
    assert_eq!(a.verdict(after(&a, 125), LIMITS), Verdict::Close(Why::Idle));
    // A head that begins at 120 s has until 130 s, even past the idle deadline.
    tokio::time::advance(Duration::from_secs(115)).await;
    a.on_read();
    assert_eq!(
        a.verdict(after(&a, 125), LIMITS),
        Verdict::Until(after(&a, 130))
    );
    assert_eq!(a.verdict(after(&a, 130), LIMITS), Verdict::Close(Why::Head));
}

#[tokio::test(start_paused = true)]
async fn h2_reads_are_not_heads() {
    let a = Activity::new();
    drop(a.begin(Version::HTTP_2));
    tokio::time::advance(Duration::from_secs(30)).await;
    a.on_read(); // a ping ack
    assert_eq!(
        a.verdict(after(&a, 40), LIMITS),
        Verdict::Until(after(&a, 120))
    );
    assert_eq!(a.verdict(after(&a, 120), LIMITS), Verdict::Close(Why::Idle));
}
