"""Transfer bandwidth: every kvtransfer backend vs a plain in-process copy and a plain TCP socket.

    python -m bench.transfer [--device cpu|cuda] [--sizes-mib 64,1024] [--iters 5]
                             [--out bench/results/transfer.json]

Page data is one "kv" region [32 layers, units, 64 KiB pages] (bf16); each layer's pages are posted
as one layer-sized chunk. tcp/ucx (and the plain socket) run sender and receiver in two spawned
processes; time runs from the sender's first post to the receiver's DONE (manifest verified).
With `--device cuda` the regions live in GPU memory: local copies device to device, tcp stages
through its pinned ring (kvtransfer/staging.py), ucx goes direct or stages; the host-memory tcp path
runs too, as the bound the staged path is held against (the table prints staged / host).
ucx rows are skipped when ucxx cannot load (it is not on the GPU machine).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import torch

LAYERS = 32
PAGE_SHAPE = (2, 16, 8, 128)  # 64 KiB of bf16: one page of one layer
PAGE_BYTES = 2 * 16 * 8 * 128 * 2


def make_region(total_bytes: int, fill: bool, device: str = "cpu") -> torch.Tensor:
    units = total_bytes // (LAYERS * PAGE_BYTES)
    region = torch.empty((LAYERS, units, *PAGE_SHAPE), dtype=torch.bfloat16)
    if fill:
        region.view(torch.uint8).random_(0, 256, generator=torch.Generator().manual_seed(0))
    else:
        region.zero_()
    return region.to(device)


RING_ON_HOST = "tcp+ring"  # tcp staging host regions through its ring, as if they were on a device


def make_backend(name: str) -> Any:
    from kvtransfer.factory import create_backend
    from kvtransfer.staging import StagingOptions, host_copy

    if name == RING_ON_HOST:
        return create_backend("tcp", stage_copy=host_copy, staging=StagingOptions(pin=False))
    return create_backend(name)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ucx_loads() -> bool:
    try:
        from kvtransfer.ucx import load_ucx

        load_ucx()
    except Exception:
        return False
    return True


def units_for(size: int) -> list[int]:
    return list(range(size // (LAYERS * PAGE_BYTES)))


def bench_memcpy(size: int, iters: int, device: str = "cpu") -> list[float]:
    src, dst = make_region(size, True, device), make_region(size, False, device)
    times = []
    for _ in range(iters + 1):
        synchronize(device)
        start = time.perf_counter()
        for layer in range(LAYERS):
            dst[layer].copy_(src[layer])
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def bench_local(size: int, iters: int, checksums: bool, device: str = "cpu") -> list[float]:
    from kvtransfer.factory import create_backend

    sender, receiver = (
        create_backend("local"),
        create_backend("local"),
    )
    sender.register({"kv": make_region(size, True, device)})
    receiver.register({"kv": make_region(size, False, device)})
    times = [_one_transfer(sender, receiver, f"l{i}", units_for(size), device) for i in range(iters + 1)]
    sender.close()
    receiver.close()
    return times[1:]


def _one_transfer(sender: Any, receiver: Any, tid: str, units: list[int], device: str) -> float:
    desc = receiver.expect(tid, {"kv": units}, 600.0)
    start = time.perf_counter()
    handle = sender.open_send(desc)
    for layer in range(LAYERS):
        handle.post("kv", layer, units)
    handle.finish(0)
    result = receiver.wait(tid, 600.0)
    synchronize(device)  # device-to-device copies are asynchronous
    assert result.status.value == "done", result.reason
    receiver.forget(tid)
    return time.perf_counter() - start


# ---- two-process runs -------------------------------------------------------------------------
def _receiver(
    backend: str, size: int, iters: int, checksums: bool, to_sender: Any, from_sender: Any, results: Any,
    device: str = "cpu",
) -> None:  # fmt: skip

    receiver = make_backend(backend)
    receiver.register({"kv": make_region(size, False, device)})
    times = []
    for i in range(iters + 1):
        desc = receiver.expect(f"x{i}", {"kv": units_for(size)}, 600.0)
        to_sender.put(desc.to_dict())
        result = receiver.wait(f"x{i}", 600.0)
        done = time.time()
        assert result.status.value == "done", result.reason
        times.append(done - from_sender.get())
        receiver.forget(f"x{i}")
    results.put(times[1:])
    receiver.close()


def _sender(
    backend: str,
    size: int,
    iters: int,
    checksums: bool,
    to_sender: Any,
    from_sender: Any,
    device: str = "cpu",
) -> None:
    from kvtransfer.base import TransferDescriptor

    sender = make_backend(backend)
    sender.register({"kv": make_region(size, True, device)})
    for _ in range(iters + 1):
        desc = TransferDescriptor.from_dict(to_sender.get())
        start = time.time()
        handle = sender.open_send(desc)
        for layer in range(LAYERS):
            handle.post("kv", layer, desc.dst_units["kv"])
        handle.finish(0)
        from_sender.put(start)
    time.sleep(0.5)
    sender.close()


def _socket_receiver(size: int, iters: int, port_q: Any, results: Any) -> None:
    dst = make_region(size, False)
    server = socket.create_server(("127.0.0.1", 0))
    port_q.put(server.getsockname()[1])
    conn, _ = server.accept()
    times = []
    for _ in range(iters + 1):
        start = time.perf_counter()
        for layer in range(LAYERS):
            view, got = memoryview(dst[layer].view(torch.uint8).numpy()).cast("B"), 0
            while got < len(view):
                got += conn.recv_into(view[got:])
        times.append(time.perf_counter() - start)
        conn.sendall(b"k")  # the sender starts the next round only now
    results.put(times[1:])


def _socket_sender(size: int, iters: int, port_q: Any) -> None:
    src = make_region(size, True)
    conn = socket.create_connection(("127.0.0.1", port_q.get()))
    for _ in range(iters + 1):
        for layer in range(LAYERS):
            conn.sendall(memoryview(src[layer].view(torch.uint8).numpy()).cast("B"))
        conn.recv(1)


def two_processes(
    receiver_target: Any, receiver_args: tuple, sender_target: Any, sender_args: tuple, results: Any
) -> list[float]:
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=receiver_target, args=receiver_args),
        ctx.Process(target=sender_target, args=sender_args),
    ]
    for p in procs:
        p.start()
    try:
        end = time.monotonic() + 600
        while time.monotonic() < end:
            try:
                return results.get(timeout=1.0)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError(
                        f"a bench process died: exit codes {[p.exitcode for p in procs]}"
                    ) from None
        raise TimeoutError("bench processes did not report within 600 s")
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def bench_remote(backend: str, size: int, iters: int, checksums: bool, device: str = "cpu") -> list[float]:
    ctx = mp.get_context("spawn")
    to_sender, from_sender, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    return two_processes(
        _receiver,
        (backend, size, iters, checksums, to_sender, from_sender, results, device),
        _sender,
        (backend, size, iters, checksums, to_sender, from_sender, device),
        results,
    )


def bench_socket(size: int, iters: int) -> list[float]:
    ctx = mp.get_context("spawn")
    port_q, results = ctx.Queue(), ctx.Queue()
    return two_processes(
        _socket_receiver, (size, iters, port_q, results), _socket_sender, (size, iters, port_q), results
    )


def cases_for(size: int, n: int, device: str, with_ucx: bool) -> list[tuple[str, bool, Any]]:
    on = "" if device == "cpu" else f" [{device}]"
    cases = [
        (f"memcpy (tensor.copy_){on}", False, lambda: bench_memcpy(size, n, device)),
        ("plain TCP sendall (2 procs)", False, lambda: bench_socket(size, n)),
    ]
    for checksums in (True,):  # checksums are mandatory since issue 16
        cases += [
            (f"local{on}", checksums, lambda c=checksums: bench_local(size, n, c, device)),
            (f"tcp (2 procs){on}", checksums, lambda c=checksums: bench_remote("tcp", size, n, c, device)),
        ]
        if device != "cpu":  # the host path the staged one is held against
            cases.append(("tcp (2 procs)", checksums, lambda c=checksums: bench_remote("tcp", size, n, c)))
        else:  # the ring's own cost on the CPU: host regions staged as if on a device
            cases.append(("tcp via ring, host stand-in (2 procs)", checksums,
                          lambda c=checksums: bench_remote(RING_ON_HOST, size, n, c)))  # fmt: skip
        if with_ucx:
            cases.append(
                (f"ucx (2 procs){on}", checksums, lambda c=checksums: bench_remote("ucx", size, n, c, device))
            )
    return cases


def run(sizes_mib: list[int], iters: int, device: str = "cpu") -> list[dict[str, Any]]:
    rows = []
    with_ucx = ucx_loads()
    if not with_ucx:
        print("ucx rows skipped: ucxx cannot load here", flush=True)
    for mib in sizes_mib:
        size, n = mib << 20, iters if mib <= 256 else max(2, iters // 2)
        for name, checksums, fn in cases_for(size, n, device, with_ucx):
            times = fn()
            row = {
                "path": name,
                "device": device if "[" in name else "cpu",
                "checksums": checksums,
                "size_mib": mib,
                "iters": len(times),
                "gbps_median": size / statistics.median(times) / 1e9,
                "gbps_best": size / min(times) / 1e9,
            }
            rows.append(row)
            print(
                f"{mib:>6} MiB  {name:<40} checksums={'on ' if checksums else 'off'}  "
                f"median {row['gbps_median']:6.2f} GB/s  best {row['gbps_best']:6.2f} GB/s",
                flush=True,
            )
    for ratio in staged_ratios(rows, device):
        print(
            f"{ratio['size_mib']:>6} MiB  staged tcp / host tcp (checksums={'on' if ratio['checksums'] else 'off'}): "
            f"{ratio['ratio']:.2f}  (target >= 0.80)",
            flush=True,
        )
    return rows


def staged_ratios(rows: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """Staged tcp bandwidth (from `device`, or the host stand-in on the CPU) over the host tcp
    path's, per size and checksum setting."""
    staged = f"tcp (2 procs) [{device}]" if device != "cpu" else "tcp via ring, host stand-in (2 procs)"
    by_key = {(r["path"], r["size_mib"], r["checksums"]): r["gbps_median"] for r in rows}
    out = []
    for (path, mib, checksums), gbps in by_key.items():
        if path == staged and ("tcp (2 procs)", mib, checksums) in by_key:
            host = by_key[("tcp (2 procs)", mib, checksums)]
            out.append({"size_mib": mib, "checksums": checksums, "ratio": gbps / host})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes-mib", default="64,1024")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", default="bench/results/transfer.json")
    parser.add_argument("--device", default="cpu", help="where the regions live: cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here")
    os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
    rows = run([int(s) for s in args.sizes_mib.split(",")], args.iters, args.device)
    report = {
        "device": args.device,
        "staged_over_host": staged_ratios(rows, args.device),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "ucx_tls": os.environ.get("UCX_TLS", "(UCX default)"),
        "layers": LAYERS,
        "page_bytes": PAGE_BYTES,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
