#!/usr/bin/env bash
# The freshness change's cost and isolation, measured side by side
# (tuning/CAPACITY.md §7). Interleaves runs of two builds of the engine with
# the same loadgen `fanout` client, engine on core 0, client on core 1.
#
#   tuning/bench-freshness.sh OLD_BIN NEW_BIN LOADGEN [RUNS] [OUT_DIR]
#
# Each run: CLIENTS clients on one symbol, the feed ramps to RATE deltas/s
# (msgs/s delivered = CLIENTS x RATE), optionally a fraction of the clients
# stalled (subscribe, then never read, 4 KiB receive buffer; latency measured
# on the others). Prints one line per run; the raw reports stay in OUT_DIR.
set -euo pipefail
OLD=$1 NEW=$2 LOADGEN=$3 RUNS=${4:-3} OUT=${5:-target/bench-freshness}
mkdir -p "$OUT"
# name clients rate stalled_fraction [extra engine flags]; CASES_ONLY=name,...
# picks some (e.g. CASES_ONLY=iso-0,iso-10).
ALL_CASES=(
    "1M 10000 100 0"
    "4M 10000 400 0"
    "iso-0 2000 500 0"
    "iso-10 2000 500 0.1"
    "iso-10-nolag 2000 500 0.1 --max-lag-ms=600000"
)
CASES=()
for c in "${ALL_CASES[@]}"; do
    name=${c%% *}
    if [ -z "${CASES_ONLY:-}" ] || [[ ",$CASES_ONLY," == *",$name,"* ]]; then CASES+=("$c"); fi
done
run_one() { # label bin clients rate stalled out [engine flags]
    local label=$1 bin=$2 clients=$3 rate=$4 stalled=$5 out=$6
    shift 6
    local log=$out.engine
    taskset -c 0 "$bin" serve --workers 1 --no-pin --ping-interval-ms 600000 \
        --listen 127.0.0.1:0 --ingest 127.0.0.1:0 --ingest-json 127.0.0.1:0 "$@" >"$log" 2>&1 &
    local pid=$!
    local ws="" ingest=""
    for _ in $(seq 1 100); do
        ws=$(sed -n 's/^listening on //p' "$log" | head -n1)
        ingest=$(sed -n 's/^ingest protobuf \([^ ]*\) .*/\1/p' "$log" | head -n1)
        [ -n "$ws" ] && [ -n "$ingest" ] && break
        sleep 0.1
    done
    timeout 120 taskset -c 1 "$LOADGEN" fanout --ws "$ws" --ingest "$ingest" \
        --clients "$clients" --rate "$rate" --ramp 3 --warmup 8 --duration 10 \
        --stalled-fraction "$stalled" --server-pid "$pid" >"$out.txt" 2>&1 || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local delivered p50 p99 cpu
    delivered=$(sed -n 's/^delivered msgs\/s *\([0-9]*\).*/\1/p' "$out.txt")
    p50=$(sed -n 's/^latency ms *p50 \([0-9.]*\).*/\1/p' "$out.txt")
    p99=$(sed -n 's/^latency ms.* p99 \([0-9.]*\) .*/\1/p' "$out.txt")
    cpu=$(sed -n 's/^server CPU *\([0-9]*\)%.*/\1/p' "$out.txt")
    echo "$label delivered=$delivered p50_ms=$p50 p99_ms=$p99 engine_cpu=$cpu%"
}
for r in $(seq 1 "$RUNS"); do
    for c in "${CASES[@]}"; do
        set -- $c
        name=$1 clients=$2 rate=$3 stalled=$4
        shift 4
        for build in old new; do
            bin=$OLD; [ $build = new ] && bin=$NEW
            run_one "run$r $name $build" "$bin" "$clients" "$rate" "$stalled" "$OUT/$name-$build-$r" "$@"
        done
    done
done
