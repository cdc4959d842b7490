"""The GPU benchmark: one prepared script, ~5 minutes on one H200, that also runs on the CPU.

`python -m bench.gpu [--device cuda|cpu] [--preset next80b-slice|tiny] ...` writes the checkpoint
(make-model's machinery, cached under --model-dir), then runs each section in its own subprocess
with its own timeout (one hang cannot eat the run; each section's log goes to --log-dir), prints the
results side by side and writes `bench/results/gpu.json` with the device name.

Sections (bench/gpu_sections.py, bench/gpu_kernels.py): `decode` (tok/s at batch 1/16/64 vs the
weights-read bandwidth bound and transformers, +fla when importable), `prefill` (a long prompt vs
the FLOP bound), `kernels` (each kernel vs its bound), `launches` (kernel launches per decode step:
torch.profiler on cuda, dispatched ops on cpu), `graphs` (graph memory; n/a until graphs exist),
`workers` (router + prefill + decode workers on the device: bench/gpu_workers.py).
Later parts (TP, trained model) add a function to `SECTIONS` and a row printer.

CPU check: `python -m bench.gpu --device cpu --preset tiny` (the kernels section then runs the
Triton kernels under TRITON_INTERPRET=1 at small sizes; their timings mean nothing there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.gpu_report import print_report
from bench.gpu_sections import SECTIONS, device_name

RESULTS = Path(__file__).parent / "results" / "gpu.json"
OPT_IN = ("workers", "fp8")  # sections run only when named
DEFAULT_TIMEOUTS_S = {
    "prepare": 240,
    "decode": 120,
    "transformers": 150,
    "prefill": 90,
    "kernels": 90,
    "launches": 60,
    "graphs": 20,
    "fp8": 300,  # writes the FP8 checkpoint, then two engines
    "workers": 700,  # its own parts carry their own timeouts (bench/gpu_workers.py)
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--preset", default="next80b-slice", choices=("next80b-slice", "tiny", "small"))
    parser.add_argument("--model-type", default="qwen3_next", choices=("qwen3_next", "qwen3_5_moe_text"))
    parser.add_argument("--model-dir", type=Path, default=None, help="default /tmp/baton-bench/<preset>")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefill-tokens", type=int, default=None, help="default 8192 on cuda, 256 on cpu")
    parser.add_argument(
        "--sections",
        default=",".join(s for s in SECTIONS if s not in OPT_IN),
        help="add `workers` (~10 min) or `fp8` (FP8 checkpoint, block vs dequantize) by name",
    )
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--wheels", type=Path, default=None, help="workers: dir of pure-Python wheels to import")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every section timeout")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--log-dir", type=Path, default=None, help="default: next to --out, gpu_logs/")
    parser.add_argument("--only-section", default=None, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--section-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model_dir is None:
        args.model_dir = Path("/tmp/baton-bench") / f"{args.preset}-{args.model_type}"
    if args.prefill_tokens is None:
        args.prefill_tokens = 8192 if args.device == "cuda" else 256
    if args.log_dir is None:
        args.log_dir = args.out.parent / "gpu_logs"
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    return args


def run_section(name: str, argv: list[str], args: argparse.Namespace) -> dict:
    """One section in a child process with its own timeout; a failure is recorded, not raised."""
    out_file = args.log_dir / f"{name}.json"
    log_file = args.log_dir / f"{name}.log"
    out_file.unlink(missing_ok=True)
    env = dict(os.environ)
    if args.device == "cpu" and name in ("kernels", "fp8"):
        env["TRITON_INTERPRET"] = "1"  # Triton kernels run on CPU tensors only through the interpreter
    timeout = DEFAULT_TIMEOUTS_S.get(name, 120) * args.timeout_scale
    command = [
        sys.executable,
        "-m",
        "bench.gpu",
        *argv,
        "--only-section",
        name,
        "--section-out",
        str(out_file),
    ]
    start = time.perf_counter()
    with log_file.open("w") as log:
        try:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout:.0f} s"
    result = json.loads(out_file.read_text()) if out_file.exists() else {}
    result["status"] = status if out_file.exists() or status != "ok" else "failed (no result)"
    result["wall_s"] = round(time.perf_counter() - start, 2)
    print(f"[bench.gpu] {name}: {result['status']} in {result['wall_s']} s (log {log_file})", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.only_section:
        result = SECTIONS[args.only_section](args)
        args.section_out.write_text(json.dumps(result, indent=2, default=str))
        return 0
    args.log_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "device": args.device,
        "device_name": device_name(args.device),
        "preset": args.preset,
        "model_type": args.model_type,
        "model_dir": str(args.model_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sections": {},
    }
    for name in ["prepare", *[s for s in args.sections.split(",") if s != "prepare"]]:
        report["sections"][name] = run_section(name, argv, args)
        if name == "prepare" and report["sections"][name]["status"] != "ok":
            break  # no checkpoint: nothing else can run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    print(f"[bench.gpu] wrote {args.out}")
    return 0 if all(s["status"] == "ok" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
