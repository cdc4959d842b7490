"""Block-quantized FP8 checkpoints: `make_model(quant="fp8")` writes Qwen's FP8 layout, the loader
dequantizes it tensor by tensor, and the logits equal those of the same checkpoint dequantized by
an independent per-block loop and saved as fp32. Bad FP8 input is refused by name."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.cache.tensors import CacheTensors
from engine.loader import CheckpointError, load_model
from engine.make_model import make_model
from engine.model_config import ConfigError
from engine.model_runner import ModelRunner, SeqChunk
from engine.ops.fp8 import dequantize_block_fp8, quantize_block_fp8

pytestmark = pytest.mark.timeout(300)


def naive_dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """One block at a time, edges cut short by the tensor's end."""
    out = weight.to(torch.float32).clone()
    bn, bk = block
    for idx in itertools.product(*[range(d) for d in weight.shape[:-2]]):
        for i in range(scale_inv.shape[-2]):
            for j in range(scale_inv.shape[-1]):
                out[idx + (slice(i * bn, (i + 1) * bn), slice(j * bk, (j + 1) * bk))] *= scale_inv[
                    idx + (i, j)
                ]
    return out


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def write_single(dst: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    dst.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def logits_of(path: Path) -> torch.Tensor:
    cfg, model = load_model(path)
    runner = ModelRunner(model, CacheTensors.allocate(cfg, num_pages=4, num_slots=1, block_size=16))
    return runner.forward([SeqChunk(list(range(1, 30)), 0, [0, 1], 0)], all_logits=True)


def dequantized_copy(src: Path, dst: Path) -> Path:
    config = json.loads((src / "config.json").read_text())
    block = tuple(config.pop("quantization_config")["weight_block_size"])
    tensors = all_tensors(src)
    plain = {}
    for name, tensor in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        if tensor.dtype == torch.float8_e4m3fn:
            tensor = naive_dequantize(tensor, tensors[name + "_scale_inv"], block)
        plain[name] = tensor
    return write_single(dst, plain, config)


def test_dequantize_matches_naive_blocks_with_partial_edges():
    weight = torch.randn(3, 200, 300)
    fp8, scale_inv = quantize_block_fp8(weight, (128, 128))
    assert fp8.dtype == torch.float8_e4m3fn and scale_inv.shape == (3, 2, 3)
    expected = naive_dequantize(fp8, scale_inv, (128, 128))
    assert torch.equal(dequantize_block_fp8(fp8, scale_inv, (128, 128)), expected)
    assert (expected - weight).abs().max() < 0.07 * weight.abs().max()  # e4m3: 3 mantissa bits
    with pytest.raises(ValueError, match=r"needs \(3, 2, 3\)"):
        dequantize_block_fp8(fp8, scale_inv[:, :1], (128, 128))


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text", "qwen3_5_text"])
def test_fp8_logits_equal_the_dequantized_fp32_checkpoint(tmp_path: Path, model_type: str):
    fp8 = make_model(tmp_path / "fp8", model_type=model_type, quant="fp8")
    tensors = all_tensors(fp8)
    quantized = [n for n, t in tensors.items() if t.dtype == torch.float8_e4m3fn]
    assert quantized and all(n + "_scale_inv" in tensors for n in quantized)
    left = [
        n
        for n in tensors
        if n.endswith(("embed_tokens.weight", "mlp.gate.weight", "norm.weight", "in_proj_b.weight"))
    ]
    assert left and all(tensors[n].dtype == torch.float32 for n in left)
    reference = dequantized_copy(fp8, tmp_path / "fp32")
    got = logits_of(fp8)
    torch.testing.assert_close(got, logits_of(reference), atol=1e-5, rtol=1e-5)
    # The quantization is real: the unquantized weights give other logits.
    original = make_model(tmp_path / "orig", model_type=model_type)
    assert (got - logits_of(original)).abs().max() > 1e-3


def test_fp8_tensors_without_quantization_config_are_refused(tmp_path: Path):
    fp8 = make_model(tmp_path / "fp8", model_type="qwen3_next", quant="fp8")
    config = json.loads((fp8 / "config.json").read_text())
    del config["quantization_config"]
    (fp8 / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match="float8_e4m3fn but config.json declares no quantization_config"
    ):
        load_model(fp8)


def test_missing_scale_is_named(tmp_path: Path):
    fp8 = make_model(tmp_path / "fp8", model_type="qwen3_5_moe_text", quant="fp8")
    tensors = all_tensors(fp8)
    victim = next(n for n in sorted(tensors) if n.endswith("o_proj.weight_scale_inv"))
    del tensors[victim]
    path = write_single(tmp_path / "broken", tensors, json.loads((fp8 / "config.json").read_text()))
    with pytest.raises(CheckpointError, match=victim.replace(".", r"\.")):
        load_model(path)


def test_unknown_quantization_is_refused_by_name(tmp_path: Path):
    src = make_model(tmp_path / "m", model_type="qwen3_next")
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'compressed-tensors'"):
        load_model(src)
