"""`baton size` arithmetic against a tiny config computed by hand, and the CLI on the real configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from baton import sizing
from baton.cli import main

pytestmark = pytest.mark.timeout(30)

CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "configs"

# hidden 8; 4 layers with a full-attention layer every 2nd (layers 1, 3 full; 0, 2 linear).
TINY = {
    "model_type": "qwen3_next",
    "vocab_size": 10,
    "hidden_size": 8,
    "num_hidden_layers": 4,
    "full_attention_interval": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 4,
    "linear_num_key_heads": 1,
    "linear_num_value_heads": 2,
    "linear_key_head_dim": 2,
    "linear_value_head_dim": 3,
    "linear_conv_kernel_dim": 3,
    "num_experts": 2,
    "moe_intermediate_size": 4,
    "shared_expert_intermediate_size": 6,
    "tie_word_embeddings": False,
}


def test_tiny_per_session_memory_matches_hand_computation():
    shape = sizing.shape_from_config(TINY)
    assert shape.layer_types == ("linear_attention", "full_attention") * 2
    # KV: 2 full layers x 2 (k, v) x 1 kv head x 4 head_dim x 2 bytes = 32 bytes per token;
    # 17 tokens occupy two 16-token pages = 32 tokens -> 1024 bytes.
    mem = sizing.session_memory(shape, 17, block_size=16, dtype="bf16", num_checkpoints=3)
    assert mem.kv_bytes == 1024
    # conv_dim = 2 x (1 x 2) + 2 x 3 = 10; conv = 10 x (3 - 1) x 2 bytes = 40;
    # recurrent = 2 v heads x 2 x 3 x 4 bytes (fp32 default) = 48; 2 linear layers -> 176.
    assert mem.state_bytes == 176
    assert mem.checkpoint_bytes == 3 * 176
    assert mem.total_bytes == 1024 + 4 * 176
    # exactly one page when the tokens fill it
    assert sizing.session_memory(shape, 16, block_size=16, dtype="bf16").kv_bytes == 512


def test_tiny_param_count_matches_hand_computation():
    counts = sizing.param_counts(sizing.shape_from_config(TINY))
    assert counts.embeddings == 80 and counts.lm_head == 80
    # q+gate 128, k+v 64, o 64, q/k norms 8 -> 264 per full layer
    assert counts.attention == 2 * 264
    # qkvz 128, b/a 32, conv 30, dt_bias+A_log 4, gated norm 3, out 48 -> 245 per linear layer
    assert counts.linear_attention == 2 * 245
    assert counts.routed_experts == 4 * 192 and counts.shared_experts == 4 * 144
    # routers 16 + shared gate 8 per layer, 2 norms of 8 per layer, final norm 8
    assert counts.norms_and_routers == 4 * 24 + 4 * 16 + 8
    assert counts.total == 2690


def test_tied_embeddings_and_ssm_dtype_override():
    shape = sizing.shape_from_config({**TINY, "tie_word_embeddings": True, "mamba_ssm_dtype": "bfloat16"})
    assert sizing.param_counts(shape).lm_head == 0
    assert sizing.session_memory(shape, 0, block_size=16, dtype="bf16").state_bytes == 2 * (40 + 24)


def test_sessions_that_fit():
    assert (
        sizing.sessions_that_fit(
            10.0, weight_bytes=50, gpus=2, hbm_bytes_per_gpu=100, reserve_bytes_per_gpu=10
        )
        == 13
    )
    assert sizing.sessions_that_fit(10.0, weight_bytes=500, hbm_bytes_per_gpu=100) == 0


@pytest.mark.parametrize(
    "bad", [{"num_hidden_layers": None}, {"layer_types": ["full_attention"]}, {"linear_conv_kernel_dim": -1}]
)
def test_bad_config_raises_clear_error(bad):
    with pytest.raises(sizing.SizingConfigError):
        sizing.shape_from_config({**TINY, **bad})


def test_real_configs_match_published_parameter_counts():
    # Model cards: Qwen3-Next-80B-A3B has 80B parameters, 3B activated; Qwen3.5-397B-A17B 397B
    # (text + a ~0.4B vision tower), 17B activated. MTP heads are counted apart (not in total).
    next80 = sizing.param_counts(
        sizing.shape_from_config(json.loads((CONFIGS / "qwen3-next-80b-a3b.json").read_text()))
    )
    print(f"80B: total {next80.total / 1e9:.2f} B, active {next80.active / 1e9:.2f} B, mtp {next80.mtp / 1e9:.2f} B")
    assert abs(next80.total - 80e9) < 0.02 * 80e9
    assert next80.mtp > 1e9 and next80.total_with_mtp == next80.total + next80.mtp
    # "3B activated" is a rounded figure; without the 0.62B of embeddings + lm_head it is 3.25B.
    assert 3.0e9 < next80.active - next80.embeddings - next80.lm_head < 3.4e9
    q35 = sizing.param_counts(
        sizing.shape_from_config(json.loads((CONFIGS / "qwen3.5-397b-a17b.json").read_text()))
    )
    print(f"397B: total {q35.total / 1e9:.2f} B, active {q35.active / 1e9:.2f} B, mtp {q35.mtp / 1e9:.2f} B")
    assert abs(q35.total + 0.4e9 - 397e9) < 0.02 * 397e9
    assert abs(q35.active - 17e9) < 0.03 * 17e9
    assert q35.mtp > 1e9


def test_sizing_is_torch_free():
    code = "import sys, baton.sizing, baton.commands.size; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["qwen3-next-80b-a3b.json", "qwen3.5-397b-a17b.json"])
def test_cli_prints_table_for_real_configs(name, capsys):
    assert main(["size", "--config", str(CONFIGS / name)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "context" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["32K", "128K", "1M"]
    assert "weights (bf16)" in out and "DeltaNet state per slot" in out


def test_cli_tells_the_gpu_budget_per_worker(capsys):
    config = str(CONFIGS / "qwen3-next-80b-a3b.json")
    args = ["size", "--config", config, "--weight-dtype", "fp8", "--hbm-gb", "192", "--reserve-gb", "10"]
    assert main([*args, "--gpu-memory-utilization", "0.5", "--workers-per-gpu", "2"]) == 0
    line = next(
        x for x in capsys.readouterr().out.splitlines() if x.startswith("GPU memory budget per worker")
    )
    assert "--gpu-memory-utilization 0.5, 2 worker(s) per GPU): 96.00 GB of one 192 GB GPU" in line
    weights = sizing.param_counts(sizing.shape_from_config(json.loads(Path(config).read_text()))).total_with_mtp  # fp8
    assert f"{(96e9 - weights - 10e9) / 1e9:.2f} GB for KV pages + state slots" in line
    assert "does not fit" not in line
    assert main(["size", "--config", config]) == 0  # bf16 80B weights: more than one GPU holds
    assert "does not fit one GPU" in capsys.readouterr().out
    assert main([*args, "--gpu-memory-utilization", "0.6", "--workers-per-gpu", "2"]) == 2
    assert "exceed one GPU" in capsys.readouterr().err


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["size", "--config", str(tmp_path / "missing.json")]) == 2
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({**TINY, "hidden_size": "x"}))
    assert main(["size", "--config", str(bad)]) == 2
    assert main(["size", "--config", str(CONFIGS / "qwen3-next-80b-a3b.json"), "--context", "32k"]) == 2
    assert "baton size:" in capsys.readouterr().err
