"""The trained checkpoint the repository ships (`assets/trained-qwen3_next`, ~6 MB), and where the
demo, the benchmarks and the tests find a trained model.

Why ship one: the demo must finish within minutes on any fresh machine, and training even the
demo-sized model takes minutes on 2 idle cores (far more on a loaded one); the shipped model is
the benchmark run (`BENCH_STEPS`), so it is also better than a first-run training could be.
`baton make-model --train` reproduces it (its `training.json` records the corpus hash it was
trained on; another Python version's stdlib gives a different corpus hash and slightly different
weights).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.training.train_model import BENCH_STEPS, TrainConfig, trained_checkpoint

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "trained-qwen3_next"


def shipped_checkpoint() -> Path | None:
    return SHIPPED if (SHIPPED / "config.json").is_file() else None


def shipped_or_cached(log=print) -> Path:
    """The shipped checkpoint, or the cached benchmark run (trained on first use: tens of minutes)."""
    return shipped_checkpoint() or trained_checkpoint(replace(TrainConfig(), steps=BENCH_STEPS), log=log)
