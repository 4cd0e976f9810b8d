#!/usr/bin/env bash
# CI for the Python client: a fresh venv, `pip install ./clients/python[test]`
# from PyPI, then pytest (unit tests, the fake-server tests, and the tests
# against the real engine, which need `cargo build --release` first or
# TICKWIRE_BIN pointing at a tickwire binary). Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${TICKWIRE_PY_VENV:-$(mktemp -d)/venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$here[test]"
export TICKWIRE_BIN="${TICKWIRE_BIN:-$repo/target/release/tickwire}"
# The installed package is the one under test: pytest runs from tests/ with
# the venv's own entry point, so the source tree is not on sys.path.
cd "$here/tests"
exec "$venv/bin/pytest" -q -p no:cacheprovider -c "$here/pyproject.toml" --rootdir "$here" "$here/tests" "$@"
