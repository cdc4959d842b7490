import sys

from rpc.logs import quiet_grpc_core

quiet_grpc_core()  # before gRPC loads, so its C core writes no plain-text lines (rpc/logs.py)
from decode_worker import run  # noqa: E402

sys.exit(run())
