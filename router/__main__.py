import sys

from rpc.logs import quiet_grpc_core

quiet_grpc_core()  # before gRPC loads, so its C core writes no plain-text lines (rpc/logs.py)
from router.server import main  # noqa: E402

sys.exit(main())
