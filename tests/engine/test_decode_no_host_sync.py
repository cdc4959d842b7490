"""No host syncs in the decode step: decode steps of the whole engine (`LLMEngine.step`) run under a
`TorchDispatchMode` and a `TorchFunctionMode` that record every op, and the only read of device
data back to the host is the ONE copy of the chosen token ids (`engine/token_readback.py`).

What counts as a host sync: `.item()` / `int()` / `bool()` of a tensor (`aten._local_scalar_dense`,
`aten.item`, `aten.is_nonzero`, `aten.equal`), `.tolist()` / `.numpy()`, ops whose output shape
depends on tensor values (`nonzero`, `masked_select`, `unique`, `bincount`, tensor-sized
`repeat_interleave`), and copies from the device to the host."""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import engine
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)

SYNC_OPS = {
    "_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "nonzero", "nonzero_static",
    "masked_select", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "bincount",
    "histc", "argwhere",
}  # fmt: skip
SYNC_METHODS = {"tolist", "item", "numpy", "__bool__", "__int__", "__float__", "__index__", "__len__"}
THE_ONE_COPY = "engine/token_readback.py"
ENGINE_DIR = str(Path(engine.__file__).parent) + "/"


class SyncRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.hits: Counter[tuple[str, str]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        data_sized = name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor")
        if data_sized or name in SYNC_OPS or _device_to_host(name, args, kwargs):
            self.hits[(name, where())] += 1
        return func(*args, **kwargs)


class MethodRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.hits: Counter[tuple[str, str]] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNC_METHODS and args and isinstance(args[0], torch.Tensor):
            self.hits[(name, where())] += 1
        return func(*args, **(kwargs or {}))


def _device_to_host(name: str, args, kwargs) -> bool:
    if name == "_to_copy":
        target = kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"
    if name == "copy_":
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    return False


def where() -> str:
    """The innermost frame in our code (engine/ or below), as 'path:line'."""
    frames = [f for f in traceback.extract_stack() if f.filename.startswith(ENGINE_DIR)]
    if not frames:
        return "?"
    frame = frames[-1]
    return f"engine/{frame.filename[len(ENGINE_DIR) :]}:{frame.lineno}"


def decode_engine(model_type: str, device: str, enforce_eager: bool = False) -> LLMEngine:
    config = EngineConfig(enable_prefix_cache=True, num_pages=64, device=device, enforce_eager=enforce_eager)
    engine = LLMEngine(tiny_checkpoint(model_type), config)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    for i, length in enumerate((7, 19, 33)):
        ids = torch.randint(3, 500, (length,), generator=torch.Generator().manual_seed(i)).tolist()
        engine.add_request(f"r{i}", ids, params)
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.sequences.values()):
        engine.step()  # prefills (chunks end early where a checkpoint is due)
    assert all(s.is_prefilling is False and s.output_token_ids for s in engine.sequences.values())
    return engine


def record_decode_steps(engine: LLMEngine, steps: int) -> tuple[Counter, int]:
    ops, methods = SyncRecorder(), MethodRecorder()
    produced = 0
    with methods, ops:
        for _ in range(steps):
            produced += sum(len(o.new_token_ids) for o in engine.step())
    return ops.hits + methods.hits, produced


def assert_one_copy_per_step(hits: Counter, steps: int) -> None:
    others = {k: n for k, n in hits.items() if not k[1].startswith(THE_ONE_COPY)}
    assert not others, f"host syncs in the decode step (op, where): {others}"
    reads = sum(n for (name, _), n in hits.items() if name == "tolist")
    copies = sum(n for (name, _), n in hits.items() if name != "tolist")  # cuda: the copy itself
    assert reads == steps and copies in (0, steps), f"expected one token read per step, got {dict(hits)}"


@pytest.mark.parametrize(
    "model_type",
    [
        "qwen3_next",
        "qwen3_5_text",
        "qwen3_5_moe_text",
    ],
)
def test_decode_steps_read_back_only_the_token_ids(model_type: str) -> None:
    engine = decode_engine(model_type, "cpu")
    hits, produced = record_decode_steps(engine, steps=4)
    assert produced == 12  # three sequences decoded four steps each
    assert_one_copy_per_step(hits, steps=4)


def test_the_recorder_sees_syncs() -> None:
    """The test above can fail: each kind of sync it forbids is seen here."""
    x = torch.arange(6.0)
    ops, methods = SyncRecorder(), MethodRecorder()
    with torch.inference_mode(), methods, ops:
        int(x.max())
        bool(x.any())
        x.tolist()
        x.nonzero()
        torch.bincount(x.long())
    names = {name for name, _ in (ops.hits + methods.hits)}
    assert {"item", "nonzero", "bincount", "tolist", "__int__", "__bool__"} <= names


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a cuda device")
@pytest.mark.parametrize("enforce_eager", [True, False])  # eager: every op of the step is seen
def test_cuda_decode_steps_read_back_only_the_token_ids(enforce_eager: bool) -> None:
    engine = decode_engine("qwen3_5_text", "cuda", enforce_eager)
    engine.step()  # warm up (lazy kernel compiles, graph capture)
    hits, produced = record_decode_steps(engine, steps=4)
    assert produced == 12
    assert_one_copy_per_step(hits, steps=4)
