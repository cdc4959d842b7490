"""No host syncs in a decode step on the GPU path: engine decode steps (sampling with a seed,
logprobs and greedy rows; the model through its Triton kernels, forced onto the CPU under
TRITON_INTERPRET=1) under a TorchDispatchMode that records every value read back to the host.

The one copy of the chosen ids is `.tolist()` on the packed result, which dispatches no op. The
only read-backs allowed are validations that run on CPU tensors only (`if not x.is_cuda`), so
never on a GPU."""

from __future__ import annotations

import traceback

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

import engine.ops.dispatch as dispatch
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]

READ_BACKS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.item"}
CPU_ONLY_CHECKS = {"_check_pool"}  # engine/ops/triton/gdn_decode.py: slot range checks on CPU tensors


class ReadBackRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.read_backs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in READ_BACKS:
            stack = traceback.extract_stack()
            if not CPU_ONLY_CHECKS & {frame.name for frame in stack}:
                origin = [f for f in stack if "/engine/" in f.filename][-1:]
                self.read_backs.append(f"{func} at {origin}")
        return func(*args, **(kwargs or {}))


def test_decode_steps_read_nothing_back_on_the_gpu_path(monkeypatch) -> None:
    engine = LLMEngine(tiny_checkpoint("qwen3_next"), EngineConfig())
    kinds = [
        SamplingParams(temperature=0.0, max_tokens=8),
        SamplingParams(temperature=0.8, top_p=0.9, seed=3, logprobs=2, max_tokens=8),
        SamplingParams(temperature=1.0, repetition_penalty=1.2, max_tokens=8),
    ]
    for i, params in enumerate(kinds):
        engine.add_request(f"r{i}", list(range(3 + i, 30 + i)), params)
    engine.step()  # prefill (torch path)
    monkeypatch.setattr(dispatch, "FORCE_TRITON", True)

    with ReadBackRecorder() as recorder:
        outputs = engine.step() + engine.step()

    assert recorder.read_backs == []
    assert sum(len(o.new_token_ids) for o in outputs) == 6
