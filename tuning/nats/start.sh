#!/usr/bin/env bash
# tuning/nats/start.sh: local nats-server processes for the README and the
# benchmarks, on free loopback ports, from tuning/nats/cluster.conf and
# leaf.conf as they are (addresses passed in their TW_NATS_* variables).
#
#   tuning/nats/start.sh single DIR    one server (cluster.conf, no routes)
#   tuning/nats/start.sh cluster DIR   3 routed servers + 1 leaf node
#   tuning/nats/start.sh stop DIR      stops exactly the PIDs started in DIR
#
# DIR gets one NAME.pid, NAME.log and NAME.env per server and `urls.env`
# (NATS_URLS, NATS_LEAF_URL, NATS_MONITOR_URLS) for scripts to source.
# Every wait is bounded (READY_WAIT seconds, default 10). A server that dies
# at startup (a picked port taken meanwhile) is retried on fresh ports, at
# most 3 times. NATS_SERVER overrides the binary.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
READY_WAIT=${READY_WAIT:-10}
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# free_ports N: N distinct ports free on 127.0.0.1 right now (all bound to 0
# at once, read back, closed).
free_ports() {
    if command -v python3 >/dev/null; then
        python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
    else
        # No python3: random ports in 20000-59999 that refuse a connection.
        local out=() p
        while [ ${#out[@]} -lt "$1" ]; do
            p=$((20000 + RANDOM % 40000))
            [[ " ${out[*]} " == *" $p "* ]] && continue
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then out+=("$p"); fi
        done
        echo "${out[*]}"
    fi
}

# http_get PORT PATH: the body of a plain HTTP/1.0 GET on 127.0.0.1 (2 s bound).
http_get() {
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
        cat <&3' _ "$1" "$2" 2>/dev/null | sed '1,/^\r\{0,1\}$/d'
}

# ours PID: is PID a live nats-server started by this script for $DIR?
ours() {
    local cmd
    cmd=$({ tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null) || return 1
    [[ $cmd == *nats-server* && $cmd == *"-l $DIR/"* ]]
}

# launch NAME CONF VAR=VALUE...: starts one server in the background with
# its log in DIR, records its PID and environment.
launch() {
    local name=$1 conf=$2
    shift 2
    printf '%s\n' "$@" >"$DIR/$name.env"
    : >"$DIR/$name.log"
    env "$@" nohup "$NATS_SERVER" -c "$conf" -l "$DIR/$name.log" \
        </dev/null >>"$DIR/$name.log" 2>&1 &
    echo $! >"$DIR/$name.pid"
}

# ready NAME MONITOR_PORT CHECK: waits until NAME's /healthz is ok, /varz
# names it, and CHECK (a shell condition) holds. Returns 1 if any server
# started in DIR died meanwhile (retry), exits if the wait runs out.
ready() {
    local name=$1 port=$2 check=${3:-true} f deadline
    deadline=$((SECONDS + READY_WAIT))
    while :; do
        for f in "$DIR"/*.pid; do
            if ! ours "$(cat "$f")"; then
                f=$(basename "$f" .pid)
                echo "$f exited during startup; log tail:" >&2
                tail -n 5 "$DIR/$f.log" >&2
                return 1
            fi
        done
        if [[ $(http_get "$port" /healthz) == *'"ok"'* ]] &&
            [[ $(http_get "$port" /varz) == *"\"server_name\": \"$name\""* ]] &&
            eval "$check"; then
            return 0
        fi
        if [ $SECONDS -ge "$deadline" ]; then
            echo "$name not ready within ${READY_WAIT}s (check: $check); log tail:" >&2
            tail -n 20 "$DIR/$name.log" >&2
            stop_all
            exit 1
        fi
        sleep 0.1
    done
}

# stop_all: SIGTERM to each recorded PID that is still ours, SIGKILL after
# 5 s, then removes the pid files. Logs stay.
stop_all() {
    local f pid left=() deadline
    shopt -s nullglob
    for f in "$DIR"/*.pid; do
        pid=$(cat "$f")
        if ours "$pid"; then
            kill -TERM "$pid" 2>/dev/null && left+=("$pid")
        fi
        rm -f "$f"
    done
    deadline=$((SECONDS + 5))
    for pid in "${left[@]}"; do
        while ours "$pid" && [ $SECONDS -lt "$deadline" ]; do sleep 0.1; done
        if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    [ ${#left[@]} -eq 0 ] || echo "stopped ${#left[@]} nats-server process(es): ${left[*]}"
}

start_single() {
    local p c m r l
    read -r c m r l <<<"$(free_ports 4)"
    launch tw-single "$HERE/cluster.conf" TW_NATS_NAME=tw-single \
        TW_NATS_LISTEN="127.0.0.1:$c" TW_NATS_HTTP="127.0.0.1:$m" \
        TW_NATS_CLUSTER_LISTEN="127.0.0.1:$r" TW_NATS_ROUTES="[]" \
        TW_NATS_LEAF_LISTEN="127.0.0.1:$l"
    ready tw-single "$m" || return 1
    NATS_URLS="nats://127.0.0.1:$c"
    NATS_LEAF_URL=""
    NATS_MONITOR_URLS="http://127.0.0.1:$m"
}

start_cluster() {
    local ports i j routes remotes=() urls=() mons=() lc lm
    read -r -a ports <<<"$(free_ports 14)"
    # ports: 4 per member (client, monitor, route, leaf), then the leaf's 2.
    for i in 0 1 2; do
        routes=()
        for j in 0 1 2; do
            [ "$j" = "$i" ] || routes+=("nats-route://127.0.0.1:${ports[j * 4 + 2]}")
        done
        remotes+=("nats-leaf://127.0.0.1:${ports[i * 4 + 3]}")
        urls+=("nats://127.0.0.1:${ports[i * 4]}")
        mons+=("http://127.0.0.1:${ports[i * 4 + 1]}")
        launch "tw-n$i" "$HERE/cluster.conf" TW_NATS_NAME="tw-n$i" \
            TW_NATS_LISTEN="127.0.0.1:${ports[i * 4]}" \
            TW_NATS_HTTP="127.0.0.1:${ports[i * 4 + 1]}" \
            TW_NATS_CLUSTER_LISTEN="127.0.0.1:${ports[i * 4 + 2]}" \
            TW_NATS_ROUTES="[$(IFS=,; echo "${routes[*]}")]" \
            TW_NATS_LEAF_LISTEN="127.0.0.1:${ports[i * 4 + 3]}"
    done
    for i in 0 1 2; do
        ready "tw-n$i" "${ports[i * 4 + 1]}" \
            "[[ \$(http_get ${ports[i * 4 + 1]} /routez) == *'\"num_routes\": 2,'* ]]" || return 1
    done
    lc=${ports[12]} lm=${ports[13]}
    launch tw-leaf "$HERE/leaf.conf" TW_NATS_NAME=tw-leaf \
        TW_NATS_LISTEN="127.0.0.1:$lc" TW_NATS_HTTP="127.0.0.1:$lm" \
        TW_NATS_LEAF_REMOTES="[$(IFS=,; echo "${remotes[*]}")]"
    ready tw-leaf "$lm" "[[ \$(http_get $lm /leafz) == *'\"leafnodes\": 1,'* ]]" || return 1
    NATS_URLS=$(IFS=,; echo "${urls[*]}")
    NATS_LEAF_URL="nats://127.0.0.1:$lc"
    NATS_MONITOR_URLS="$(IFS=,; echo "${mons[*]}"),http://127.0.0.1:$lm"
}

[ $# -eq 2 ] || usage
MODE=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)

case $MODE in
single | cluster)
    [ -x "$NATS_SERVER" ] || { echo "nats-server not found (apt-get install nats-server)" >&2; exit 1; }
    for f in "$DIR"/*.pid; do
        [ -e "$f" ] || continue
        if ours "$(cat "$f")"; then
            echo "$DIR already has running servers: tuning/nats/start.sh stop $DIR" >&2
            exit 1
        fi
        rm -f "$f"
    done
    for attempt in 1 2 3; do
        if "start_$MODE"; then break; fi
        stop_all >/dev/null
        [ "$attempt" -lt 3 ] || { echo "giving up after 3 attempts" >&2; exit 1; }
        echo "retrying on fresh ports (attempt $((attempt + 1))/3)" >&2
    done
    printf 'NATS_URLS=%s\nNATS_LEAF_URL=%s\nNATS_MONITOR_URLS=%s\n' \
        "$NATS_URLS" "$NATS_LEAF_URL" "$NATS_MONITOR_URLS" >"$DIR/urls.env"
    echo "client URLs:  $NATS_URLS"
    [ -z "$NATS_LEAF_URL" ] || echo "leaf URL:     $NATS_LEAF_URL"
    echo "monitoring:   $NATS_MONITOR_URLS"
    echo "logs, pids:   $DIR (urls.env to source)"
    echo "stop:         $0 stop $DIR"
    ;;
stop)
    stop_all
    ;;
*)
    usage
    ;;
esac
