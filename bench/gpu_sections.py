"""The sections of `python -m bench.gpu`: each takes the parsed args and returns a JSON-able dict.

Every section runs in its own process (bench/gpu.py), so each one loads what it needs.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import time
from functools import partial

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.decode import weight_traffic
from bench.gpu_fp8 import fp8_section
from bench.gpu_kernels import kernels_section
from bench.gpu_timing import measure_copy_bandwidth, measure_matmul_flops, sync, timed
from bench.gpu_workers import workers_section
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def prepare(args) -> dict:
    """Write the checkpoint once (cached in --model-dir) and say what it is."""
    from engine.make_model import make_model

    start = time.perf_counter()
    if not (args.model_dir / "config.json").exists():
        make_model(args.model_dir, preset=args.preset, model_type=args.model_type, progress=True)
    return {"model_dir": str(args.model_dir), "write_s": round(time.perf_counter() - start, 2)}


def make_engine(args, max_seqs: int, max_tokens: int, **options) -> LLMEngine:
    """`options`: further EngineConfig fields (the fp8 section's `fp8_compute`)."""
    pages = max_seqs * -(-(args.prompt_tokens + args.new_tokens + 16) // 16) + -(-max_tokens // 16) + 64
    config = EngineConfig(
        device=args.device,
        enable_prefix_cache=False,
        max_num_seqs=max_seqs,
        num_pages=pages,
        checkpoint_slots=max_seqs,
        max_num_batched_tokens=max(2048, max_tokens),
        prefill_chunk_size=max(512, max_tokens),
        **options,
    )
    return LLMEngine(args.model_dir, config)


def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    return [[(7 * i + 13 * j + 1) % vocab for j in range(length)] for i in range(batch)]


def baton_decode_tok_s(engine: LLMEngine, args, batch: int, new_tokens: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens + 1, ignore_eos=True)
    for i, prompt in enumerate(prompts(batch, args.prompt_tokens, engine.model_config.vocab_size)):
        engine.add_request(f"decode-{batch}-{i}-{time.monotonic_ns()}", prompt, params)
    produced = 0
    while produced < batch:  # prefill: every request gets its first token
        produced += sum(len(o.new_token_ids) for o in engine.step())
    sync(args.device)
    start, generated = time.perf_counter(), 0
    while engine.has_unfinished_requests():
        generated += sum(len(o.new_token_ids) for o in engine.step())
    sync(args.device)
    return generated / (time.perf_counter() - start)


def decode(args) -> dict:
    batches = [int(b) for b in args.batches.split(",")]
    engine = make_engine(args, max(batches), args.prompt_tokens * max(batches))
    weight_bytes, _ = weight_traffic(engine)
    bandwidth = measure_copy_bandwidth(args.device)
    baton_decode_tok_s(engine, args, 1, 4)  # warm up (kernel compilation, allocator)
    rows = []
    for batch in batches:
        tok_s = baton_decode_tok_s(engine, args, batch, args.new_tokens)
        rows.append(
            {"batch": batch, "baton_tok_s": tok_s, "bandwidth_bound_tok_s": bandwidth / weight_bytes * batch}
        )
    return {"weight_bytes_per_step_batch1": weight_bytes, "copy_bandwidth_B_s": bandwidth, "rows": rows}


def transformers_ref(args) -> dict:
    """transformers generate (with fla-core's kernels when importable) at the same batches, and a
    forward over the prefill prompt."""
    from transformers import AutoModelForCausalLM

    if args.skip_transformers:
        return {"skipped": True}
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype="auto").to(args.device).eval()
    vocab = model.config.get_text_config().vocab_size
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    rows = []
    with torch.inference_mode():
        for batch in [int(b) for b in args.batches.split(",")]:
            ids = torch.tensor(prompts(batch, args.prompt_tokens, vocab), device=args.device)
            model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kwargs)  # warm up
            first = timed(
                partial(model.generate, ids, max_new_tokens=1, min_new_tokens=1, **kwargs), args.device
            )
            n = args.new_tokens
            full = timed(
                partial(model.generate, ids, max_new_tokens=n + 1, min_new_tokens=n + 1, **kwargs),
                args.device,
            )
            rows.append({"batch": batch, "tok_s": batch * n / max(full - first, 1e-9)})
        ids = torch.tensor(prompts(1, args.prefill_tokens, vocab), device=args.device)
        prefill_s = timed(partial(model, ids), args.device)
    return {"fla": importlib.util.find_spec("fla") is not None, "rows": rows, "prefill_s": prefill_s}


def prefill(args) -> dict:
    """One prompt of --prefill-tokens in one chunk, against the FLOP bound (2 x active params per
    token + causal attention) at this device's measured matmul rate."""
    engine = make_engine(args, 2, args.prefill_tokens)
    cfg = engine.model_config
    vocab, n = cfg.vocab_size, args.prefill_tokens
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)

    def run(length: int, tag: str) -> float:
        engine.add_request(tag, prompts(1, length, vocab)[0], params)
        sync(args.device)
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step()
        sync(args.device)
        return time.perf_counter() - start

    run(min(n, 256), "warm")
    seconds = run(n, "timed")
    _, flops_per_token = weight_traffic(engine)
    attention = (
        2 * n * n * cfg.num_attention_heads * cfg.head_dim * cfg.num_attention_layers
    )  # QK^T + PV, causal
    flops = flops_per_token * n + attention
    matmul = measure_matmul_flops(args.device, cfg.dtype)
    return {
        "tokens": n,
        "seconds": seconds,
        "flops": flops,
        "matmul_flop_s": matmul,
        "flop_bound_s": flops / matmul,
    }


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def launches(args) -> dict:
    """Per decode step at batch 1 and the largest batch: CUDA kernel launches (torch.profiler) on
    cuda; dispatched aten ops on cpu (the same count a launch-per-op GPU run would see)."""
    batches = sorted({1, max(int(b) for b in args.batches.split(","))})
    engine = make_engine(args, batches[-1], args.prompt_tokens * batches[-1])
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    rows = []
    for batch in batches:
        for i, prompt in enumerate(prompts(batch, args.prompt_tokens, engine.model_config.vocab_size)):
            engine.add_request(f"launch-{batch}-{i}", prompt, params)
        for _ in range(3):  # prefill, then two decode steps to warm up
            engine.step()
        rows.append({"batch": batch, **count_step(engine, args.device)})
        while engine.has_unfinished_requests():
            engine.step()
    return {"rows": rows}


def count_step(engine: LLMEngine, device: str) -> dict:
    if device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            engine.step()
            sync(device)
            wall = time.perf_counter() - start
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        names = [e.name.lower() for e in kernels]
        matmuls = sum(any(k in n for k in ("gemm", "matmul", "cutlass", "grouped", "_moe")) for n in names)
        busy = sum(e.device_time for e in kernels) / 1e6
        return {"launches": len(kernels), "matmul_launches": matmuls, "step_wall_s": wall, "gpu_busy_s": busy}
    with OpCounter():
        engine.step()  # the first step under a dispatch mode pays a one-time setup (seconds)
    with OpCounter() as counter:
        start = time.perf_counter()
        engine.step()
        wall = time.perf_counter() - start
    matmul_ops = ("aten.matmul", "aten.mm", "aten.addmm", "aten.bmm", "aten._grouped_mm")
    mm = sum(op in matmul_ops for op in counter.ops)
    return {"launches": len(counter.ops), "matmul_launches": mm, "step_wall_s": wall, "counted": "aten ops"}


def graphs(args) -> dict:
    """The memory the decode graphs take (measured around capture) and replays per decode step."""
    if args.device != "cuda":
        return {"graph_memory_bytes": None, "note": "n/a: CUDA graphs are captured on cuda only"}
    engine = make_engine(args, max_seqs=64, max_tokens=args.prompt_tokens)
    baton_decode_tok_s(engine, args, batch=16, new_tokens=16)
    metrics = engine.metrics()
    steps = max(1, metrics.get("steps", 0))
    return {
        "graph_memory_bytes": metrics["cuda_graph_bytes"],
        "graphs": metrics["cuda_graphs"],
        "replays": metrics["cuda_graph_replays"],
        "replays_per_step": metrics["cuda_graph_replays"] / steps,
        "note": "replays count pure decode steps; prefill steps run eagerly",
    }


SECTIONS = {
    "prepare": prepare,
    "decode": decode,
    "transformers": transformers_ref,
    "prefill": prefill,
    "kernels": kernels_section,
    "launches": launches,
    "graphs": graphs,
    "fp8": fp8_section,  # opt-in: an FP8 copy of the checkpoint, block vs dequantize (bench/gpu_fp8.py)
    "workers": workers_section,  # router + prefill + decode workers on the device (bench/gpu_workers.py)
}
