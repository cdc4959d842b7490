"""Write a trained model as the usual Hugging Face checkpoint (the loader path of real ones), with
its training record (`training.json`) and loss curve (`loss_curve.png`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer

from engine.checkpoint_writer import write_json, write_safetensors_shards
from engine.make_tokenizer import write_tokenizer
from engine.model_config import ModelConfig
from engine.models.checkpoint_format import to_hf

TRAINING_FILE = "training.json"
LOSS_CURVE = "loss_curve.png"


def write_trained_checkpoint(
    out: Path,
    cfg: ModelConfig,
    raw_config: dict,
    weights: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    history: list[dict],
    meta: dict,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(tokenizer, out, raw_config["max_position_embeddings"], "Qwen2Tokenizer")
    write_json(out / "config.json", raw_config)
    write_json(
        out / "generation_config.json",
        {"eos_token_id": raw_config["eos_token_id"], "pad_token_id": raw_config["pad_token_id"]},
    )
    tensors = {k: v.to(cfg.dtype).contiguous() for k, v in weights.items()}
    write_safetensors_shards(to_hf(cfg, tensors), out, 64 * 1024 * 1024)
    (out / TRAINING_FILE).write_text(json.dumps({**meta, "history": history}, indent=1) + "\n")
    plot_losses(history, out / LOSS_CURVE)
    return out


def read_training_record(model_dir: Path) -> dict | None:
    path = Path(model_dir) / TRAINING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib  # lazy: plotting is only needed once, after training

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: matplotlib, only for the loss plot

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [h["main"] for h in history], label="next token", linewidth=1)
    ax.plot(steps, [h["mtp"] for h in history], label="MTP (token +2)", linewidth=1)
    if any(h["mtp2"] for h in history):
        ax.plot(steps, [h["mtp2"] for h in history], label="MTP step 2 (token +3)", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
