"""On-policy data for MTP distillation: the main model's own greedy continuations.

Serving verifies drafts against the main model's greedy choices on text the model is writing
itself, not on corpus text, and the two differ (the bench model's head agreed 50% teacher-forced
on held-out corpus text but 63% on its own generations). As EAGLE / Medusa-2 train their draft
heads, the head is distilled on sequences the target model generated: prompts are windows of the
corpus *train* split only (evaluation prompts are held out), continued greedily through Baton's
own engine (batched, no speculation). Each sequence is prompt + continuation; drafts count from
the last prompt row on, as serving drafts after prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from engine.llm import LLM
from engine.sampling_params import SamplingParams
from engine.training.corpus import Corpus
from engine.training.train_model import TRAIN_THREADS, encode


@dataclass(frozen=True, slots=True)
class SelfGenConfig:
    prompts: int = 256
    prompt_tokens: int = 48
    new_tokens: int = 192
    batch: int = 64  # sequences decoded together
    seed: int = 2

    @property
    def length(self) -> int:
        return self.prompt_tokens + self.new_tokens


def train_prompts(
    tokenizer: Tokenizer, corpus: Corpus, count: int, length: int, seed: int
) -> list[list[int]]:
    """`count` random windows of `length` token ids from the corpus train split (never held out)."""
    ids = encode(tokenizer, corpus.train, tokenizer.token_to_id("<|endoftext|>"))
    if len(ids) <= length:
        raise ValueError(f"the train split has {len(ids)} tokens, too few for {length}-token prompts")
    starts = torch.randint(len(ids) - length, (count,), generator=torch.Generator().manual_seed(seed))
    return [ids[s : s + length].tolist() for s in starts.tolist()]


def generate_sequences(model_dir: Path, config: SelfGenConfig, corpus: Corpus) -> torch.Tensor:
    """[prompts, prompt_tokens + new_tokens] ids: each train prompt and its greedy continuation."""
    if config.prompts < 1 or config.prompt_tokens < 1 or config.new_tokens < 2:
        raise ValueError(f"need at least 1 prompt of 1 token and 2 new tokens: {config}")
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    prompts = train_prompts(tokenizer, corpus, config.prompts, config.prompt_tokens, config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        llm = LLM(model_dir, enable_prefix_cache=False, max_num_seqs=config.batch)
        params = SamplingParams(temperature=0.0, max_tokens=config.new_tokens, ignore_eos=True)
        outputs = llm.generate(prompts, params)
    finally:
        torch.set_num_threads(threads)
    return torch.tensor([o.prompt_token_ids + o.token_ids for o in outputs], dtype=torch.long)
