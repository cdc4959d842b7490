"""GPU-only checks (marked `cuda`, skipped without a GPU): the engine on CUDA gives the greedy
tokens of the CPU engine and of transformers on tiny fp32 checkpoints (a mixed batch, prefix-cache
turns, chunked prefill), the kernels agree with their torch forms in bf16, and a speed floor for
split-K paged attention. `python -m bench.gpu` measures the speeds for real."""

from __future__ import annotations

import pytest
import torch

from engine.llm import LLM
from engine.sampling_params import SamplingParams
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.timeout(600),
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(0, vocab, (70,), generator=gen).tolist()
    # A shared 70-token prefix (a prefix-cache hit for the later ones), a short one, a long one.
    return [base, base + [5, 9, 11], [3, 1, 4], base + base[:40]]


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text"])
def test_cuda_greedy_tokens_equal_cpu_and_transformers(model_type: str) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = tiny_checkpoint(model_type)
    cpu = LLM(model_dir)
    batch = prompts(cpu.engine.model_config.vocab_size)
    expected = [r.token_ids for r in cpu.generate(batch, GREEDY)]
    cuda = LLM(model_dir, device="cuda", prefill_chunk_size=32)
    first_turn = cuda.generate(batch[:1], GREEDY)[0]
    got = [r.token_ids for r in cuda.generate(batch, GREEDY)]  # prompts 0, 1, 3 hit the cache

    assert first_turn.token_ids == expected[0]
    assert got == expected
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
    with torch.inference_mode():
        hf = reference.generate(
            torch.tensor([batch[2]], device="cuda"), max_new_tokens=24, min_new_tokens=24, do_sample=False,
            pad_token_id=0,
        )[0, len(batch[2]) :].tolist()  # fmt: skip
    assert got[2] == hf


def test_bf16_kernels_agree_with_torch_forms() -> None:
    from engine.ops.gdn_chunked import chunk_gated_delta_rule
    from engine.ops.moe import moe_dense_reference
    from engine.ops.triton.fused_moe import fused_moe_triton
    from engine.ops.triton.gdn_chunked import chunk_gated_delta_rule_triton

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(37, 256, device="cuda", generator=gen).bfloat16()
    gate_up = (torch.randn(16, 256, 256, device="cuda", generator=gen) / 16).bfloat16()
    down = (torch.randn(16, 128, 256, device="cuda", generator=gen) / 11).bfloat16()
    top_w, top_e = torch.rand(37, 16, device="cuda", generator=gen).topk(4, dim=-1)
    top_w = (top_w / top_w.sum(-1, keepdim=True)).bfloat16()
    torch.testing.assert_close(
        fused_moe_triton(x, top_e, top_w, gate_up, down).float(),
        moe_dense_reference(x, top_e, top_w, gate_up, down).float(),
        atol=3e-2, rtol=3e-2,
    )  # fmt: skip
    q = torch.nn.functional.normalize(torch.randn(1, 300, 4, 128, device="cuda", generator=gen), dim=-1)
    k = torch.nn.functional.normalize(q + 0.5 * torch.randn_like(q), dim=-1)
    v = torch.randn(1, 300, 4, 128, device="cuda", generator=gen)
    g = -torch.rand(1, 300, 4, device="cuda", generator=gen) * 0.3
    beta = torch.rand(1, 300, 4, device="cuda", generator=gen)
    out, state = chunk_gated_delta_rule_triton(q, k, v, g, beta)
    ref_out, ref_state = chunk_gated_delta_rule(q, k, v, g, beta)
    torch.testing.assert_close(out, ref_out, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(state, ref_state, atol=2e-3, rtol=2e-3)


def test_split_k_paged_attention_streams_kv_at_a_useful_fraction_of_bandwidth() -> None:
    from bench.gpu_kernels import SIZES, _paged_decode_inputs
    from bench.gpu_timing import best_of, measure_copy_bandwidth
    from engine.ops.paged_attention import paged_attention_reference
    from engine.ops.triton.paged_attention_splitk import paged_attention_splitk

    sizes = SIZES["cuda"]
    q, kv, tables, lens = _paged_decode_inputs(sizes, 64, torch.bfloat16, "cuda")
    out = paged_attention_splitk(q, kv, tables, lens, 0.0625)
    few = slice(0, 2)
    expected = paged_attention_reference(q[few], kv, tables[few], lens[few], 0.0625)
    torch.testing.assert_close(out[few].float(), expected.float(), atol=2e-2, rtol=2e-2)
    seconds = best_of(lambda: paged_attention_splitk(q, kv, tables, lens, 0.0625), "cuda", repeats=10)
    kv_bytes = 64 * sizes["context"] * 2 * sizes["kv_heads"] * sizes["attn_dim"] * 2
    # A sanity floor well under the 50% target, so a broken kernel fails without flaking.
    assert kv_bytes / seconds >= 0.2 * measure_copy_bandwidth("cuda")
