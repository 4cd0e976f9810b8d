#!/usr/bin/env bash
# CI for the TypeScript SDK (clients/ts): install from the lockfile, check the
# generated protobuf code and the checked-in browser bundle against fresh
# builds, build, type-check the React example, run every test (unit, hostile
# fake server, real engine), then build the React example page with Vite and
# check it live in headless Chromium (examples/react/ci.sh).
#
# The engine tests spawn TICKWIRE_BIN, else ${CARGO_TARGET_DIR:-<repo>/target}/release/tickwire,
# built here with `cargo build --release` when missing.
set -euo pipefail
cd "$(dirname "$0")"
repo=$(cd ../.. && pwd)

node -e 'if (+process.versions.node.split(".")[0] < 20) { console.error("Node >= 20 needed, have " + process.version); process.exit(1) }'

npm ci --no-audit --no-fund

echo "== generated code (buf generate) is up to date"
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
npx buf generate -o "$gen"
diff -r "$gen/src/gen" src/gen || { echo "src/gen is out of date: run 'npm run generate' and commit it" >&2; exit 1; }

echo "== checked-in browser bundle is up to date"
npm run --silent check-bundle

echo "== build (tsc)"
npx tsc -p tsconfig.json

echo "== example type-checks (tsc --noEmit)"
npm run --silent typecheck:example

if [ -z "${TICKWIRE_BIN:-}" ]; then
  export TICKWIRE_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/tickwire"
  if [ ! -x "$TICKWIRE_BIN" ]; then
    echo "== building the engine ($TICKWIRE_BIN is missing)"
    (cd "$repo" && cargo build --release --bin tickwire)
  fi
fi

echo "== tests (node --test) against $TICKWIRE_BIN"
npm test

echo "== React example page (examples/react/ci.sh)"
examples/react/ci.sh
