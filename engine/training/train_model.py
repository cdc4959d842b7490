"""Train a small `qwen3_next` model (DeltaNet + gated attention layers, MoE, an MTP head) on the
stdlib corpus with Baton's own small tokenizer, and write it as a Hugging Face checkpoint.

`train_model(out_dir, TrainConfig())` tokenizes the corpus, initialises the weights as
`engine.make_model` does, trains the main model and the MTP head together
(`engine.training.objective`) with AdamW (warmup + cosine), shows a progress bar, and writes the
checkpoint (`engine.training.checkpoint`) with `training.json` (corpus hash, config, losses) and
`loss_curve.png`. `trained_checkpoint(config)` caches the result under the user cache folder,
keyed by corpus hash + model config + training config.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from engine.make_model import random_weights
from engine.make_tokenizer import QWEN2_PRETOKENIZE_REGEX, SPECIAL_TOKENS, build_tokenizer
from engine.model_config import ModelConfig
from engine.training import objective
from engine.training.cache import build_once, cache_dir
from engine.training.checkpoint import write_trained_checkpoint
from engine.training.corpus import Corpus, load_corpus

FORMAT_VERSION = 1  # bump when the model, objective or data pipeline changes what gets trained
BENCH_STEPS = 500  # the benchmark (and shipped) model: a longer run of the same config
# One thread: on a shared 2-core machine two OpenMP threads made a training step ~20x slower
# (spinning workers preempted by other processes); one thread loses little when the box is idle.
TRAIN_THREADS = 1


@dataclass(frozen=True, slots=True)
class TrainConfig:
    steps: int = 200  # the demo budget: ~0.7 s a step, ~2.5 min on an idle 2-core machine
    batch_size: int = 4
    seq_len: int = 256
    lr: float = 3e-3
    warmup_steps: int = 40
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mtp_weight: float = 0.3  # DeepSeek-V3's λ for the MTP loss
    second_step_weight: float = 0.5  # relative weight of the second MTP step (drafts 2..k)
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_experts: int = 8
    experts_per_token: int = 2
    moe_intermediate_size: int | None = None  # None: hidden_size
    seed: int = 0

    @classmethod
    def quick(cls, steps: int = 8) -> TrainConfig:
        """A tiny model and a few steps: checks the loop in seconds (tests)."""
        return cls(
            steps=steps,
            batch_size=4,
            seq_len=64,
            warmup_steps=2,
            vocab_size=512,
            hidden_size=32,
            num_layers=4,
        )


def model_config_dict(config: TrainConfig) -> dict[str, Any]:
    """config.json of the trained model (special token ids are filled in by the writer)."""
    h = config.hidden_size
    head_dim = max(16, h // 4)
    return {
        "architectures": ["Qwen3NextForCausalLM"],
        "model_type": "qwen3_next",
        "vocab_size": config.vocab_size,
        "hidden_size": h,
        "num_hidden_layers": config.num_layers,
        "layer_types": [
            "full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(config.num_layers)
        ],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": head_dim,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": head_dim,
        "linear_value_head_dim": head_dim,
        "linear_conv_kernel_dim": 4,
        "hidden_act": "silu",
        "intermediate_size": 2 * h,
        "num_experts": config.num_experts,
        "num_experts_per_tok": config.experts_per_token,
        "moe_intermediate_size": config.moe_intermediate_size or h,
        "shared_expert_intermediate_size": h,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "dtype": "float32",
        "mamba_ssm_dtype": "float32",
        "mtp_num_hidden_layers": 1,
        "use_cache": True,
    }


@dataclass(frozen=True, slots=True)
class TrainResult:
    path: Path
    losses: list[float]  # total loss per step
    seconds: float
    tokens_per_s: float


def cache_key(config: TrainConfig, corpus: Corpus) -> str:
    text = json.dumps(
        {
            "v": FORMAT_VERSION,
            "corpus": corpus.sha256,
            "train": asdict(config),
            "model": model_config_dict(config),
        },
        sort_keys=True,
    )
    return (
        f"qwen3_next-{config.steps}steps-{corpus.short_hash}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    )


def trained_checkpoint(config: TrainConfig | None = None, log=print, progress: bool = True) -> Path:
    """The cached trained checkpoint for `config` (trained and cached on first use)."""
    config = config or TrainConfig()
    corpus = load_corpus()
    final = cache_dir() / cache_key(config, corpus)
    if not build_once(
        final, lambda staging: train_model(staging, config, corpus=corpus, log=log, progress=progress)
    ):
        log(f"using the cached trained checkpoint {final} ({corpus.describe()})")
    return final


def train_model(
    out_dir: str | Path,
    config: TrainConfig | None = None,
    corpus: Corpus | None = None,
    log=print,
    progress: bool = True,
) -> TrainResult:
    """Train a model on the stdlib corpus and write its checkpoint into `out_dir`."""
    config = config or TrainConfig()
    corpus = corpus or load_corpus()
    log(corpus.describe())
    torch.manual_seed(config.seed)
    tokenizer = build_tokenizer(config.vocab_size, QWEN2_PRETOKENIZE_REGEX)
    eot = tokenizer.token_to_id(SPECIAL_TOKENS[0])
    train_ids = encode(tokenizer, corpus.train, eot)
    raw = model_config_dict(config)
    raw.update(eos_token_id=[tokenizer.token_to_id("<|im_end|>"), eot], pad_token_id=eot, bos_token_id=None)
    cfg = ModelConfig.from_json(raw)
    weights = {k: v.float().requires_grad_() for k, v in random_weights(cfg, config.seed).items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    started = time.perf_counter()
    try:
        history = fit(cfg, weights, train_ids, config, progress)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    tokens_per_s = config.steps * config.batch_size * config.seq_len / seconds
    log(
        f"trained {config.steps} steps in {seconds:.0f} s ({tokens_per_s:.0f} tokens/s); {len(train_ids)} train tokens"
    )
    trained = {k: v.detach() for k, v in weights.items()}
    out = write_trained_checkpoint(
        Path(out_dir),
        cfg,
        raw,
        trained,
        tokenizer,
        history,
        meta=_meta(config, corpus, len(train_ids), seconds),
    )
    return TrainResult(out, [h["loss"] for h in history], seconds, tokens_per_s)


def encode(tokenizer, texts: tuple[str, ...], separator: int) -> torch.Tensor:
    """One long id stream: every text's ids followed by the separator."""
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(list(texts)):
        ids.extend(encoding.ids)
        ids.append(separator)
    return torch.tensor(ids, dtype=torch.long)


def fit(
    cfg: ModelConfig, weights: dict, train_ids: torch.Tensor, config: TrainConfig, progress: bool
) -> list[dict]:
    params = list(weights.values())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    bar = tqdm(range(config.steps), desc="training", disable=not progress, mininterval=1.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, config)
        batch = sample_batch(train_ids, config.batch_size, config.seq_len, generator)
        parts = objective.losses(cfg, weights, batch, config.mtp_weight, config.second_step_weight)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        history.append(
            {
                "step": step,
                "loss": parts.total.item(),
                "main": parts.main,
                "mtp": parts.mtp,
                "mtp2": parts.mtp_second,
            }
        )
        bar.set_postfix(loss=f"{parts.main:.3f}", mtp=f"{parts.mtp:.3f}", refresh=False)
    return history


def lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def sample_batch(ids: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(len(ids) - seq_len, (batch,), generator=generator)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def _meta(config: TrainConfig, corpus: Corpus, train_tokens: int, seconds: float) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "corpus_sha256": corpus.sha256,
        "corpus_python": corpus.python,
        "corpus_files": len(corpus.files),
        "held_out_files": len(corpus.held_out),
        "train_tokens": train_tokens,
        "train_config": asdict(config),
        "train_seconds": seconds,
    }


def with_steps(config: TrainConfig, steps: int | None) -> TrainConfig:
    return config if steps is None else replace(config, steps=steps)
