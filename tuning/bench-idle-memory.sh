#!/usr/bin/env bash
# Idle memory per subscribed connection, side by side (tuning/CAPACITY.md §9):
# two builds of the engine and the uWebSockets anchor, interleaved, each server
# on core 0 and its clients on core 1, CONNS connections (default 10,000).
#
#   tuning/bench-idle-memory.sh OLD_BIN NEW_BIN LOADGEN UWS_SERVER PROBE [RUNS]
#
# PROBE is ../shared/bench's wsprobe (sidebyside.sh builds it under
# /tmp/wsprobe-target/release/wsprobe). Per run it prints what each client
# reports (VmRSS growth from before the clients to the window start, per
# connection) and, read from /proc/PID/status meanwhile, the growth of the
# server's anonymous memory (heap and tables: what scales with connections)
# and of its file-backed memory (code pages touched once by the first
# handshakes and subscribes, the same for 100 or 1,000,000 connections).
#   tickwire via loadgen: `tickwire-loadgen fanout --rate 0` (a snapshot, no deltas)
#   tickwire via wsprobe: `tickwire-loadgen feed --rate 0` keeps the symbol known
#   uWS via wsprobe:      its server publishing nothing (rate 0)
set -euo pipefail
OLD=$1 NEW=$2 LG=$3 UWS=$4 PROBE=$5 RUNS=${6:-3} CONNS=${CONNS:-10000}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kib() { grep "^$2:" "/proc/$1/status" | awk '{print $2}'; }
# Samples RssAnon / RssFile of PID for SECONDS; prints the growth per connection.
growth() { # pid seconds anon0 file0
    local a1=0 f1=0 a f
    for _ in $(seq $(($2 * 2))); do
        sleep 0.5
        a=$(kib "$1" RssAnon) f=$(kib "$1" RssFile)
        [ "$a" -gt "$a1" ] && a1=$a
        [ "$f" -gt "$f1" ] && f1=$f
    done
    echo "anon $(((a1 - $3) * 1024 / CONNS)) B/conn, code $(((f1 - $4) * 1024 / CONNS)) B/conn"
}
serve() { # bin port ingest
    taskset -c 0 "$1" serve --workers 1 --no-pin --listen "127.0.0.1:$2" --ingest "127.0.0.1:$3" \
        --ingest-json "127.0.0.1:$(free_port)" >/dev/null 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$2/healthz" >/dev/null && break; sleep 0.1; done
}
tw_fanout() { # label bin
    local P I; P=$(free_port) I=$(free_port)
    serve "$2" "$P" "$I"
    local a0 f0; a0=$(kib $SERVER RssAnon) f0=$(kib $SERVER RssFile)
    taskset -c 1 "$LG" fanout --ws "127.0.0.1:$P" --ingest "127.0.0.1:$I" --clients "$CONNS" --rate 0 \
        --server-pid $SERVER --duration 4 >/tmp/idle-memory.log 2>&1 &
    local C=$! g; g=$(growth $SERVER 6 "$a0" "$f0")
    wait $C
    echo "$1 loadgen: $(grep 'server RSS  ' /tmp/idle-memory.log | sed 's/.*: //') | $g"
    kill $SERVER; wait $SERVER 2>/dev/null || true; sleep 1
}
tw_probe() { # label bin
    local P I; P=$(free_port) I=$(free_port)
    serve "$2" "$P" "$I"
    taskset -c 1 timeout 60 "$LG" feed --ingest "127.0.0.1:$I" --symbols 1 --rate 0 --trade-ratio 0 \
        --duration 30 --quiet >/dev/null 2>&1 &
    local F=$!; sleep 1
    local a0 f0; a0=$(kib $SERVER RssAnon) f0=$(kib $SERVER RssFile)
    taskset -c 1 timeout 100 "$PROBE" --url "ws://127.0.0.1:$P/ws" -c "$CONNS" -d 4 --warmup 2 --pid $SERVER \
        -t 1 --source-addrs 4 --ts-proto 2.4 \
        --subscribe '{"op":"subscribe","symbols":["BTC-USD"],"channels":["book"],"id":1}' >/tmp/idle-memory.log 2>&1 &
    local C=$! g; g=$(growth $SERVER 8 "$a0" "$f0")
    wait $C || true
    echo "$1 wsprobe: $(grep 'rss per connection' /tmp/idle-memory.log | sed 's/.*: //') | $g"
    kill $F $SERVER 2>/dev/null || true; wait $SERVER $F 2>/dev/null || true; sleep 1
}
uws_probe() {
    local P; P=$(free_port)
    taskset -c 0 "$UWS" "$P" 0 60 "$CONNS" >/dev/null 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do ss -ltnH "sport = :$P" | grep -q . && break; sleep 0.1; done
    local a0 f0; a0=$(kib $SERVER RssAnon) f0=$(kib $SERVER RssFile)
    taskset -c 1 timeout 100 "$PROBE" --url "ws://127.0.0.1:$P/" -c "$CONNS" -d 4 --warmup 2 --pid $SERVER \
        -t 1 --source-addrs 4 --ts-offset 0 >/tmp/idle-memory.log 2>&1 &
    local C=$! g; g=$(growth $SERVER 8 "$a0" "$f0")
    wait $C || true
    echo "uws wsprobe: $(grep 'rss per connection' /tmp/idle-memory.log | sed 's/.*: //') | $g"
    kill $SERVER; wait $SERVER 2>/dev/null || true; sleep 1
}
for _ in $(seq "$RUNS"); do
    tw_fanout old "$OLD"
    tw_fanout new "$NEW"
    uws_probe
    tw_probe new "$NEW"
    tw_probe old "$OLD"
done
