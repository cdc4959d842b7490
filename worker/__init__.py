"""The worker runtime both roles share (engine loop, KV events, prefix fetch, token stream,
control) and the prefill and decode servicers."""
