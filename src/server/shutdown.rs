//! SIGINT and SIGTERM: the first starts a graceful shutdown, the second ends the process.
//!
//! An operator who sends a second signal has decided not to wait for the drain; so have
//! orchestrators that follow SIGTERM with SIGKILL, only less politely. The second signal
//! exits at once with `128 + signal number` (130 for SIGINT, 143 for SIGTERM), the shell's
//! convention for "killed by a signal", without waiting for anything.

use std::io;

/// The process's SIGINT and SIGTERM, registered once so that no signal between the first
/// and the second is lost.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening for SIGINT and SIGTERM. Needs a tokio runtime.
    pub fn new() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next SIGINT or SIGTERM and returns its number.
    pub async fn recv(&mut self) -> i32 {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => 2,
                _ = self.terminate.recv() => 15,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            2
        }
    }

    /// Completes on the first signal; from then on, a second one exits the process at once
    /// with `128 + its number`.
    pub async fn first_then_force_exit(mut self) {
        let first = self.recv().await;
        tracing::info!(
            signal = first,
            "signal received: shutting down (send another to exit at once)"
        );
        tokio::spawn(async move {
            let second = self.recv().await;
            tracing::warn!(signal = second, "second signal: exiting now");
            eprintln!("waypoint: second signal ({second}); exiting without draining");
            std::process::exit(128 + second);
        });
    }
}
