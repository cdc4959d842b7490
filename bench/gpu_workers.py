"""The workers part of the GPU check: router + prefill + decode on one GPU as processes.

    python -m bench.gpu_workers [--device cuda|cpu] [--model DIR] [--parts serve_path,transfer,serve]

Parts, each in its own subprocess with its own timeout (one hang cannot eat the run), logs in
--log-dir, numbers in --out (bench/results/gpu_workers.json):
- `serve_path`: router + 1 prefill + 1 decode worker (`--pool process`), both engines on the one
  device with their own `--gpu-memory-utilization`. A 3-turn greedy session, each turn resending the
  conversation: the tokens equal `engine.LLM` on the same device, and turns 2 and 3 report cached
  tokens (the prefix came back from the decode worker's cache or the index).
- `transfer`: `bench.transfer --device DEVICE`: staged tcp from GPU memory vs the host tcp path
  (target >= 0.80). The direct UCX CUDA path is not measured here (ucxx is not on the GPU machine).
- `serve`: `bench.serve --device DEVICE`: disaggregated / colocated TTFT at --serve-tokens
  (target <= 1.10 at 8K on the 12-layer slice).

`--wheels DIR`: pure-Python wheels to import from (`*.whl` put on sys.path and PYTHONPATH, which the
worker processes inherit): the GPU machine lacks grpcio-health-checking and grpcio-reflection;
bring wheels built for its protobuf (`pip download --no-deps grpcio-health-checking==V
grpcio-reflection==V -d DIR`, V = its grpcio version) and carry DIR.

CPU check: `python -m bench.gpu_workers --device cpu` (tiny checkpoint, small sizes). bench/gpu.py
runs it as its `workers` section (`workers_section`) on the checkpoint it prepared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "gpu_workers.json"
TIMEOUTS_S = {"serve_path": 240, "transfer": 150, "serve": 240}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model", default="", help="checkpoint dir (default: the tiny test checkpoint)")
    parser.add_argument("--parts", default="serve_path,transfer,serve")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.35, help="per worker")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--transfer-mib", type=int, default=0, help="default 1024 on cuda, 16 on cpu")
    parser.add_argument("--serve-tokens", type=int, default=0, help="default 8192 on cuda, 256 on cpu")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/baton-gpu-workers"))
    parser.add_argument("--wheels", type=Path, default=None, help="dir of pure-Python wheels to import from")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--part", default="", help=argparse.SUPPRESS)  # run one part in this process
    return parser.parse_args(argv)


def engine_flags(args: argparse.Namespace) -> tuple[str, ...]:
    if args.device == "cpu":
        return ()
    return ("--device", args.device, "--gpu-memory-utilization", str(args.gpu_memory_utilization))


def serve_path(args: argparse.Namespace) -> dict:
    """Multi-turn greedy through router + workers == engine.LLM; cached tokens from turn 2."""
    import random

    from baton.client import BatonClient
    from engine.llm import LLM
    from engine.model_config import ModelConfig
    from engine.sampling_params import SamplingParams
    from router.local_cluster import ClusterSpec, LocalCluster

    vocab = ModelConfig.from_json(Path(args.model)).vocab_size
    rng = random.Random(0)
    new_text = [[rng.randrange(vocab) for _ in range(96 + 32 * turn)] for turn in range(args.turns)]
    spec = ClusterSpec(
        args.model, transfer="tcp", pool="process", memory_gb=0.5, worker_args=engine_flags(args)
    )
    served, cached, prompts = [], [], []
    with LocalCluster(spec) as cluster:
        client = BatonClient(cluster.address)
        conversation: list[int] = []
        for turn in range(args.turns):
            prompt = conversation + new_text[turn]
            result = client.generate(session_id="gpu-check", token_ids=prompt, temperature=0.0, max_tokens=12)
            prompts.append(prompt)
            served.append(list(result.token_ids))
            cached.append(int(result.cached_tokens))
            conversation = prompt + served[-1]
        client.close()
    llm_options = {"device": args.device}
    if args.device != "cpu":
        llm_options["gpu_memory_utilization"] = args.gpu_memory_utilization
    llm = LLM(args.model, **llm_options)
    params = SamplingParams(temperature=0.0, max_tokens=12)
    reference = [llm.generate(prompt, params)[0].token_ids for prompt in prompts]
    return {
        "turns": args.turns,
        "served_equals_llm": served == reference,
        "cached_tokens": cached,
        "cached_from_turn_2": all(c > 0 for c in cached[1:]),
        "served": served,
        "reference": reference,
    }


def run_module(module: str, module_args: list[str], timeout_s: float, log: Path) -> tuple[int, str]:
    with log.open("w") as out:
        try:
            proc = subprocess.run([sys.executable, "-m", module, *module_args], stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout_s, check=False)  # fmt: skip
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, log.read_text()[-2000:]


def transfer(args: argparse.Namespace) -> dict:
    mib = args.transfer_mib or (1024 if args.device == "cuda" else 16)
    out = args.log_dir / "transfer.json"
    argv = ["--device", args.device, "--sizes-mib", str(mib), "--iters", "3", "--out", str(out)]
    code, tail = run_module(
        "bench.transfer", argv, TIMEOUTS_S["transfer"] - 10, args.log_dir / "transfer.inner.log"
    )
    if code != 0:
        return {"error": f"bench.transfer exit {code}", "log_tail": tail}
    report = json.loads(out.read_text())
    return {"size_mib": mib, "staged_over_host": report["staged_over_host"], "rows": report["rows"],
            "ucx_cuda_direct": "not measured (ucxx is not on the GPU machine)"}  # fmt: skip


def serve(args: argparse.Namespace) -> dict:
    tokens = args.serve_tokens or (8192 if args.device == "cuda" else 256)
    out = args.log_dir / "serve.json"
    argv = ["--model", args.model, "--device", args.device, "--prompt-tokens", str(tokens), "--repeats", "5",
            "--skip-router", "--http-requests", "0", "--out", str(out),
            "--gpu-memory-utilization", str(args.gpu_memory_utilization)]  # fmt: skip
    code, tail = run_module("bench.serve", argv, TIMEOUTS_S["serve"] - 10, args.log_dir / "serve.inner.log")
    if code != 0:
        return {"error": f"bench.serve exit {code}", "log_tail": tail}
    ttft = json.loads(out.read_text())["ttft"]
    return {"prompt_tokens": tokens, "ratio_p50": ttft["ratio_p50"],
            "disaggregated_p50_s": ttft["disaggregated"]["p50_s"], "colocated_p50_s": ttft["colocated"]["p50_s"]}  # fmt: skip


PARTS = {"serve_path": serve_path, "transfer": transfer, "serve": serve}


def run_part_in_subprocess(name: str, argv: list[str], args: argparse.Namespace) -> dict:
    result_file = args.log_dir / f"{name}.result.json"
    result_file.unlink(missing_ok=True)
    started = time.monotonic()
    code, tail = run_module(
        "bench.gpu_workers", [*argv, "--part", name], TIMEOUTS_S[name], args.log_dir / f"{name}.log"
    )
    if code != 0 or not result_file.is_file():
        return {"error": "timed out" if code == 124 else f"exit {code}", "log_tail": tail}
    return json.loads(result_file.read_text()) | {"seconds": round(time.monotonic() - started, 1)}


def print_summary(results: dict) -> None:
    path = results.get("serve_path", {})
    if "served_equals_llm" in path:
        print(f"serve path: greedy == engine.LLM: {path['served_equals_llm']}; cached tokens per turn "
              f"{path['cached_tokens']} (from turn 2: {path['cached_from_turn_2']})")  # fmt: skip
    for ratio in results.get("transfer", {}).get("staged_over_host", []):
        print(f"transfer {ratio['size_mib']} MiB: staged tcp / host tcp = {ratio['ratio']:.2f} "
              f"(checksums {'on' if ratio['checksums'] else 'off'}; target >= 0.80); ucx cuda: not measured")  # fmt: skip
    served = results.get("serve", {})
    if "ratio_p50" in served:
        print(f"serve TTFT at {served['prompt_tokens']} tokens: disaggregated / colocated = "
              f"{served['ratio_p50']:.3f} (target <= 1.10)")  # fmt: skip
    for name, result in results.items():
        if isinstance(result, dict) and "error" in result:
            print(f"{name}: {result['error']}\n{result['log_tail']}")


def use_wheels(folder: Path) -> None:
    """Wheels are zip archives Python imports from: put each on sys.path and on PYTHONPATH."""
    wheels = sorted(str(p.resolve()) for p in folder.glob("*.whl"))
    sys.path[:0] = wheels
    os.environ["PYTHONPATH"] = os.pathsep.join([*wheels, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.wheels:
        use_wheels(args.wheels)
    if not args.model:
        from tests.helpers.checkpoints import tiny_checkpoint  # the default only; a GPU run passes --model

        args.model = str(tiny_checkpoint())
        argv += ["--model", args.model]
    args.log_dir.mkdir(parents=True, exist_ok=True)
    if args.part:
        result = PARTS[args.part](args)
        (args.log_dir / f"{args.part}.result.json").write_text(json.dumps(result, indent=2))
        return 0
    os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
    results = {"device": args.device, "model": args.model}
    for name in args.parts.split(","):
        results[name] = run_part_in_subprocess(name, argv, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results)
    print(f"wrote {args.out}")
    return 0


def workers_section(args: argparse.Namespace) -> dict:
    """`bench.gpu`'s `workers` section: every part on bench.gpu's checkpoint and device."""
    log_dir = args.log_dir / "workers"
    out = log_dir / "gpu_workers.json"
    argv = ["--device", args.device, "--model", str(args.model_dir), "--log-dir", str(log_dir), "--out", str(out)]
    if args.wheels:
        argv += ["--wheels", str(args.wheels)]
    code, tail = run_module("bench.gpu_workers", argv, sum(TIMEOUTS_S.values()) + 30, log_dir.with_suffix(".log"))
    if code != 0 or not out.is_file():
        return {"error": f"bench.gpu_workers exit {code}", "log_tail": tail}
    return json.loads(out.read_text())


if __name__ == "__main__":
    raise SystemExit(main())
