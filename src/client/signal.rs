//! The client's own wait for SIGTERM or SIGINT, which ends `token --refresh`
//! and `agent` cleanly (exit 0).
//!
//! The client's copy, so that it imports nothing of the server side.

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::ClientError;

/// SIGTERM and SIGINT, listened for from `listen` on: a signal that comes
/// while the first token is being minted is not lost.
pub(super) struct Stop {
    term: Signal,
    int: Signal,
}

impl Stop {
    pub(super) fn listen() -> Result<Stop, ClientError> {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| ClientError::Input(format!("cannot listen for {name}: {e}")))
        };
        Ok(Stop {
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            int: listen(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and names it.
    pub(super) async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
