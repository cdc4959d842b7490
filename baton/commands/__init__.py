"""One module per `baton` subcommand; see `baton/cli.py`."""
