#!/usr/bin/env bash
# CI for the runnable React example (called by clients/ts/ci.sh after the SDK
# build, so ../../dist exists): install from the lockfile, type-check the page
# as Vite builds it, `vite build`, then check.mjs serves dist/ with
# `vite preview` (free port, proxy to a `tickwire demo` it starts on a free
# port; both killed by PID) and checks it in headless /usr/bin/chromium: a
# verified card with levels and no console error. Every wait is bounded.
#
# Needs TICKWIRE_BIN (else ${CARGO_TARGET_DIR:-<repo>/target}/release/tickwire).
set -euo pipefail
cd "$(dirname "$0")"

[ -f ../../dist/index.js ] || { echo "no ../../dist/index.js: run 'npm run build' in clients/ts first" >&2; exit 1; }

echo "== react example: npm ci"
npm ci --no-audit --no-fund

echo "== react example: type-check (tsc -p tsconfig.app.json)"
npm run --silent typecheck

echo "== react example: vite build"
npx vite build

echo "== react example: vite preview + tickwire demo + headless Chromium"
timeout 120 node check.mjs
