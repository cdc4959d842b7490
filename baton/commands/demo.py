"""`baton demo`: the README's main job on the embedded default — takes the trained checkpoint the
repository ships (a small qwen3_next model trained on the Python stdlib, with its MTP head; see
`engine/training/shipped.py`), starts router + 1 prefill + 1 decode worker (local processes,
in-memory index, MTP speculation on the decode worker), runs a short multi-turn session that
writes a Python module turn by turn, and prints, per turn, TTFT, cached tokens and where it ran,
then the last answer and the session's MTP acceptance rate; then one more turn of the same session
through the OpenAI-compatible HTTP API (`POST /v1/completions`)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
import urllib.request
from pathlib import Path

SESSION_START = (
    '"""Small helpers for reading configuration files and caching results."""\n\n'
    "import os\nimport re\nimport json\n\n\n"
)
TURNS = [
    "def read_config(path):\n",
    "class Cache:\n    def __init__(self, size):\n",
    "def parse_header(line):\n",
    "def main(argv=None):\n",
]


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run a multi-turn agent session on a local embedded Baton")
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint dir (default: the shipped trained model; copied there if missing)",
    )
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--transfer", default="tcp", choices=["tcp", "ucx", "local"])
    parser.add_argument("--local-prefill-threshold", type=int, default=64)
    parser.add_argument("--spec-tokens", type=int, default=2, help="MTP drafts per decode step (0 = off)")
    parser.set_defaults(func=run)


def ensure_checkpoint(model_dir: Path | None) -> Path:
    """The trained checkpoint: the shipped one, copied to `model_dir` when that is given and missing."""
    from engine.training.shipped import shipped_or_cached  # lazy: CLI startup

    if model_dir is not None and (model_dir / "config.json").is_file():
        return model_dir
    source = shipped_or_cached()
    if model_dir is None:
        return source
    print(f"copying the trained checkpoint {source} to {model_dir} ...", flush=True)
    shutil.copytree(source, model_dir, dirs_exist_ok=True)
    return model_dir


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    from baton.client import BatonClient  # lazy: CLI startup
    from router.config import RouterConfig  # lazy: CLI startup
    from router.local_cluster import ClusterSpec, LocalCluster  # lazy: CLI startup

    model_dir = ensure_checkpoint(Path(args.model) if args.model else None)
    started = time.perf_counter()
    router = RouterConfig(
        model=str(model_dir), listen="127.0.0.1:0", http_listen="127.0.0.1:0",
        local_prefill_threshold=args.local_prefill_threshold,
    )  # fmt: skip
    worker_args = ("--spec-tokens", str(args.spec_tokens))
    spec = ClusterSpec(str(model_dir), transfer=args.transfer, router=router, worker_args=worker_args)
    print(
        "starting router + 1 prefill worker + 1 decode worker (local processes, in-memory index) ...",
        flush=True,
    )
    with LocalCluster(spec) as cluster:
        print(f"serving on {cluster.address} after {time.perf_counter() - started:.1f} s\n", flush=True)
        client = BatonClient(cluster.address)
        rows, token_ids = run_session(client, model_dir, args.turns, args.max_tokens)
        client.close()
        print_table(rows)
        print_acceptance(cluster.router.core.list_workers().workers)
        http_turn(cluster.router.http_address, token_ids, args.max_tokens)
    print(f"\nshut down cleanly; total {time.perf_counter() - started:.1f} s")
    return 0


def run_session(client, model_dir: Path, turns: int, max_tokens: int) -> tuple[list[dict], list[int]]:
    """Each turn resends the module so far (as token ids: the earlier prompt and answer exactly,
    as an agent that keeps its context does) plus a new function header; the model writes on."""
    from tokenizers import Tokenizer  # lazy: CLI startup

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    token_ids = tokenizer.encode(SESSION_START).ids
    rows = []
    for turn in range(turns):
        header = TURNS[turn % len(TURNS)]
        token_ids = token_ids + tokenizer.encode(("\n\n" if turn else "") + header).ids
        result = client.generate(
            session_id="demo-agent", token_ids=token_ids, temperature=0.0, max_tokens=max_tokens
        )
        rows.append(
            {
                "turn": turn + 1,
                "prompt": result.prompt_tokens,
                "cached": result.cached_tokens,
                "ttft_ms": 1e3 * result.ttft_s,
                "e2e_ms": 1e3 * result.e2e_s,
                "prefill": result.prefill_worker or "(decode worker, local)",
                "decode": result.decode_worker,
                "header": header,
                "text": result.text,
            }
        )
        token_ids = token_ids + list(result.token_ids)
    return rows, token_ids


def http_turn(address: str, token_ids: list[int], max_tokens: int) -> None:
    """The next turn of the same session over `POST /v1/completions` (what any OpenAI client sends)."""
    body = {"model": "", "prompt": token_ids, "max_tokens": max_tokens, "temperature": 0.0}
    request = urllib.request.Request(
        f"http://{address}/v1/completions", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-session-id": "demo-agent"},
    )  # fmt: skip
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.load(response)
    usage = answer["usage"]
    print(f"\nOpenAI HTTP API (http://{address}/v1/completions, session header x-session-id):")
    print(f"  prompt {usage['prompt_tokens']} tokens, cached {usage['prompt_tokens_details']['cached_tokens']}, "
          f"{usage['completion_tokens']} out, {1e3 * (time.perf_counter() - started):.1f} ms, "
          f"finish {answer['choices'][0]['finish_reason']}")  # fmt: skip


def print_acceptance(workers) -> None:
    drafted = sum(w.load.spec_drafted for w in workers if w.role == "decode")
    accepted = sum(w.load.spec_accepted for w in workers if w.role == "decode")
    if drafted:
        print(
            f"MTP speculation this session: {accepted}/{drafted} drafts accepted ({accepted / drafted:.0%})"
        )
    else:
        print("MTP speculation this session: no drafts (off, or the checkpoint has no MTP head)")


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
    print(
        f"\nlast answer (a small model trained on the Python stdlib, greedy):\n{rows[-1]['header']}{rows[-1]['text']}"
    )
