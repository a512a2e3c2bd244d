//! The unit's hardening, as `systemd-analyze security` rates it offline: at most 2.0 as
//! shipped, and with the remote-servers drop-in installed beside it.

use std::path::Path;
use std::process::Command;

use crate::common::unique_name;

/// The overall exposure `systemd-analyze security --offline` gives the unit installed under
/// `root`, or None with the reason printed when the tool is missing.
fn exposure(root: &Path) -> Option<f64> {
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg("trading-sync.service")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            eprintln!("skipped: no systemd-analyze ({e}); Debian's systemd package has it");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure in: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let level = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable exposure line: {line}"));
    Some(level)
}

#[test]
fn the_unit_stays_hardened_with_the_remote_servers_drop_in() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = std::env::temp_dir().join(unique_name("ts_systemd"));
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::copy(
        repo.join("systemd/trading-sync.service"),
        units.join("trading-sync.service"),
    )
    .unwrap();
    let Some(shipped) = exposure(&root) else {
        return;
    };
    let drop_in = units.join("trading-sync.service.d");
    std::fs::create_dir_all(&drop_in).unwrap();
    std::fs::copy(
        repo.join("systemd/remote-servers.conf"),
        drop_in.join("remote-servers.conf"),
    )
    .unwrap();
    let remote = exposure(&root).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(shipped <= 2.0, "the unit as shipped rates {shipped}");
    assert!(remote <= 2.0, "with the drop-in it rates {remote}");
    // The drop-in took effect: allowing non-local addresses is rated, a little.
    assert!(
        remote > shipped,
        "the drop-in changed nothing: {remote} vs {shipped}"
    );
}
