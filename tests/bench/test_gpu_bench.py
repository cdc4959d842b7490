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
