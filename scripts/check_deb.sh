#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks what it installs: the files and their
# modes (dpkg-deb -c), the conffiles and maintainer scripts (dpkg-deb -I / -e: nothing enabled,
# nothing started), the unit's binary path against the packaged binary, the unit's hardening
# offline (systemd-analyze security) and lintian when installed.
#
#   scripts/check_deb.sh              # cargo deb (a release build), then the checks
#   scripts/check_deb.sh path.deb     # the checks on a package already built
#
# Needs cargo-deb (`cargo install cargo-deb`) unless given a .deb; lintian and systemd-analyze
# are used when present (Debian: apt-get install lintian systemd). Exits 1 on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check_deb.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "check_deb.sh: ok: $*"; }

if [ $# -ge 1 ]; then
  deb=$1
else
  command -v cargo-deb >/dev/null || fail "cargo-deb is not installed (cargo install cargo-deb)"
  # cargo deb prints the path of the package it wrote as its last line.
  deb=$(cargo deb --locked | tail -n1)
fi
[ -f "$deb" ] || fail "no package at $deb"
echo "check_deb.sh: checking $deb"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. The files, with their modes (dpkg-deb -c lists "mode owner size date time path").
dpkg-deb -c "$deb" > "$work/contents"
expect() { # mode path
  grep -qE "^$1 [^ ]+ +[0-9]+ [0-9-]+ [0-9:]+ \./$2\$" "$work/contents" \
    || fail "$2 (mode $1) is not in the package:"$'\n'"$(cat "$work/contents")"
}
expect -rwxr-xr-x usr/bin/trading-sync
expect -rw-r--r-- usr/lib/systemd/system/trading-sync.service
expect -rw-r--r-- etc/trading-sync/config.toml
expect -rw-r--r-- etc/default/trading-sync
expect -rw-r--r-- usr/share/doc/trading-sync/README.md
expect -rw-r--r-- usr/share/doc/trading-sync/copyright
expect -rw-r--r-- usr/share/doc/trading-sync/changelog.Debian.gz
expect -rw-r--r-- usr/share/lintian/overrides/trading-sync
expect -rw-r--r-- usr/share/doc/trading-sync/examples/config.toml
expect -rw-r--r-- usr/share/doc/trading-sync/examples/remote-servers.conf
expect -rw-r--r-- usr/share/doc/trading-sync/examples/grafana/trading-sync.json
expect -rw-r--r-- usr/share/doc/trading-sync/examples/prometheus/alerts.yml
ok "dpkg-deb -c lists the binary, the unit, the two conffiles and the docs"

# 2. Control: the conffiles, and maintainer scripts that neither enable nor start the unit.
dpkg-deb -I "$deb"
dpkg-deb -e "$deb" "$work/control"
diff <(sort "$work/control/conffiles") <(printf '%s\n' /etc/default/trading-sync /etc/trading-sync/config.toml) \
  || fail "conffiles differ (above)"
ok "conffiles: /etc/default/trading-sync, /etc/trading-sync/config.toml"
postinst=$(cat "$work/control/postinst" 2>/dev/null) || fail "no postinst: the unit would never be registered"
# debhelper's --no-enable snippet: it re-enables only a unit that was installed and enabled
# before (an upgrade keeps the administrator's choice); the enable snippet enables on a fresh
# install ("was-enabled defaults to true").
grep -q 'deb-systemd-helper debian-installed trading-sync.service' <<<"$postinst" \
  || fail "postinst is not the no-enable one:"$'\n'"$postinst"
if grep -nE 'was-enabled defaults to true|_dh_action=start|deb-systemd-invoke (start|restart) |systemctl (enable|start)' \
    "$work"/control/{postinst,prerm,postrm}; then
  fail "a maintainer script enables or starts the unit (above)"
fi
grep -q 'deb-systemd-invoke try-restart trading-sync.service' <<<"$postinst" \
  || fail "an upgrade does not try-restart the unit"
grep -q 'deb-systemd-invoke stop trading-sync.service' "$work/control/prerm" \
  || fail "removing the package does not stop the unit"
ok "maintainer scripts: nothing enabled or started on install; an upgrade try-restarts, a removal stops"

# 3. The unit runs the binary the package installs, and the installed tree verifies.
root="$work/root"
dpkg-deb -x "$deb" "$root"
unit="$root/usr/lib/systemd/system/trading-sync.service"
for line in $(grep -E '^Exec(StartPre|Start)=' "$unit" | sed -E 's/^[^=]+=([^ ]+).*/\1/'); do
  [ -x "$root$line" ] || fail "the unit runs $line, which the package does not install"
done
ok "ExecStartPre/ExecStart run /usr/bin/trading-sync, which the package installs"
"$root/usr/bin/trading-sync" --config "$root/etc/trading-sync/config.toml" check-config >/dev/null \
  || fail "the packaged binary refuses the packaged config.toml"
ok "the packaged binary accepts the packaged config.toml (check-config)"
grep -qx 'TRADING_SYNC_CONFIG=/etc/trading-sync/config.toml' "$root/etc/default/trading-sync" \
  || fail "/etc/default/trading-sync does not set TRADING_SYNC_CONFIG"
ok "/etc/default/trading-sync sets TRADING_SYNC_CONFIG"

if command -v systemd-analyze >/dev/null; then
  exposure=$(systemd-analyze security --offline=true --no-pager --root="$root" trading-sync.service \
    | sed -nE 's/.*Overall exposure level for trading-sync.service: ([0-9.]+).*/\1/p')
  [ -n "$exposure" ] || fail "systemd-analyze security gave no rating"
  awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || fail "the unit rates $exposure (> 2.0)"
  ok "systemd-analyze security --offline: $exposure"
else
  echo "check_deb.sh: skipped: no systemd-analyze (Debian's systemd package has it)"
fi

# 4. lintian: no error; the warnings the package overrides (debian/trading-sync.lintian-overrides)
# are explained there and in the README, and any other is printed.
if command -v lintian >/dev/null; then
  lintian --tag-display-limit 0 "$deb" | tee "$work/lintian" || true
  if grep -q '^E:' "$work/lintian"; then
    fail "lintian reports errors"
  fi
  ok "lintian: $(grep -c '^[WIN]:' "$work/lintian" || true) warnings/notes, no errors"
else
  echo "check_deb.sh: skipped: lintian is not installed (apt-get install lintian)"
fi
echo "check_deb.sh: all checks passed for $deb"
