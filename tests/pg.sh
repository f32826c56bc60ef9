#!/usr/bin/env bash
# A throwaway PostgreSQL on loopback for the store's (and the gateway's) tests.
#
#   eval "$(tests/pg.sh start)"   # installs postgresql if missing, starts a cluster, exports
#                                 # SWITCHBOARD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/switchboard_test?sslmode=verify-full&sslrootcert=DIR/ca.pem
#   tests/pg.sh url               # prints the export line of the running cluster
#   tests/pg.sh stop              # stops it and deletes its directory
#
# Idempotent: `start` on a running cluster only prints the export line again. The cluster lives
# in $SWITCHBOARD_PG_DIR (default: $TMPDIR/switchboard-pg-$UID), listens on 127.0.0.1 only
# (first free port from $SWITCHBOARD_PG_PORT, default 55432) with its unix socket in that
# directory, and trusts local connections: it is for tests, never for data that matters.
# It runs with ssl = on and a server certificate (for 127.0.0.1 only) from a throwaway CA made
# here with the openssl CLI, so the suite's PostgreSQL tests run over verified TLS
# (sslmode=verify-full); plain connections are still accepted (the sslmode tests use both).
# Only the export line goes to stdout; progress goes to stderr.
set -euo pipefail

PG_DIR="${SWITCHBOARD_PG_DIR:-${TMPDIR:-/tmp}/switchboard-pg-$(id -u)}"
DATA_DIR="$PG_DIR/data"
FIRST_PORT="${SWITCHBOARD_PG_PORT:-55432}"
DATABASE="switchboard_test"

log() { echo "pg.sh: $*" >&2; }

find_bin_dir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

install_postgres() {
    log "installing postgresql"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y postgresql >&2; then
        log "package not found; running apt-get update first"
        "${sudo[@]}" apt-get update >&2
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y postgresql >&2
    fi
}

# Runs a PostgreSQL binary as the cluster's owner: postgres refuses to run as root.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

export_line() {
    echo "export SWITCHBOARD_TEST_POSTGRES_URL='postgres://postgres@127.0.0.1:$(cat "$PG_DIR/port")/$DATABASE?sslmode=verify-full&sslrootcert=$PG_DIR/ca.pem'"
}

is_running() {
    local bin_dir
    bin_dir=$(find_bin_dir) || return 1
    [[ -f "$PG_DIR/port" && -d "$DATA_DIR" ]] && as_owner "$bin_dir/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1
}

start() {
    local bin_dir port
    if is_running; then
        log "already running on port $(cat "$PG_DIR/port")"
        export_line
        return 0
    fi
    bin_dir=$(find_bin_dir) || { install_postgres; bin_dir=$(find_bin_dir); }

    # A directory left by a crashed run is discarded: the cluster is throwaway.
    rm -rf "$PG_DIR"
    mkdir -p "$PG_DIR"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres:postgres "$PG_DIR"
    fi

    port="$FIRST_PORT"
    while port_in_use "$port"; do
        port=$((port + 1))
        if ((port > FIRST_PORT + 100)); then
            log "no free port in $FIRST_PORT..$port"
            exit 1
        fi
    done

    log "initdb in $DATA_DIR"
    as_owner "$bin_dir/initdb" -D "$DATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null 2>"$PG_DIR/initdb.log" ||
        as_owner "$bin_dir/initdb" -D "$DATA_DIR" -U postgres --auth=trust -E UTF8 --no-locale >&2
    # fsync stays on: the crash tests rely on durable commits. Enough connections for a
    # test binary running its cases in parallel (each Store holds a small pool + a listener).
    cat <<EOF | as_owner tee -a "$DATA_DIR/postgresql.conf" >/dev/null
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$PG_DIR'
max_connections = 300
EOF
    echo "$port" >"$PG_DIR/port"
    make_certificates


    log "starting on 127.0.0.1:$port"
    as_owner "$bin_dir/pg_ctl" -D "$DATA_DIR" -l "$PG_DIR/server.log" -w -t 60 start >&2
    as_owner "$bin_dir/psql" -h "$PG_DIR" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
        -c "CREATE DATABASE $DATABASE" >&2
    export_line
}

# A throwaway CA (ca.pem) and a server certificate for 127.0.0.1 signed by it, copied into the
# data directory where ssl_cert_file/ssl_key_file find them.
make_certificates() {
    log "making a test CA and server certificate"
    (
        cd "$PG_DIR"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.pem -days 30 -subj "/CN=switchboard pg.sh test CA" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -extfile server.ext -out server.crt 2>/dev/null
        cp server.crt server.key "$DATA_DIR/"
        chmod 600 "$DATA_DIR/server.key"
        if [[ $(id -u) -eq 0 ]]; then
            chown postgres:postgres "$DATA_DIR/server.crt" "$DATA_DIR/server.key"
        fi
    )
    printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" |
        as_owner tee -a "$DATA_DIR/postgresql.conf" >/dev/null
}

stop() {
    local bin_dir
    if bin_dir=$(find_bin_dir) && [[ -d "$DATA_DIR" ]]; then
        as_owner "$bin_dir/pg_ctl" -D "$DATA_DIR" -m fast -w stop >&2 || true
    fi
    rm -rf "$PG_DIR"
    log "stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
url)
    if is_running; then export_line; else
        log "not running"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 start|stop|url   (eval \"\$($0 start)\")" >&2
    exit 64
    ;;
esac
