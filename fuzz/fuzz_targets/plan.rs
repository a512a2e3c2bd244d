//! The batch planner on arbitrary batches: messages split at 0xFF bytes, channels in turn. It
//! must never panic, and every message must end up either valid or dead-lettered, once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trading_sync::apply::fold::{fold, plan};
use trading_sync::events::{ChannelKind, DecodeLimits};
use trading_sync::core::queue::Inbound;

fuzz_target!(|data: &[u8]| {
    let messages: Vec<Inbound> = data
        .split(|&b| b == 0xFF)
        .take(64)
        .enumerate()
        .map(|(i, raw)| Inbound::new(ChannelKind::ALL[i % 3], raw.to_vec()))
        .collect();
    let planned = plan(&messages, &DecodeLimits::default());
    let valid: u64 = planned.valid.iter().sum();
    assert_eq!(
        valid + planned.dead_letters.len() as u64,
        messages.len() as u64,
        "a message neither valid nor dead-lettered, or both"
    );
    // The per-row sums of what was accepted: bounded inputs, so no overflow panic.
    let _ = fold(&planned.trades);
});
