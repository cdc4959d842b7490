"""`baton demo`: the README's main job on the embedded default — writes the tiny checkpoint if
missing, starts router + 1 prefill + 1 decode worker (local processes, in-memory index), runs a
short multi-turn agent session and prints, per turn, TTFT, cached tokens and where it ran; then
one more turn of the same session through the OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import json
import logging
import time
import urllib.request
from pathlib import Path

DEFAULT_MODEL_DIR = Path("checkpoints") / "tiny-qwen3_next"
SYSTEM_PROMPT = (
    "You are Baton's demo agent. You plan, call tools, read their output and answer briefly. "
    "Tools: search(query), read_file(path), run_tests(). Always explain what you will do next. "
) * 6
TOOL_OUTPUTS = [
    "search results: engine/cache/radix.py (radix tree over full blocks), engine/cache/hashing.py",
    "read_file engine/cache/radix.py: nodes hold page ids and optional state checkpoints; LRU eviction",
    "run_tests: 412 passed, 0 failed in 301.2s",
    "read_file kvtransfer/base.py: descriptors, manifest, PENDING -> TRANSFERRING -> DONE | FAILED",
]
USER_TURNS = [
    "Find where the prefix cache keeps DeltaNet state checkpoints.",
    "Now read that file and summarize how eviction works.",
    "Run the tests and tell me if anything fails.",
    "Last: how does the transfer layer report failures?",
]


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run a multi-turn agent session on a local embedded Baton")
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint dir (written if missing)")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--transfer", default="tcp", choices=["tcp", "ucx", "local"])
    parser.add_argument("--local-prefill-threshold", type=int, default=128)
    parser.set_defaults(func=run)


def ensure_checkpoint(model_dir: Path) -> None:
    if (model_dir / "config.json").is_file():
        return
    from engine.make_model import make_model

    print(f"writing a tiny random-weight checkpoint to {model_dir} ...", flush=True)
    make_model(model_dir, preset="tiny", model_type="qwen3_next")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    from baton.client import BatonClient
    from router.config import RouterConfig
    from router.local_cluster import ClusterSpec, LocalCluster

    model_dir = Path(args.model)
    ensure_checkpoint(model_dir)
    started = time.perf_counter()
    router = RouterConfig(
        model=str(model_dir), listen="127.0.0.1:0", http_listen="127.0.0.1:0",
        local_prefill_threshold=args.local_prefill_threshold,
    )  # fmt: skip
    spec = ClusterSpec(str(model_dir), transfer=args.transfer, router=router)
    print("starting router + 1 prefill worker + 1 decode worker (local processes, in-memory index) ...", flush=True)
    with LocalCluster(spec) as cluster:
        print(f"serving on {cluster.address} after {time.perf_counter() - started:.1f} s\n", flush=True)
        client = BatonClient(cluster.address)
        rows, messages = run_session(client, args.turns, args.max_tokens)
        client.close()
        print_table(rows)
        http_turn(cluster.router.http_address, messages, args.max_tokens)
    print(f"\nshut down cleanly; total {time.perf_counter() - started:.1f} s")
    return 0


def run_session(client, turns: int, max_tokens: int) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    rows = []
    for turn in range(turns):
        messages.append({"role": "user", "content": USER_TURNS[turn % len(USER_TURNS)]})
        result = client.generate(session_id="demo-agent", chat=messages, temperature=0.0, max_tokens=max_tokens)
        rows.append(
            {
                "turn": turn + 1,
                "prompt": result.prompt_tokens,
                "cached": result.cached_tokens,
                "ttft_ms": 1e3 * result.ttft_s,
                "e2e_ms": 1e3 * result.e2e_s,
                "prefill": result.prefill_worker or "(decode worker, local)",
                "decode": result.decode_worker,
                "text": result.text,
            }
        )
        # the agent's turn calls a tool, and the tool's output answers that call
        call = {"id": f"call_{turn}", "type": "function", "function": {"name": "shell", "arguments": {"turn": turn}}}
        messages.append({"role": "assistant", "content": result.text, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": TOOL_OUTPUTS[turn % len(TOOL_OUTPUTS)]})
    return rows, messages


def http_turn(address: str, messages: list[dict], max_tokens: int) -> None:
    """The next turn of the same session over `POST /v1/chat/completions` (what any OpenAI client sends)."""
    messages = [*_with_json_arguments(messages), {"role": "user", "content": "Thanks. One line summary, please."}]
    body = {"model": "", "messages": messages, "max_tokens": max_tokens, "temperature": 0.0}
    request = urllib.request.Request(
        f"http://{address}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-session-id": "demo-agent"},
    )  # fmt: skip
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.load(response)
    usage = answer["usage"]
    print(f"\nOpenAI HTTP API (http://{address}/v1/chat/completions, session header x-session-id):")
    print(f"  prompt {usage['prompt_tokens']} tokens, cached {usage['prompt_tokens_details']['cached_tokens']}, "
          f"{usage['completion_tokens']} out, {1e3 * (time.perf_counter() - started):.1f} ms, "
          f"finish {answer['choices'][0]['finish_reason']}")  # fmt: skip


def _with_json_arguments(messages: list[dict]) -> list[dict]:
    """The OpenAI API carries a tool call's arguments as JSON text."""
    result = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            calls = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}} for c in calls]
            message = {**message, "tool_calls": calls}
        result.append(message)
    return result


def print_table(rows: list[dict]) -> None:
    header = f"{'turn':>4} {'prompt':>7} {'cached':>7} {'hit':>5} {'TTFT ms':>8} {'e2e ms':>8}  prefill on / decode on"
    print(header)
    print("-" * len(header))
    for row in rows:
        hit = row["cached"] / row["prompt"] if row["prompt"] else 0.0
        print(
            f"{row['turn']:>4} {row['prompt']:>7} {row['cached']:>7} {hit:>5.0%} {row['ttft_ms']:>8.1f} "
            f"{row['e2e_ms']:>8.1f}  {row['prefill']} / {row['decode']}"
        )
    print("\nlast answer (random weights, so it is noise):", repr(rows[-1]["text"][:120]))
