"""Printing bench.gpu's report: one block per section, the numbers side by side with their bounds."""

from __future__ import annotations

from bench.gpu_fp8 import print_fp8
from bench.gpu_workers import print_summary as print_workers


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_report(report: dict) -> None:
    sections = report["sections"]
    print(f"\n== bench.gpu on {report['device_name']} ({report['device']}), preset {report['preset']} ==")
    for name, section in sections.items():
        if section.get("status") != "ok":
            print(f"\n[{name}] {section.get('status')}")
    decode, hf = sections.get("decode", {}), sections.get("transformers", {})
    if decode.get("rows"):
        hf_rows = {r["batch"]: r["tok_s"] for r in hf.get("rows", [])}
        label = "transformers+fla" if hf.get("fla") else "transformers"
        print(f"\n{'batch':>6} {'baton tok/s':>12} {'bound tok/s':>12} {'% bound':>8} {label + ' tok/s':>22}")
        for row in decode["rows"]:
            share = 100 * row["baton_tok_s"] / row["bandwidth_bound_tok_s"]
            print(
                f"{row['batch']:>6} {_fmt(row['baton_tok_s']):>12} {_fmt(row['bandwidth_bound_tok_s']):>12} "
                f"{share:>7.2f}% {_fmt(hf_rows.get(row['batch'])):>22}"
            )
    prefill = sections.get("prefill", {})
    if "seconds" in prefill:
        print(
            f"\nprefill {prefill['tokens']} tokens: {prefill['seconds']:.3f} s (FLOP bound "
            f"{prefill['flop_bound_s']:.4f} s); transformers {_fmt(hf.get('prefill_s'), 3)} s"
        )
    kernels = sections.get("kernels", {})
    if kernels.get("rows"):
        print(f"\n{'kernel':<44} {'time':>11} {'achieved':>14} {'% bound':>8}")
        for row in kernels["rows"]:
            achieved = (
                f"{row['achieved_B_s'] / 1e9:,.1f} GB/s" if "achieved_B_s" in row
                else f"{row['achieved_flop_s'] / 1e12:,.1f} TF/s" if "achieved_flop_s" in row else ""
            )  # fmt: skip
            share = f"{100 * row['fraction_of_bound']:.1f}%" if "fraction_of_bound" in row else ""
            print(f"{row['kernel']:<44} {row['seconds'] * 1e6:>8.0f} µs {achieved:>14} {share:>8}")
    launch_rows = sections.get("launches", {}).get("rows", [])
    for row in launch_rows:
        busy = f", GPU busy {row['gpu_busy_s'] * 1e3:.2f} ms" if "gpu_busy_s" in row else ""
        print(
            f"\ndecode step at batch {row['batch']}: {row['launches']} launches "
            f"({row['matmul_launches']} matmuls), {row['step_wall_s'] * 1e3:.2f} ms wall{busy}"
        )
    graphs = sections.get("graphs", {})
    if graphs:
        print(f"\ngraph memory: {_fmt(graphs.get('graph_memory_bytes'))} ({graphs.get('note', '')})")
        if graphs.get("graphs"):
            print(f"graphs captured: {graphs['graphs']}, replays per step: {graphs['replays_per_step']:.2f}")
    if sections.get("fp8", {}).get("rows"):
        print_fp8(sections["fp8"])
    workers = sections.get("workers", {})
    if workers.get("status") == "ok":
        print()
        print_workers(workers)
