"""Generated protobuf/gRPC code for `proto/baton/v1` (see `regenerate.py`); import `baton_pb.v1`."""
