"""`python -m bench.gpu --device cpu` end to end on the tiny checkpoint (cheap sections only; the
full `--preset tiny` run takes minutes on a loaded 2-core machine): the child-process sections, the
JSON with the device name, the printed table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_gpu_runs_on_cpu_and_writes_its_json(tiny_model: str, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    command = [
        sys.executable, "-m", "bench.gpu", "--device", "cpu", "--preset", "tiny", "--model-dir", tiny_model,
        "--sections", "kernels,graphs", "--out", str(out), "--timeout-scale", "4",
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=580
    )

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device_name"] and report["device"] == "cpu"
    assert set(report["sections"]) == {"prepare", "kernels", "graphs"}
    kernel_names = " ".join(row["kernel"] for row in report["sections"]["kernels"]["rows"])
    for kernel in (
        "split-K",
        "fused MoE",
        "GDN decode",
        "causal conv1d",
        "paged extend",
        "GDN chunked prefill triton",
    ):
        assert kernel in kernel_names
    assert "graph memory" in proc.stdout
    assert (tmp_path / "gpu_logs" / "kernels.log").exists()


@pytest.mark.timeout(300)
def test_bench_gpu_fp8_section_runs_both_modes_on_cpu(tmp_path: Path) -> None:
    """The opt-in `fp8` section: block (under the interpreter here) and dequantize on an FP8 copy."""
    out = tmp_path / "gpu.json"
    command = [
        sys.executable, "-m", "bench.gpu", "--device", "cpu", "--preset", "tiny", "--model-dir",
        str(tmp_path / "tiny"), "--sections", "fp8", "--batches", "1,2", "--new-tokens", "3",
        "--out", str(out), "--timeout-scale", "2",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=280)

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    section = json.loads(out.read_text())["sections"]["fp8"]
    assert [row["batch"] for row in section["rows"]] == [1, 2]
    assert all(row["block_tok_s"] > 0 and row["dequantize_tok_s"] > 0 for row in section["rows"])
    weights = section["weight_bytes_per_step_batch1"]
    assert weights["block"] < weights["dequantize"]  # the kept FP8 linears read 1 byte per weight
    assert (tmp_path / "tiny-fp8" / "config.json").exists() and "block/deq" in proc.stdout
