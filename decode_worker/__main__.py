import sys

from decode_worker import run

sys.exit(run())
