import sys

from serving.launch import main

sys.exit(main("prefill"))
