"""`fp8_compute`: an FP8 checkpoint loaded with `block` keeps its dense linears in FP8 and runs the
Triton W8A8 GEMM (under TRITON_INTERPRET=1 here, set by tests/conftest.py); with `dequantize` it is
dequantized at load. Per family:
- `block` equals the same model with every FP8 linear on its torch reference (the same activation
  quantization): exactly in fp32, measured max |diff| 0.0, in a forward and over greedy decode steps.
- `block` is near `dequantize` at the error FP8 activations imply: measured ||block - dequantize|| /
  ||dequantize|| = 0.068 / 0.167 / 0.094 (qwen3_next / qwen3_5_text / qwen3_5_moe_text; max |diff|
  0.81 / 1.44 / 1.05 on logits of max ~4.5). The tiny random models amplify: FP8 weights alone move
  the logits by 0.075 / 0.186 / 0.104 of their norm from the unquantized checkpoint. Activations are
  rounded to e4m3 like the weights (and in finer 1 x 128 groups), so the bound is 1.5x that weight
  effect (measured ratios 0.90-0.92). Greedy tokens do not stay equal to `dequantize` over 8 steps on
  these models (near-ties after the first 1-3 tokens), so tokens are compared with the reference only.
Plus: the routed experts and the MTP head are dequantized; tensor-parallel shards cut weights and
scales alike, and dequantize a weight whose shard would cut a scale block; bad values are refused."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.cache.tensors import CacheTensors
from engine.engine_args import add_engine_flags, engine_config_from_args
from engine.engine_config import EngineConfig
from engine.fp8_checkpoint import quantize_checkpoint
from engine.identity import checkpoint_files
from engine.llm_engine import LLMEngine
from engine.loader import LoadedCheckpoint, load_checkpoint
from engine.make_model import make_model
from engine.model_config import ModelConfig
from engine.model_runner import ModelRunner, SeqChunk
from engine.models.linear import fp8_linears
from engine.ops.fp8 import expand_scale_rows
from engine.ops.fp8_compute import resolve_fp8_compute
from engine.ops.fp8_linear import Fp8BlockLinear
from engine.parallel.config import ParallelConfig
from engine.parallel.shard import shard_tensor
from engine.safetensors_stream import read_header
from engine.sampling_params import SamplingParams
from engine.weight_placer import WeightPlacer
from tests.engine.test_fp8_checkpoint import all_tensors
from tests.engine.test_parallel import _prompt
from tests.helpers.engine_runs import run_recording_logits
from tests.helpers.rank_group import leader_engine

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]

MODEL_TYPES = ["qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per family: (the FP8 checkpoint, the same weights unquantized)."""
    root = tmp_path_factory.mktemp("fp8")
    return {
        t: (make_model(root / f"{t}-fp8", model_type=t, quant="fp8"), make_model(root / t, model_type=t))
        for t in MODEL_TYPES
    }


def on_reference(model) -> None:
    for linear in fp8_linears(model).values():
        linear.use_kernel = False


def forward_logits(loaded: LoadedCheckpoint) -> torch.Tensor:
    cfg = loaded.config
    cache = CacheTensors.allocate(cfg, num_pages=4, num_slots=1, block_size=16, device=loaded.model.device)
    runner = ModelRunner(loaded.model, cache)
    return runner.forward([SeqChunk(list(range(1, 30)), 0, [0, 1], 0)], all_logits=True)


def greedy(engine: LLMEngine, prompts: dict[str, list[int]]):
    """(tokens, stacked logits rows) per request id, all requests run together."""
    logits: dict[str, list[torch.Tensor]] = {}
    tokens = run_recording_logits(engine, prompts, GREEDY, logits)
    return tokens, {rid: torch.stack(rows) for rid, rows in logits.items()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_block_logits_equal_the_reference_and_are_near_dequantize(checkpoints, model_type):
    fp8, original = checkpoints[model_type]
    block = load_checkpoint(fp8, fp8_compute="block")
    linears = fp8_linears(block.model)
    kinds = {name.split(".", 2)[2].rsplit(".", 1)[0] for name in linears}
    dense_ffn = set()
    for layer in block.model.layers:  # a dense MLP, or the MoE's shared expert
        dense_ffn |= (
            {"ffn.shared.gate_up", "ffn.shared.down"}
            if hasattr(layer.ffn, "shared")
            else {"ffn.gate_up", "ffn.down"}
        )
    assert kinds == {"mixer.qkv_proj", "mixer.o_proj", "mixer.in_proj", "mixer.out_proj"} | dense_ffn
    for layer in block.model.layers:
        if layer.kind == "linear_attention":  # q|k|v and z in FP8, the unquantized b and a beside
            assert [type(p) for p in layer.mixer.in_proj.parts] == [Fp8BlockLinear, torch.Tensor]
        if hasattr(layer.ffn, "gate_up_t"):  # routed experts: dequantized at load
            assert layer.ffn.gate_up_t.dtype == torch.float32
    assert all(p.weight.dtype == torch.float8_e4m3fn for p in linears.values())
    assert all(t.dtype == torch.float32 for t in block.model.extra_weights.values())  # the MTP head

    got = forward_logits(block)
    reference = load_checkpoint(fp8, fp8_compute="block")
    on_reference(reference.model)
    torch.testing.assert_close(got, forward_logits(reference), atol=1e-6, rtol=1e-6)

    dequantized = forward_logits(load_checkpoint(fp8, fp8_compute="dequantize"))
    unquantized = forward_logits(load_checkpoint(original))
    weight_effect = relative(dequantized, unquantized)
    activation_effect = relative(got, dequantized)
    print(f"{model_type}: block vs dequantize rel {activation_effect:.4f}, max |diff| "
          f"{(got - dequantized).abs().max():.4f}; fp8 weights vs unquantized rel {weight_effect:.4f}")  # fmt: skip
    assert 0.01 < activation_effect < 1.5 * weight_effect


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_engine_greedy_tokens_equal_the_reference_linears(checkpoints, model_type):
    fp8, _ = checkpoints[model_type]
    config = EngineConfig(fp8_compute="block", num_pages=16, max_num_seqs=2, prefill_chunk_size=8)
    prompts = {
        f"r{i}": torch.randint(3, 1000, (11 + 3 * i,), generator=torch.Generator().manual_seed(i)).tolist()
        for i in range(2)
    }

    def run(reference: bool) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
        engine = LLMEngine(fp8, config)
        assert fp8_linears(engine.model)
        if reference:
            on_reference(engine.model)
        return greedy(engine, prompts)

    tokens, logits = run(reference=False)
    expected_tokens, expected_logits = run(reference=True)
    assert tokens == expected_tokens and all(len(t) == 8 for t in tokens.values())
    # Equal up to float reassociation (~1e-6 after 8 steps, since the small-step dense MoE form
    # sums each row's experts out of one batched matmul); FP8's own effect is ~0.1 (test above).
    for rid, rows in logits.items():
        torch.testing.assert_close(rows, expected_logits[rid], atol=1e-5, rtol=1e-5)


def _headers(model_dir: Path):
    return [read_header(model_dir / name) for name in checkpoint_files(model_dir)]


def _placed(model_dir: Path, cfg: ModelConfig, parallel: ParallelConfig | None = None, rank: int = 0):
    placer = WeightPlacer(model_dir, cfg, torch.float32, torch.device("cpu"), _headers(model_dir))
    placer.keep_fp8 = True
    if parallel is not None:
        placer.shard_for(parallel, rank)
    placer.run(None, False)
    return placer.finish()[0], placer


def fp8_copy(original: Path, dst: Path, block: tuple[int, int]) -> Path:
    """`original`'s weights quantized in `block` blocks (make-model writes 128 x 128 ones)."""
    tensors, quant = quantize_checkpoint(all_tensors(original), block)
    dst.mkdir()
    save_file(tensors, str(dst / "model.safetensors"))
    config = json.loads((original / "config.json").read_text()) | {"quantization_config": quant}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize(("block", "row_parallel_kept"), [((32, 32), True), ((128, 128), False)])
def test_tensor_parallel_shards_cut_weights_and_scales_alike(tmp_path, checkpoints, block, row_parallel_kept):
    """tp=2 on the tiny qwen3_5_text: o_proj, out_proj and down_proj have 128 columns, 64 per rank.
    In 32-column scale blocks the cut falls on a block edge and every weight stays FP8; in 128-column
    blocks it would cut a block, so those three are dequantized (column-parallel ones stay FP8)."""
    model_dir = fp8_copy(checkpoints["qwen3_5_text"][1], tmp_path / "m", block)
    cfg = ModelConfig.from_json(model_dir)
    whole, _ = _placed(model_dir, cfg)
    parallel = ParallelConfig(2, 1)
    for rank in range(2):
        shard, placer = _placed(model_dir, cfg, parallel, rank)
        for name in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight"):
            full = f"layers.2.{name}"
            kept = "q_proj" in name or row_parallel_kept
            assert (shard[full].dtype == torch.float8_e4m3fn) == kept, full
            if kept:
                expected = shard_tensor(cfg, full, whole[full], parallel, rank)
                assert torch.equal(shard[full].view(torch.uint8), expected.view(torch.uint8))
                scales = shard_tensor(cfg, full, whole[full + "_scale_inv"], parallel, rank)
                assert torch.equal(shard[full + "_scale_inv"], scales)
            else:
                assert full + "_scale_inv" not in shard and full in placer.fp8_dequantized


def test_the_row_scales_match_the_checkpoint_blocks(checkpoints):
    fp8, _ = checkpoints["qwen3_5_text"]
    tensors = all_tensors(fp8)
    weights, _ = _placed(fp8, ModelConfig.from_json(fp8))
    name = "layers.2.mlp.gate_proj.weight"
    cfg = ModelConfig.from_json(fp8)
    stored = tensors[cfg.weight_prefix + name + "_scale_inv"]
    assert torch.equal(weights[name + "_scale_inv"], expand_scale_rows(stored, weights[name].shape[0], 128))


def test_fp8_compute_values(checkpoints, monkeypatch):
    with pytest.raises(
        ValueError, match=r"fp8_compute must be one of \('auto', 'dequantize', 'block'\), got 'fast'"
    ):
        EngineConfig(fp8_compute="fast")
    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    assert engine_config_from_args(parser.parse_args(["--fp8-compute", "block"])).fp8_compute == "block"
    with pytest.raises(ValueError, match="fp8_compute must be one of"):
        engine_config_from_args(parser.parse_args(["--fp8-compute", "int4"]))
    fp8, _ = checkpoints["qwen3_next"]
    with pytest.raises(ValueError, match="fp8_compute must be one of"):
        load_checkpoint(fp8, fp8_compute="fp4")
    assert resolve_fp8_compute("auto", "cpu") == "dequantize"  # never the slow interpreter by default
    assert resolve_fp8_compute("block", "cpu") == "block"  # TRITON_INTERPRET=1 here
    assert not fp8_linears(load_checkpoint(fp8).model)  # auto on the CPU: dequantized
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"only under the interpreter \(TRITON_INTERPRET=1\)"):
        load_checkpoint(fp8, fp8_compute="block")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_fp8_compute("block", "cuda")
        assert resolve_fp8_compute("auto", "cuda") == "dequantize"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_block_on_gpu_against_the_reference_and_dequantize(checkpoints, model_type):
    """On a GPU the fp8 tensor cores sum in another order (and Hopper's fp8 MMA accumulates with ~14
    mantissa bits inside an instruction) than torch, so the forward is held to its reference at a
    relative bound rather than bitwise. On the CPU, re-summing the reference in fp64 moves these
    logits by 2.6e-7 .. 2.7e-6 of their norm; 1e-2 leaves room for an activation that lands on an e4m3
    rounding edge and rounds the other way, and is still 7x below the block-vs-dequantize gap."""
    fp8, original = checkpoints[model_type]
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("no FP8 tensor cores")
    block = load_checkpoint(fp8, device="cuda")  # auto picks block here
    assert fp8_linears(block.model)
    got = forward_logits(block).cpu()
    reference = load_checkpoint(fp8, device="cuda", fp8_compute="block")
    on_reference(reference.model)
    assert relative(got, forward_logits(reference).cpu()) < 1e-2
    dequantized = forward_logits(load_checkpoint(fp8, device="cuda", fp8_compute="dequantize")).cpu()
    unquantized = forward_logits(load_checkpoint(original, device="cuda")).cpu()
    assert 0.01 < relative(got, dequantized) < 1.5 * relative(dequantized, unquantized)


@pytest.mark.slow
def test_two_ranks_in_block_mode_equal_one(tmp_path, checkpoints):
    """tp=2 (gloo; rank 1 a spawned follower, also under the interpreter) on an FP8 copy in 32 x 32
    blocks, where every shard boundary falls on a block edge: the same activation groups and scales
    as one rank, so greedy tokens and logits equal tp=1's up to the all-reduce's fp32 order.
    Short on purpose: a long run meets an activation that the other sum order puts across an e4m3
    rounding edge, and from there on the two differ by that 6% step of one element (measured on
    test_parallel's 4-request scenario: 2 of 5 requests stay within 2.4e-6 throughout, the others
    jump to 1e-2 .. 3e-1 after such a flip; one turn picks another token 16 steps in)."""
    model_dir = fp8_copy(checkpoints["qwen3_5_text"][1], tmp_path / "m", (32, 32))
    config = EngineConfig(num_pages=16, max_num_seqs=2, fp8_compute="block")
    prompts = {"r5": _prompt(5, seed=5), "r17": _prompt(17, seed=17)}
    one = LLMEngine(model_dir, config)
    assert fp8_linears(one.model)
    tokens, logits = greedy(one, prompts)
    with leader_engine(model_dir, dataclasses.replace(config, tp=2)) as engine:
        p_tokens, p_logits = greedy(engine, prompts)
    assert p_tokens == tokens and all(len(t) == GREEDY.max_tokens for t in tokens.values())
    for rid, rows in logits.items():
        torch.testing.assert_close(p_logits[rid], rows, rtol=1e-5, atol=1e-5, msg=rid)


def test_block_runs_only_after_the_kernels_agree_with_their_reference_on_the_device(monkeypatch):
    """The self-check catches a kernel that computes wrongly (or fails) on the device: a forced
    `block` is refused with the reason (`auto` turns into `dequantize` the same way on a GPU)."""
    from engine.ops import fp8_compute
    from engine.ops.fp8_linear import Fp8BlockLinear

    fp8_compute.kernel_self_check.cache_clear()
    assert fp8_compute.kernel_self_check("cpu") is None  # the real kernels, under the interpreter
    fp8_compute.kernel_self_check.cache_clear()
    monkeypatch.setattr(Fp8BlockLinear, "forward", lambda self, x: Fp8BlockLinear.reference(self, x) * 1.1)
    with pytest.raises(ValueError, match="differs from its torch reference on cpu by 0.1"):
        resolve_fp8_compute("block", "cpu")
    fp8_compute.kernel_self_check.cache_clear()

    def broken(self, x):
        raise RuntimeError("PTX compile failed")

    monkeypatch.setattr(Fp8BlockLinear, "forward", broken)
    with pytest.raises(ValueError, match="failed to run on cpu .RuntimeError: PTX compile failed"):
        resolve_fp8_compute("block", "cpu")
    fp8_compute.kernel_self_check.cache_clear()
