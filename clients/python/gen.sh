#!/usr/bin/env bash
# Regenerates tickwire_client/tickwire_pb2.py from proto/tickwire.proto.
# The generated file is checked in; its gencode version (7.35.1 for grpcio-tools
# 1.85.4) must be at most the protobuf runtime pinned in pyproject.toml
# (protobuf>=7.35.1,<8). Bump both together.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${GEN_VENV:-$here/.gen-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "grpcio-tools==1.85.4"
"$venv/bin/python" -m grpc_tools.protoc -I"$repo/proto" --python_out="$here/tickwire_client" "$repo/proto/tickwire.proto"
echo "wrote $here/tickwire_client/tickwire_pb2.py"
