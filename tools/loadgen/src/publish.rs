//! Publishing a workload to Redis: as fast as Redis takes it, or paced.
//!
//! It owns the PUBLISH pipelines and the connection's timeouts; it must not import
//! `trading-sync` (channel names come from [`Channel::suffix`]).

use std::time::{Duration, Instant};

use crate::generate::{Channel, Message};

/// Channel names for a prefix, in [`Channel::ALL`] order: built once, not once per message.
fn channels(prefix: &str) -> [String; 3] {
    Channel::ALL.map(|c| format!("{prefix}:{}", c.suffix()))
}

fn channel_name(names: &[String; 3], channel: Channel) -> &str {
    &names[channel.index()]
}

/// Publishes every message as fast as Redis takes them: pipelines of `pipeline` PUBLISH
/// commands, one round trip each, in order.
pub async fn publish_burst(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    messages: &[Message],
    pipeline: usize,
) -> redis::RedisResult<()> {
    burst(conn, prefix, messages, pipeline, |pipe, key, m| {
        pipe.cmd("PUBLISH").arg(key).arg(&m.payload).ignore();
    })
    .await
}

/// Appends every message to its channel's stream (`<prefix>:<suffix>`, as a daemon with
/// `transport.* = "stream"` reads them) as fast as Redis takes them: pipelines of `pipeline`
/// `XADD <key> * <field> <payload>`, one round trip each, in order.
pub async fn xadd_burst(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    field: &str,
    messages: &[Message],
    pipeline: usize,
) -> redis::RedisResult<()> {
    burst(conn, prefix, messages, pipeline, |pipe, key, m| {
        pipe.cmd("XADD")
            .arg(key)
            .arg("*")
            .arg(field)
            .arg(&m.payload)
            .ignore();
    })
    .await
}

/// Sends one command per message, built by `command` with the message's channel key, in
/// pipelines of `pipeline`, one round trip each, in order.
async fn burst(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    messages: &[Message],
    pipeline: usize,
    command: impl Fn(&mut redis::Pipeline, &str, &Message),
) -> redis::RedisResult<()> {
    let names = channels(prefix);
    for chunk in messages.chunks(pipeline.max(1)) {
        let mut pipe = redis::pipe();
        for m in chunk {
            command(&mut pipe, channel_name(&names, m.channel), m);
        }
        pipe.exec_async(conn).await?;
    }
    Ok(())
}

/// Publishes at `rate` messages/s: every millisecond, whatever is due by then goes out as one
/// pipeline, so a late tick catches up instead of lowering the rate. Returns the instant each
/// message was handed to Redis.
pub async fn publish_paced(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    messages: &[Message],
    rate: f64,
) -> redis::RedisResult<Vec<Instant>> {
    let names = channels(prefix);
    let mut sent_at = Vec::with_capacity(messages.len());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    while sent_at.len() < messages.len() {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as usize + 1).min(messages.len());
        if due <= sent_at.len() {
            continue;
        }
        let mut pipe = redis::pipe();
        for m in &messages[sent_at.len()..due] {
            pipe.cmd("PUBLISH")
                .arg(channel_name(&names, m.channel))
                .arg(&m.payload)
                .ignore();
        }
        let now = Instant::now();
        pipe.exec_async(conn).await?;
        sent_at.resize(due, now);
    }
    Ok(sent_at)
}

/// A multiplexed connection whose replies may take longer than redis-rs's default 500 ms: a
/// loaded machine stalls a large pipeline that long (PITFALLS.md).
pub async fn connect_redis(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    connect_client(&redis::Client::open(url)?).await
}

/// [`connect_redis`] for a client built elsewhere (a TLS client with its certificates).
pub async fn connect_client(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
