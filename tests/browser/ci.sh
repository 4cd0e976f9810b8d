#!/bin/sh
# The dashboard's browser tests (tests/browser/*.test.js) against the release
# binary: $TICKWIRE_BIN, else <repo>/target/release/tickwire (build it first:
# cargo build --release). Uses the system Chromium (installed from apt when
# /usr/bin/chromium is absent; set CHROMIUM to use another), never a browser
# downloaded by a tool. Leaves a screenshot and the TAP report in
# tests/browser/artifacts/.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export TICKWIRE_BIN="${TICKWIRE_BIN:-$repo/target/release/tickwire}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$CHROMIUM" ]; then
    if [ "$CHROMIUM" != /usr/bin/chromium ]; then
        echo "ci.sh: no Chromium at $CHROMIUM" >&2; exit 1
    fi
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
fi
if [ ! -x "$TICKWIRE_BIN" ]; then
    echo "ci.sh: no tickwire binary at $TICKWIRE_BIN (cargo build --release, or set TICKWIRE_BIN)" >&2
    exit 1
fi

cd "$here"
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
mkdir -p artifacts
exec node --test --test-concurrency=1 --test-timeout=180000 \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination=artifacts/report.tap "$@"
