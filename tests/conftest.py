"""Project-wide test setup.

Triton kernels run on the CPU through the interpreter; the variable must be set before triton is
imported anywhere, so it is set here, first.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
