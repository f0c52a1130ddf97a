"""Generated protobuf and gRPC stubs for KEDA's externalscaler.proto.

Nothing here is written by hand: `python scripts/generate_protos.py` rewrites
every module, and tests/test_proto_drift.py fails when they fall out of date.
"""
