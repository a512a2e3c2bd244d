//! The local HTTP port: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the database answers and every subscription is live; 503 otherwise, e.g. while
//! Redis is reconnecting).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use super::DaemonState;

#[derive(Clone)]
struct AppState {
    daemon: Arc<DaemonState>,
    pool: deadpool_postgres::Pool,
    /// A writer holding a batch longer than this is stuck: not ready.
    stall: Duration,
}

/// Serves on `listener` (bound by [`super::Daemon::build`]) until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Arc<DaemonState>,
    pool: deadpool_postgres::Pool,
    stall: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            daemon,
            pool,
            stall,
        });
    // The bound address, not the configured one: with port 0 it names the port picked.
    let listen = listener.local_addr()?;
    tracing::info!(listen = %listen, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Readiness is evaluated at each scrape too (`trading_sync_ready`), so that an alert can see
/// how long the daemon has not been ready: Prometheus reads /metrics, never /readyz.
async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    readiness(&state).await;
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::telemetry::prometheus().render(),
    )
}

#[derive(serde::Serialize)]
struct Readiness {
    ready: bool,
    database: bool,
    /// The batch writer's last attempt reached the database.
    writer_database: bool,
    /// The writer refuses to guess around an error an operator must fix.
    writer_blocked: bool,
    /// How long the writer has held its current batch uncommitted (0 when idle).
    writer_busy_ms: u64,
    redis_subscribed: bool,
    /// Which transports this daemon reads: a series registered at zero does not say so.
    uses_pubsub: bool,
    uses_streams: bool,
    uses_journal: bool,
    queue_depth: usize,
    queue_bytes: usize,
    redis_disconnects: u64,
    stream_pending: u64,
    stream_oldest_pending_ms: u64,
    stream_length: u64,
    journal_length: u64,
    journal_buffer_bytes: usize,
    journal_bypassed: u64,
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let body = readiness(&state).await;
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// What `/readyz` answers; also sets the `trading_sync_ready` gauge (1 ready, 0 not).
async fn readiness(state: &AppState) -> Readiness {
    let database = tokio::time::timeout(Duration::from_secs(2), async {
        let client = state.pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    })
    .await
    .ok()
    .flatten()
    .is_some();
    let d = &state.daemon;
    let redis_subscribed = d.ingest_live();
    // A database that answers SELECT 1 may still refuse the batch (read-only, permissions), and a
    // writer may be stuck on a lock: neither is ready.
    let writer_database = !d.writer.database_failing.load(Ordering::Acquire);
    let busy = d.writer.busy.age().unwrap_or_default();
    let body = Readiness {
        ready: database && redis_subscribed && writer_database && busy < state.stall,
        database,
        writer_database,
        writer_blocked: d.writer.blocked.load(Ordering::Acquire),
        writer_busy_ms: busy.as_millis() as u64,
        redis_subscribed,
        uses_pubsub: d.uses_pubsub.load(Ordering::Relaxed),
        uses_streams: d.uses_streams.load(Ordering::Relaxed),
        uses_journal: d.uses_journal.load(Ordering::Relaxed),
        queue_depth: d.queue.depth.load(Ordering::Relaxed),
        queue_bytes: d.queue.bytes.load(Ordering::Relaxed),
        redis_disconnects: d.subscription.disconnects.load(Ordering::Relaxed),
        stream_pending: d.streams.pending.load(Ordering::Relaxed),
        stream_oldest_pending_ms: d.streams.oldest_pending_ms.load(Ordering::Relaxed),
        stream_length: d.streams.length.load(Ordering::Relaxed),
        journal_length: d.journal.length.load(Ordering::Relaxed),
        journal_buffer_bytes: d.journal.buffer.bytes.load(Ordering::Relaxed),
        journal_bypassed: d.journal.bypassed.load(Ordering::Relaxed),
    };
    metrics::gauge!("trading_sync_ready").set(f64::from(u8::from(body.ready)));
    body
}
