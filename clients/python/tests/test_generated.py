"""The checked-in tickwire_pb2.py is what gen.sh makes from proto/tickwire.proto
and works with the installed protobuf runtime."""

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from tickwire_client import tickwire_pb2 as pb

REPO = Path(__file__).resolve().parents[3]


def test_runtime_accepts_the_generated_module():
    m = pb.ServerMessage(delta=pb.BookDelta(symbol="X", seq=2, prev_seq=1, channel="book.10"))
    assert pb.ServerMessage.FromString(m.SerializeToString()) == m
    assert [f.number for f in pb.Subscribed.DESCRIPTOR.fields] == [1, 2, 3, 4, 5]


def test_generated_module_matches_the_proto(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}", f"--descriptor_set_out={tmp_path / 'd.pb'}",
         str(REPO / "proto" / "tickwire.proto")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    fresh = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "d.pb").read_bytes()).file[0]
    for msg in fresh.message_type:  # the embedded descriptor leaves json_name out
        for f in msg.field:
            f.ClearField("json_name")
    held = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(held)
    assert held == fresh, "tickwire_pb2.py is stale: run clients/python/gen.sh"
