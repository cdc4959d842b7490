"""`baton size`: per-session KV + DeltaNet-state memory and sessions per B200, from a model folder
or its config.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from baton import sizing

DEFAULT_CONTEXTS = "32768,131072,1048576"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "size", help="memory per session and sessions per B200 for a model folder or config.json"
    )
    parser.add_argument("model", nargs="?", default=None, help="model folder (or its config.json)")
    parser.add_argument("--config", default=None, help="same as MODEL: a config.json or a model folder")
    parser.add_argument(
        "--context",
        default=DEFAULT_CONTEXTS,
        help=f"comma-separated context lengths in tokens (default {DEFAULT_CONTEXTS})",
    )
    parser.add_argument("--dtype", default="bf16", help="model dtype of weights, KV and conv state")
    parser.add_argument("--weight-dtype", default=None, help="weights dtype if different (fp8, fp4)")
    parser.add_argument(
        "--ssm-dtype",
        default=None,
        help="recurrent-state dtype (default: the config's mamba_ssm_dtype, fp32)",
    )
    parser.add_argument("--block-size", type=int, default=16, help="KV page size in tokens")
    parser.add_argument(
        "--checkpoints", type=int, default=1, help="state checkpoints held per session (end of turn = 1)"
    )
    parser.add_argument(
        "--gpus", type=int, default=None, help="B200s one model replica spans (default tp/ep)"
    )
    parser.add_argument(
        "--tp", type=int, default=1, help="tensor-parallel ranks of one worker: per-GPU memory"
    )
    parser.add_argument(
        "--ep", type=int, default=1, help="expert-parallel ranks of one worker: per-GPU memory"
    )
    parser.add_argument("--hbm-gb", type=float, default=192.0, help="HBM per GPU in GB (1e9 bytes)")
    parser.add_argument(
        "--reserve-gb",
        type=float,
        default=16.0,
        help="per-GPU reserve for activations, CUDA graphs, comm buffers (GB)",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="fraction of one GPU each worker may use (the workers' flag; default 0.9)",
    )
    parser.add_argument(
        "--workers-per-gpu",
        type=int,
        default=1,
        help="worker processes sharing one GPU, e.g. 2 for a prefill and a decode worker (default 1)",
    )
    parser.set_defaults(func=run)


def parse_contexts(text: str) -> list[int]:
    try:
        contexts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise sizing.SizingConfigError(f"--context must be comma-separated integers, got {text!r}") from None
    if not contexts or any(c <= 0 for c in contexts):
        raise sizing.SizingConfigError(f"--context needs positive token counts, got {text!r}")
    return contexts


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def context_label(tokens: int) -> str:
    if tokens % (1 << 20) == 0:
        return f"{tokens >> 20}M"
    if tokens % 1024 == 0:
        return f"{tokens >> 10}K"
    return str(tokens)


def format_report(raw: dict, args: argparse.Namespace, name: str) -> str:
    shape = sizing.shape_from_config(raw)
    weight_dtype = args.weight_dtype or args.dtype
    params = sizing.param_counts(shape)
    weight_bytes = params.total_with_mtp * sizing.dtype_bytes(weight_dtype)
    ssm_dtype = args.ssm_dtype or shape.mamba_ssm_dtype_name
    model_bytes = sizing.dtype_bytes(args.dtype)
    ssm_bytes = sizing.dtype_bytes(ssm_dtype)
    slot = sizing.state_slot_bytes(shape, model_bytes, ssm_bytes)
    hbm, reserve = args.hbm_gb * 1e9, args.reserve_gb * 1e9
    free = args.gpus * (hbm - reserve) - weight_bytes
    b = 1e9
    lines = [
        f"model: {name} ({shape.model_type}): {len(shape.layer_types)} layers = "
        f"{shape.num_attention_layers} full attention + {shape.num_linear_layers} Gated DeltaNet; "
        f"MTP layers: {shape.mtp_num_hidden_layers}",
        f"weights ({weight_dtype}): {params.total / b:.2f} B params ({params.active / b:.2f} B active) "
        f"+ MTP {params.mtp / b:.2f} B = {human_bytes(weight_bytes)}  "
        f"[embeddings {params.embeddings / b:.2f} B, attention {params.attention / b:.2f} B, "
        f"linear attention {params.linear_attention / b:.2f} B, routed experts "
        f"{params.routed_experts / b:.2f} B, shared experts {params.shared_experts / b:.2f} B, "
        f"dense MLP {params.dense_mlp / b:.2f} B, norms+routers {params.norms_and_routers / b:.3f} B, "
        f"lm_head {params.lm_head / b:.2f} B]",
        f"KV per token ({args.dtype}): {human_bytes(sizing.kv_bytes_per_token(shape, model_bytes))} "
        f"= {shape.num_attention_layers} layers x 2 x {shape.num_key_value_heads} kv heads x "
        f"{shape.head_dim} head_dim; pages of {args.block_size} tokens",
        f"DeltaNet state per slot: {human_bytes(slot)} = {shape.num_linear_layers} layers x (conv "
        f"{human_bytes(sizing.conv_state_bytes_per_layer(shape, model_bytes))} {args.dtype} + "
        f"recurrent {human_bytes(sizing.recurrent_state_bytes_per_layer(shape, ssm_bytes))} "
        f"{ssm_dtype}); one checkpoint = one slot",
        f"HBM for sessions: {args.gpus} x B200 ({args.hbm_gb:g} GB) - weights "
        f"{human_bytes(weight_bytes)} - reserve {args.gpus} x {args.reserve_gb:g} GB = "
        f"{human_bytes(max(free, 0.0))}" + ("  (weights do not fit)" if free <= 0 else ""),
        worker_budget_line(args, weight_bytes),
        "",
        f"| context | KV | DeltaNet state | checkpoints ({args.checkpoints}) | per session "
        f"| sessions per {args.gpus} x B200 |",
        "|---|---|---|---|---|---|",
    ]
    for tokens in parse_contexts(args.context):
        mem = sizing.session_memory(
            shape,
            tokens,
            block_size=args.block_size,
            dtype=args.dtype,
            ssm_dtype=ssm_dtype,
            num_checkpoints=args.checkpoints,
        )
        fits = sizing.sessions_that_fit(
            mem.total_bytes,
            weight_bytes=weight_bytes,
            gpus=args.gpus,
            hbm_bytes_per_gpu=hbm,
            reserve_bytes_per_gpu=reserve,
        )
        lines.append(
            f"| {context_label(tokens)} | {human_bytes(mem.kv_bytes)} | "
            f"{human_bytes(mem.state_bytes)} | {human_bytes(mem.checkpoint_bytes)} | "
            f"{human_bytes(mem.total_bytes)} | {fits} |"
        )
    return "\n".join(lines)


def per_gpu_lines(raw: dict, args: argparse.Namespace) -> list[str]:
    """Per-GPU memory of one tp/ep worker (one rank per GPU) and sessions per worker."""
    shape = sizing.shape_from_config(raw)
    model_bytes = sizing.dtype_bytes(args.dtype)
    ssm_bytes = sizing.dtype_bytes(args.ssm_dtype or shape.mamba_ssm_dtype_name)
    gpu = sizing.per_gpu(
        shape,
        tp=args.tp,
        ep=args.ep,
        weight_dtype_bytes=sizing.dtype_bytes(args.weight_dtype or args.dtype),
        dtype_bytes_=model_bytes,
        ssm_dtype_bytes=ssm_bytes,
    )
    free = args.hbm_gb * 1e9 - args.reserve_gb * 1e9 - gpu.weight_bytes
    lines = [
        "",
        f"per GPU at tp={args.tp} ep={args.ep} ({max(args.tp, args.ep)} GPUs, one rank each): weights "
        f"{human_bytes(gpu.weight_bytes)}, KV per token {human_bytes(gpu.kv_bytes_per_token)}, "
        f"DeltaNet state per slot {human_bytes(gpu.state_slot_bytes)}, free for sessions "
        f"{human_bytes(max(free, 0.0))}" + ("  (weights do not fit)" if free <= 0 else ""),
        "",
        "| context | per session per GPU | sessions per worker |",
        "|---|---|---|",
    ]
    for tokens in parse_contexts(args.context):
        pages = -(-tokens // args.block_size) * args.block_size
        session = pages * gpu.kv_bytes_per_token + (1 + args.checkpoints) * gpu.state_slot_bytes
        fits = int(free // session) if free > 0 else 0
        lines.append(f"| {context_label(tokens)} | {human_bytes(session)} | {fits} |")
    return lines


def worker_budget_line(args: argparse.Namespace, weight_bytes: float) -> str:
    """What one single-GPU worker gets with --gpu-memory-utilization (a pod is one single-GPU
    worker until tensor parallelism lands, so the weights must fit one GPU)."""
    utilization = args.gpu_memory_utilization
    budget = utilization * args.hbm_gb * 1e9
    cache = budget - weight_bytes - args.reserve_gb * 1e9
    line = (
        f"GPU memory budget per worker (--device cuda --gpu-memory-utilization {utilization:g}, "
        f"{args.workers_per_gpu} worker(s) per GPU): {human_bytes(budget)} of one {args.hbm_gb:g} GB GPU; "
        f"after weights {human_bytes(weight_bytes)} and reserve {args.reserve_gb:g} GB: "
        f"{human_bytes(max(cache, 0.0))} for KV pages + state slots"
    )
    if cache <= 0:
        line += "  (does not fit one GPU: workers are single-GPU until tensor parallelism lands)"
    return line


def validate_args(args: argparse.Namespace) -> None:
    if args.gpus is None:
        args.gpus = max(args.tp, args.ep)
    if args.tp < 1 or args.ep < 1:
        raise sizing.SizingConfigError("--tp and --ep must be >= 1")
    if not 0 < args.gpu_memory_utilization <= 1 or args.workers_per_gpu < 1:
        raise sizing.SizingConfigError("--gpu-memory-utilization must be in (0, 1], --workers-per-gpu >= 1")
    if args.gpu_memory_utilization * args.workers_per_gpu > 1:
        raise sizing.SizingConfigError(
            f"{args.workers_per_gpu} workers x --gpu-memory-utilization {args.gpu_memory_utilization:g} "
            "exceed one GPU: give each worker at most 1/N"
        )
    if args.block_size < 1 or args.gpus < 1 or args.checkpoints < 0:
        raise sizing.SizingConfigError("--block-size and --gpus must be >= 1, --checkpoints >= 0")
    if args.hbm_gb <= 0 or args.reserve_gb < 0:
        raise sizing.SizingConfigError("--hbm-gb must be positive and --reserve-gb non-negative")


def config_path(args: argparse.Namespace) -> Path:
    given = args.model or args.config
    if not given:
        raise sizing.SizingConfigError("give a model folder (or --config PATH/config.json)")
    path = Path(given)
    return path / "config.json" if path.is_dir() else path


def run(args: argparse.Namespace) -> int:
    try:
        path = config_path(args)
    except sizing.SizingConfigError as error:
        print(f"baton size: {error}", file=sys.stderr)
        return 2
    try:
        validate_args(args)
        raw = json.loads(path.read_text())
        report = format_report(raw, args, path.parent.name if path.name == "config.json" else path.stem)
        if max(args.tp, args.ep) > 1:
            report += "\n" + "\n".join(per_gpu_lines(raw, args))
        print(report)
    except (OSError, json.JSONDecodeError) as error:
        print(f"baton size: cannot read {path}: {error}", file=sys.stderr)
        return 2
    except sizing.SizingConfigError as error:
        print(f"baton size: {error}", file=sys.stderr)
        return 2
    return 0
