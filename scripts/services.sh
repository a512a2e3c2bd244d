#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on 127.0.0.1 (ports 5432 and 6379), for running
# trading-sync and its tests locally. Starts them when they are down and installs them from
# Debian's packages when they are absent. Safe to run any number of times.
#
# A cluster this script installs is set to trust local TCP connections, because the tests
# connect as `postgres` without a password; never run it against a shared or production host.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

wait_for() { # name, check
  for _ in $(seq 1 100); do "$2" && return 0; sleep 0.2; done
  echo "services.sh: $1 did not come up" >&2; return 1
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    echo "services.sh: installing PostgreSQL"
    apt_install postgresql postgresql-client
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    hba=/etc/postgresql/$version/main/pg_hba.conf
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    as_root sed -i -E 's/^(local\s+all\s+postgres\s+)\S+/\1trust/' "$hba"
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  echo "services.sh: starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for PostgreSQL pg_up
fi

if ! redis_up; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "services.sh: installing Redis"
    apt_install redis-server
  fi
  echo "services.sh: starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/trading-sync-dev.log
  wait_for Redis redis_up
fi

echo "services.sh: PostgreSQL and Redis are up on 127.0.0.1"
