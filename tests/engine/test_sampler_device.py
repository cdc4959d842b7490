"""The sampler stays on the logits' device: no value is read back to the host during a step except
the one packed copy of the result; on CUDA (when present) it agrees with the CPU."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.sampler import Sampler, SampleRequest, make_generator
from engine.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(60)

READ_BACKS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.item"}


class ReadBackRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.read_backs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in READ_BACKS:
            self.read_backs.append(str(func))
        return func(*args, **(kwargs or {}))


def mixed_requests(device: str = "cpu") -> list[SampleRequest]:
    every_kind = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.8, top_k=5, seed=7, logprobs=2),
        SamplingParams(temperature=1.2, top_p=0.7, min_p=0.05),
        SamplingParams(temperature=0.0, repetition_penalty=1.3, presence_penalty=0.4, logprobs=0),
        SamplingParams(temperature=0.9, frequency_penalty=0.3, seed=11),
    ]
    return [
        SampleRequest(p, [1, 2, 3], [4, 4, 5], make_generator(p.seed, device) if p.seed is not None else None)
        for p in every_kind
    ]


def test_a_step_reads_nothing_back_but_its_result() -> None:
    logits = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    sampler = Sampler(seed=3)

    with ReadBackRecorder() as recorder:
        result = sampler(logits, mixed_requests())

    assert recorder.read_backs == []
    assert len(result.token_ids) == 5 and result.logprobs[1] is not None and result.logprobs[0] is None
    assert len(result.logprobs[1].top_token_ids) == 2 and result.logprobs[3].top_token_ids == ()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampler_matches_cpu_on_greedy_rows_and_repeats_seeded_rows() -> None:
    logits = torch.randn(5, 512, generator=torch.Generator().manual_seed(1))
    cpu = Sampler(seed=3)(logits, mixed_requests())
    first = Sampler(seed=3)(logits.cuda(), mixed_requests("cuda"))
    again = Sampler(seed=3)(logits.cuda(), mixed_requests("cuda"))

    assert [first.token_ids[i] for i in (0, 3)] == [cpu.token_ids[i] for i in (0, 3)]
    assert first.token_ids == again.token_ids
    assert abs(first.logprobs[3].logprob - cpu.logprobs[3].logprob) < 1e-4
