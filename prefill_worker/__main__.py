import sys

from prefill_worker import run

sys.exit(run())
