#!/bin/bash
# bench_sync with plain connections and with TLS to both servers, alternating, in one sitting:
# the cost of encryption (README, "Redis over TLS").
#
#   cargo build --release --bins --examples && scripts/bench_tls.sh [ROUNDS]
#
# Plain: a private Redis on 6391 and sslmode=disable. TLS: a private Redis on TLS port 6392 only,
# requiring a client certificate (a CA and certificates made here with openssl), and
# sslmode=require against the local PostgreSQL (Debian's cluster has ssl = on). Both Redis
# servers have the pub/sub output limit off, as in the README's other bench_sync figures.
set -eu

rounds=${1:-2}
bench=target/release/examples/bench_sync
[ -x "$bench" ] || { echo "$bench missing: cargo build --release --bins --examples" >&2; exit 1; }
database=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
case $database in *\?*) sep='&' ;; *) sep='?' ;; esac

dir=$(mktemp -d)
pids=""
cleanup() {
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout ca.key -out ca.crt \
    -subj "/CN=trading-sync bench ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
issue() { # name subject extensions
    printf '%b' "$3" > "$1.ext"
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
}
issue server /CN=localhost "subjectAltName = DNS:localhost\nextendedKeyUsage = serverAuth\n"
issue client /CN=bench "extendedKeyUsage = clientAuth\n"
cd - >/dev/null

plain_port=${BENCH_PLAIN_REDIS_PORT:-6391}
tls_port=${BENCH_TLS_REDIS_PORT:-6392}
for port in "$plain_port" "$tls_port"; do
    if redis-cli -p "$port" ping >/dev/null 2>&1 || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is taken: the bench needs its own Redis there (BENCH_*_REDIS_PORT)" >&2
        exit 1
    fi
done
redis-server --port "$plain_port" --bind 127.0.0.1 --save '' --appendonly no \
    --client-output-buffer-limit "pubsub 0 0 0" >/dev/null &
pids="$pids $!"
redis-server --port 0 --tls-port "$tls_port" --tls-cert-file "$dir/server.crt" \
    --tls-key-file "$dir/server.key" --tls-ca-cert-file "$dir/ca.crt" --tls-auth-clients yes \
    --bind 127.0.0.1 --save '' --appendonly no \
    --client-output-buffer-limit "pubsub 0 0 0" >/dev/null &
pids="$pids $!"
tls_cli="--tls --cacert $dir/ca.crt --cert $dir/client.crt --key $dir/client.key"
tries=0
# shellcheck disable=SC2086 # tls_cli is a list of options
until redis-cli -p "$plain_port" ping >/dev/null 2>&1 &&
    redis-cli -h localhost -p "$tls_port" $tls_cli ping >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -le 100 ] || { echo "the bench's Redis servers did not start" >&2; exit 1; }
    sleep 0.1
done

round=1
while [ "$round" -le "$rounds" ]; do
    echo "=== round $round: plain (redis://, sslmode=disable)"
    BENCH_REDIS_URL="redis://127.0.0.1:$plain_port/0" \
        BENCH_DATABASE_URL="${database}${sep}sslmode=disable" "$bench"
    echo "=== round $round: TLS (rediss:// with a client certificate, sslmode=require)"
    BENCH_REDIS_URL="rediss://localhost:$tls_port/0" BENCH_REDIS_TLS_CA_FILE="$dir/ca.crt" \
        BENCH_REDIS_TLS_CERT_FILE="$dir/client.crt" BENCH_REDIS_TLS_KEY_FILE="$dir/client.key" \
        BENCH_DATABASE_URL="${database}${sep}sslmode=require" "$bench"
    round=$((round + 1))
done
