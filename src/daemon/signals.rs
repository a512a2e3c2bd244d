//! The daemon's signals: SIGTERM and SIGINT start the drain, SIGHUP reloads, and signals whose
//! default action would kill the process with its queue are ignored.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// The daemon's signals: SIGTERM and SIGINT cancel `token` (the drain); SIGHUP calls `reload`
/// (what `systemctl reload` and a closing terminal send: never a reason to stop); SIGUSR1 and
/// SIGUSR2, whose default action would kill the process and its queue, are logged and ignored.
pub fn handle_daemon_signals(
    token: CancellationToken,
    reload: impl Fn() + Send + 'static,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("while installing SIGHUP handler")?;
    let mut usr1 =
        signal(SignalKind::user_defined1()).context("while installing SIGUSR1 handler")?;
    let mut usr2 =
        signal(SignalKind::user_defined2()).context("while installing SIGUSR2 handler")?;
    cancel_on_signals(token.clone())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => reload(),
                _ = usr1.recv() => tracing::info!(signal = "SIGUSR1", "ignored"),
                _ = usr2.recv() => tracing::info!(signal = "SIGUSR2", "ignored"),
                () = token.cancelled() => return,
            }
        }
    });
    Ok(())
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("while installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("while installing SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
            () = token.cancelled() => return,
        }
        token.cancel();
    });
    Ok(())
}
