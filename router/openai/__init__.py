"""The OpenAI-compatible HTTP face of the router (`--http-listen`): chat completions, completions,
models, health. Converts requests to the same `GenerateRequest` the gRPC face takes and calls the
same `RouterCore`; see `server.py` for the design choices."""
