#!/usr/bin/env bash
# Two builds of tickwire side by side with the uWS anchor (tuning/CAPACITY.md §9):
# ../shared/bench/sidebyside.sh run once per build per repetition, the builds'
# order alternating, so that old, new and uWS see the same machine.
#
#   tuning/bench-sidebyside-ab.sh OLD_TARGET_DIR NEW_TARGET_DIR UWS_SERVER "RATES" REPS [CONNS]
#
# A TARGET_DIR holds `tickwire` and `tickwire-loadgen` (a cargo release dir).
# Prints sidebyside.sh's RESULT lines prefixed with the build (old/new); the
# probe logs stay in $OUT/{old,new}-REP. sidebyside.sh starts the probe right
# after the feed: subscribes that reach the engine before the feed's first
# snapshot are answered unknown_symbol (the symbol does not exist yet) and
# those connections receive nothing. Such runs are flagged INCOMPLETE, to be
# discarded, never averaged in.
set -u
OLD=$1 NEW=$2 UWS=$3 RATES=$4 REPS=$5 CONNS=${6:-10000}
HERE=$(dirname "$(readlink -f "$0")")
OUT=${OUT:-/tmp/sidebyside-ab}
for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then ORDER="old new"; else ORDER="new old"; fi
  for build in $ORDER; do
    if [ "$build" = old ]; then TD=$OLD; else TD=$NEW; fi
    dir=$OUT/$build-$rep
    OUT=$dir bash "$HERE/../../shared/bench/sidebyside.sh" "$TD" "$UWS" "$RATES" 1 "$CONNS" |
      sed "s/^RESULT /RESULT $build /"
    for log in "$dir"/tw-*[0-9].log; do
      grep -q 'conns with 0: [1-9]' "$log" &&
        echo "INCOMPLETE $build $(basename "$log" .log): $(grep -o 'conns with 0: [0-9]*' "$log") (subscribed before the feed's first snapshot)"
    done
  done
done
exit 0
