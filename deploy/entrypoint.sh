#!/bin/sh
# Container entry point: the first argument names the role, the rest are its flags
# (docs/CONTRACTS.md "Processes"). `exec` keeps the server as tini's child so SIGTERM reaches it
# and starts the drain.
set -eu
role="${1:---help}"
case "$role" in
  router|prefill_worker|decode_worker)
    shift
    exec python -m "$role" "$@"
    ;;
  serve|size|scale)
    exec baton "$@"
    ;;
  --help|-h|help)
    echo "usage: <router|prefill_worker|decode_worker|serve|size|scale> [flags...]  or any command"
    exit 0
    ;;
  *)
    exec "$@"
    ;;
esac
