"""Fine-tune a trained checkpoint's MTP head alone by distilling the main model (self-distillation).

Speculation accepts a draft when it equals the *main model's* choice, not the true next token, so
after the joint training (`train_model`) the head is trained further on what serving rewards: the
main model is frozen, and on training text the head's distribution for token p+2 (from h[p] and
token p+1) is pulled towards the main model's own distribution at p+1 (soft cross-entropy), and
likewise for the second step (its output fed back, towards the main model at p+2). Only `mtp.*`
tensors change; the checkpoint is rewritten in place, each run appended to `training.json`
(`mtp_distill`). `python -m engine.training.distill_mtp --model DIR --steps N`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tqdm import tqdm

from engine.checkpoint_writer import write_safetensors_shards
from engine.model_config import ModelConfig
from engine.models.checkpoint_format import canonicalize, to_hf
from engine.models.mtp import PREFIX, mtp_canonical
from engine.training import objective, trainable
from engine.training.checkpoint import TRAINING_FILE
from engine.training.corpus import load_corpus
from engine.training.self_distill_data import SelfGenConfig, generate_sequences
from engine.training.train_model import TRAIN_THREADS, encode, sample_batch


@dataclass(frozen=True, slots=True)
class DistillConfig:
    steps: int = 150
    batch_size: int = 4
    seq_len: int = 256
    lr: float = 1e-3
    second_step_weight: float = 0.5
    seed: int = 1
    # On-policy data (engine/training/self_distill_data.py): distill on the main model's own greedy
    # continuations of train-split prompts; `corpus_share` of the steps still read corpus text.
    self_generated: SelfGenConfig | None = None
    corpus_share: float = 0.0
    hard_targets: bool = False  # cross-entropy against the main model's argmax instead of its distribution


def load_canonical(model_dir: Path) -> tuple[ModelConfig, dict, dict[str, torch.Tensor]]:
    """(config, raw config.json, canonical fp32 weights incl. `mtp.*`) of a single-file checkpoint."""
    raw = json.loads((model_dir / "config.json").read_text())
    cfg = ModelConfig.from_json(raw)
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    main = {
        k.removeprefix(cfg.weight_prefix): v.float() for k, v in tensors.items() if not k.startswith(PREFIX)
    }
    mtp = mtp_canonical(cfg, {k: v.float() for k, v in tensors.items() if k.startswith(PREFIX)}) or {}
    return cfg, raw, {**canonicalize(cfg, main), **{PREFIX + k: v for k, v in mtp.items()}}


def distill_losses(
    cfg: ModelConfig,
    weights: dict[str, torch.Tensor],
    token_ids: torch.Tensor,
    second_step_weight: float,
    from_row: int = 0,
    hard: bool = False,
) -> tuple[torch.Tensor, float, float]:
    """(loss, first-step CE, second-step CE) over draft rows `from_row`.. (row p drafts from h[p]
    and token p+1); the main model runs without gradients. Soft CE against the main model's
    distribution, or with `hard` against its argmax."""
    with torch.no_grad():
        hidden = trainable.hidden_states(cfg, weights, token_ids)
        head_w = trainable.lm_head(cfg, weights)
        teacher = F.linear(hidden, head_w).float()  # row p: the main model's view of token p+1
        teacher = F.one_hot(teacher.argmax(-1), teacher.shape[-1]).float() if hard else teacher.softmax(-1)
    head = objective.mtp_head(cfg, weights)
    out, _ = objective.mtp_outputs(head, hidden, token_ids, 0)  # row p predicts token p+2
    first = _soft_ce(F.linear(out, head_w)[:, from_row:], teacher[:, 1 + from_row : 1 + out.shape[1]])
    loss, second = first, torch.zeros(())
    if second_step_weight > 0:
        out2, _ = objective.mtp_outputs(head, out, token_ids, 1)  # row p predicts token p+3
        second = _soft_ce(F.linear(out2, head_w)[:, from_row:], teacher[:, 2 + from_row : 2 + out2.shape[1]])
        loss = loss + second_step_weight * second
    return loss, first.item(), second.item()


def _soft_ce(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    return -(target_probs * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class _Batches:
    """Training batches: corpus windows, or rows of self-generated sequences (mixed by `corpus_share`)."""

    def __init__(self, model_dir: Path, config: DistillConfig, tokenizer: Tokenizer) -> None:
        corpus = load_corpus()
        self.config, self.generator = config, torch.Generator().manual_seed(config.seed)
        self.train_ids = encode(tokenizer, corpus.train, tokenizer.token_to_id("<|endoftext|>"))
        gen = config.self_generated
        self.sequences = generate_sequences(model_dir, gen, corpus) if gen else None
        self.from_row = gen.prompt_tokens - 1 if gen else 0  # serving drafts from the last prompt row on

    def next(self) -> tuple[torch.Tensor, int]:
        """(token ids [B, T], first draft row)."""
        c = self.config
        use_corpus = self.sequences is None or torch.rand((), generator=self.generator) < c.corpus_share
        if use_corpus:
            return sample_batch(self.train_ids, c.batch_size, c.seq_len, self.generator), 0
        rows = torch.randint(len(self.sequences), (c.batch_size,), generator=self.generator)
        return self.sequences[rows], self.from_row


def distill(model_dir: Path, config: DistillConfig, progress: bool = True, log=print) -> dict:
    cfg, _, weights = load_canonical(model_dir)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    mtp = [v.requires_grad_() for k, v in weights.items() if k.startswith(PREFIX)]
    if not mtp:
        raise SystemExit(f"{model_dir} has no MTP head to distill")
    optimizer = torch.optim.AdamW(mtp, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    started = time.perf_counter()
    if gen := config.self_generated:
        log(f"generating {gen.prompts} greedy continuations of {gen.new_tokens} tokens to distill on")
    batches = _Batches(model_dir, config, tokenizer)  # self-generated data first, with the frozen model
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    history = []
    try:
        bar = tqdm(range(config.steps), desc="distilling MTP", disable=not progress, mininterval=1.0)
        for step in bar:
            for group in optimizer.param_groups:  # linear decay to 10%
                group["lr"] = config.lr * (1 - 0.9 * step / max(config.steps - 1, 1))
            batch, from_row = batches.next()
            loss, first, second = distill_losses(
                cfg, weights, batch, config.second_step_weight, from_row, config.hard_targets
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(mtp, 1.0)
            optimizer.step()
            history.append({"step": step, "mtp_soft_ce": first, "mtp2_soft_ce": second})
            bar.set_postfix(ce=f"{first:.3f}", ce2=f"{second:.3f}", refresh=False)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    log(f"distilled the MTP head for {config.steps} steps in {seconds:.0f} s")
    _rewrite(model_dir, cfg, weights, {**asdict(config), "seconds": seconds, "history": history})
    return {"seconds": seconds, "history": history}


def _rewrite(model_dir: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor], record: dict) -> None:
    tensors = {k: v.detach().to(cfg.dtype).contiguous() for k, v in weights.items()}
    for old in model_dir.glob("*.safetensors"):
        old.unlink()
    write_safetensors_shards(to_hf(cfg, tensors), model_dir, 64 * 1024 * 1024)
    path = model_dir / TRAINING_FILE
    training = json.loads(path.read_text()) if path.is_file() else {}
    training["mtp_distill"] = [*training.get("mtp_distill", []), record]  # one entry per run
    path.write_text(json.dumps(training, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = DistillConfig()
    parser.add_argument("--model", type=Path, required=True, help="checkpoint dir, rewritten in place")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--second-step-weight", type=float, default=defaults.second_step_weight)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--self-generated", type=int, default=0, metavar="N",
        help="distill on the model's greedy continuations of N train-split prompts (0: corpus text)",
    )  # fmt: skip
    parser.add_argument("--new-tokens", type=int, default=SelfGenConfig().new_tokens)
    parser.add_argument("--corpus-share", type=float, default=defaults.corpus_share)
    parser.add_argument("--hard-targets", action="store_true")
    args = parser.parse_args(argv)
    gen = (
        SelfGenConfig(prompts=args.self_generated, new_tokens=args.new_tokens)
        if args.self_generated
        else None
    )
    config = DistillConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        second_step_weight=args.second_step_weight,
        seed=args.seed,
        self_generated=gen,
        corpus_share=args.corpus_share,
        hard_targets=args.hard_targets,
    )
    distill(args.model, config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
