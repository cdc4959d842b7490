"""Timing and the two physical bounds (copy bandwidth, matmul rate) on the device being measured."""

from __future__ import annotations

import time

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    """Seconds of one call, the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def best_of(fn, device: str, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return min(timed(fn, device) for _ in range(repeats))


def measure_copy_bandwidth(device: str) -> float:
    """Bytes moved per second by a large tensor copy (read + write, STREAM convention)."""
    megabytes = 1024 if device == "cuda" else 256
    src = torch.ones(megabytes * (1 << 20) // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_of(lambda: dst.copy_(src), device, repeats=5)


def measure_matmul_flops(device: str, dtype: torch.dtype) -> float:
    size = 8192 if device == "cuda" else 1024
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    return 2 * size**3 / best_of(lambda: a @ b, device, repeats=3)
