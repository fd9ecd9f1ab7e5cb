//! # `veil run`'s shutdown signals: SIGTERM and SIGINT.
//!
//! The process's end of the flow: what stops `veil run` (the server drains on it). Installing
//! a handler can fail (no tokio runtime on this thread, or the OS refuses the signal); that is
//! an error `veil run` reports and exits on, never a panic (veil#11 item 8). SIGHUP (rules
//! reload) is installed by the server, which degrades to "reload disabled" instead.

use std::future::Future;
use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that arrives right after startup is not fatal.
///
/// # Errors
/// An [`io::Error`] naming the signal when a handler cannot be installed: called outside a
/// tokio runtime, or refused by tokio or the OS.
pub(crate) fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Installs the handler for `kind` (`name` is for the message). tokio's `signal` panics
/// outside a runtime, so that case is checked first and is an error like the others.
fn install(kind: SignalKind, name: &str) -> io::Result<Signal> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other(format!(
            "cannot install the {name} handler: not inside a tokio runtime"
        )));
    }
    signal(kind)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot install the {name} handler: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // See: veil#11. `shutdown_signal` called `.expect("invariant: SIGTERM handler installs")`,
    // so a failed installation aborted `veil run` with a panic instead of an error.
    #[test]
    fn shutdown_signal_outside_a_runtime_is_an_error_not_a_panic() {
        let err = shutdown_signal()
            .err()
            .expect("no runtime: must be an error");
        let msg = err.to_string();
        assert!(msg.contains("SIGTERM"), "{msg}");
        assert!(msg.contains("not inside a tokio runtime"), "{msg}");
    }

    // See: veil#11
    #[test]
    fn a_signal_the_os_refuses_is_an_error_naming_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in_rt = rt.enter();
        // SIGKILL (9) cannot be caught; tokio refuses to register it.
        let err =
            install(SignalKind::from_raw(9), "SIGKILL").expect_err("SIGKILL cannot be handled");
        assert!(
            err.to_string()
                .starts_with("cannot install the SIGKILL handler: "),
            "{err}"
        );
        assert!(install(SignalKind::terminate(), "SIGTERM").is_ok());
        assert!(shutdown_signal().is_ok());
    }
}
