"""Every EngineConfig field is a flag on each worker entry point and on `baton serve`, the flags
mean the same there, and a running worker reports the value it was started with (GetLoad's
`engine_config_json`, read over gRPC)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

import grpc
import pytest

from baton.cli import build_parser
from baton.commands.serve import cluster_spec
from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from decode_worker import start as start_decode_worker
from engine.engine_args import engine_argv, engine_flags
from engine.engine_config import EngineConfig
from prefill_worker import start as start_prefill_worker
from router.config import RouterConfig
from router.pools.base import WorkerSpec
from tests.helpers.checkpoints import tiny_checkpoint
from worker.config import worker_arg_parser, worker_config_from_args

# Values a CPU worker with the tiny checkpoint accepts, each unlike the field's default.
CPU_VALUES = {
    "block_size": 32,
    "cache_bytes": 3 << 28,
    "num_pages": 96,
    "num_slots": 5,
    "checkpoint_slots": 6,
    "max_num_seqs": 4,
    "max_num_batched_tokens": 256,
    "prefill_chunk_size": 64,
    "max_model_len": 1024,
    "enable_prefix_cache": False,
    "checkpoint_every_blocks": 8,
    "dtype": "bfloat16",
    "seed": 7,
    "num_speculative_tokens": 2,
    "enforce_eager": True,
}
# Fields that only take a non-default value on a GPU: the CPU worker is started with the default.
GPU_ONLY = {"device": "cpu", "gpu_memory_utilization": None}


def _non_default(f: dataclasses.Field) -> object:
    """A value unlike the default for a field this test has not heard of (a new field)."""
    kind = typing.get_type_hints(EngineConfig)[f.name]
    default = f.default
    if kind is bool:
        return not default
    if default is None:  # optional: a small positive int or False for a tri-state flag
        return False if bool in typing.get_args(kind) else 3
    return default + 1 if isinstance(default, int) else default


def start_values() -> dict[str, object]:
    values = {}
    for f in dataclasses.fields(EngineConfig):
        if f.name in GPU_ONLY:
            values[f.name] = GPU_ONLY[f.name]
        else:
            values[f.name] = CPU_VALUES[f.name] if f.name in CPU_VALUES else _non_default(f)
    return values


def _engine_dests(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    return {action.dest: action.option_strings for action in parser._actions}


def _serve_parser() -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["serve"]


@pytest.mark.parametrize("entry", ["prefill_worker", "decode_worker", "baton serve"])
def test_every_engine_field_has_a_flag(entry):
    parser = _serve_parser() if entry == "baton serve" else worker_arg_parser(entry.removesuffix("_worker"))
    dests = _engine_dests(parser)
    flags_by_field = {flag.field: flag for flag in engine_flags()}
    missing = [
        f.name
        for f in dataclasses.fields(EngineConfig)
        if f.name not in flags_by_field or flags_by_field[f.name].dest not in dests
    ]
    assert not missing, f"{entry}: EngineConfig fields without a flag: {missing}"
    for required in ("--device", "--dtype", "--max-num-seqs", "--max-num-batched-tokens",
                     "--prefill-chunk-size", "--spec-tokens", "--gpu-memory-utilization",
                     "--memory-gb", "--block-size", "--no-prefix-cache"):  # fmt: skip
        assert any(required in names for names in dests.values()), f"{entry} lacks {required}"


def test_flags_round_trip_through_every_entry_point(tmp_path):
    """Worker flags parse to the values; `baton serve` hands the same values to each worker (the
    process pool and the Ray actors both start workers from `WorkerSpec.argv`)."""
    values = start_values()
    argv = engine_argv(values)
    for role in ("prefill", "decode"):
        config = worker_config_from_args(role, ["--model", "/m", *argv])
        assert dataclasses.asdict(config.engine) == values
    serve_args = _serve_parser().parse_args(["--model", str(tmp_path), *argv])
    spec = cluster_spec(serve_args, RouterConfig(model=str(tmp_path)))
    worker_spec = WorkerSpec(spec.model, memory_gb=spec.memory_gb, extra_args=spec.worker_args)
    config = worker_config_from_args("decode", worker_spec.argv("decode-1"))
    assert dataclasses.asdict(config.engine) == values


def test_serve_gives_each_ray_actor_its_fraction_of_a_gpu(tmp_path):
    """Two workers at 0.45 fit one GPU in Ray's accounting; on the CPU no GPU is asked for."""
    parse = _serve_parser().parse_args
    gpu = parse(["--model", str(tmp_path), "--device", "cuda", "--gpu-memory-utilization", "0.45"])
    assert cluster_spec(gpu, RouterConfig(model=str(tmp_path))).gpus_per_worker == 0.45
    cpu = parse(["--model", str(tmp_path)])
    assert cluster_spec(cpu, RouterConfig(model=str(tmp_path))).gpus_per_worker is None
    assert cluster_spec(cpu, RouterConfig(model=str(tmp_path))).gpus_per_role == {}
    # a worker of several ranks asks for one whole GPU per rank (its ranks run on cuda:0..N-1)
    ranks = parse(["--model", str(tmp_path), "--device", "cuda", "--gpu-memory-utilization", "0.9", "--decode-tp", "2"])
    assert cluster_spec(ranks, RouterConfig(model=str(tmp_path))).gpus_per_role == {"decode": 2.0}


def test_bad_engine_values_are_refused_with_the_reason(capsys):
    with pytest.raises(SystemExit):
        worker_config_from_args("prefill", ["--model", "/m", "--spec-tokens", "9"])
    assert "num_speculative_tokens must be an integer in [0, 4]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        worker_config_from_args("prefill", ["--model", "/m", "--gpu-memory-utilization", "1.5"])
    assert "gpu_memory_utilization must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "start_worker", [start_prefill_worker, start_decode_worker], ids=["prefill", "decode"]
)
def test_a_running_worker_reports_every_engine_value(start_worker):
    values = start_values()
    argv = ["--model", str(tiny_checkpoint()), "--listen", "127.0.0.1:0", "--metrics-port", "0"]
    running = start_worker(argv + engine_argv(values))
    try:
        with grpc.insecure_channel(running.address) as channel:
            info = worker_pb2_grpc.WorkerControlStub(channel).GetLoad(worker_pb2.GetLoadRequest(), timeout=30)
        reported = json.loads(info.engine_config_json)
        assert reported == values
        assert info.load.total_pages == values["num_pages"]
    finally:
        running.stop()
