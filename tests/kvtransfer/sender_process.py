"""A sender in its own process, for the kill test: reads a descriptor (JSON line) on stdin, posts
the first layer, says "posted", then waits to be killed.  python -m tests.kvtransfer.sender_process
BACKEND SEED"""

from __future__ import annotations

import json
import sys
import time

from kvtransfer.base import TransferDescriptor
from kvtransfer.factory import create_backend
from tests.kvtransfer.helpers import make_regions


def main() -> None:
    backend_name, seed = sys.argv[1], int(sys.argv[2])
    backend = create_backend(backend_name)
    regions = make_regions(seed)
    backend.register(regions)
    print("ready", flush=True)
    descriptor = TransferDescriptor.from_dict(json.loads(sys.stdin.readline()))
    handle = backend.open_send(descriptor)
    handle.post("kv", 0, list(range(len(descriptor.dst_units["kv"]))))
    time.sleep(0.5)  # let the first layer leave before saying so
    print("posted", flush=True)
    time.sleep(120)


if __name__ == "__main__":
    main()
