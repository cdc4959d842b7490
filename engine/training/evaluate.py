"""How good a trained checkpoint is, measured through the engine (the serving path's forward):

- held-out loss (nats/token) beside a unigram model's (train-split counts, add-one smoothed) on
  the same held-out tokens;
- greedy continuations of held-out function headers: the fraction `ast.parse` accepts after
  trimming to complete lines;
- MTP first-draft acceptance, teacher-forced: on held-out text, the head's draft at p (from h[p]
  and token p+1) equals the model's own greedy prediction at p+1 — what greedy verification
  accepts; and the same on the model's own greedy generations (what serving sees).
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from engine.cache.tensors import CacheTensors
from engine.llm import LLM
from engine.loader import load_model
from engine.model_runner import ModelRunner, SeqChunk
from engine.models.mtp import MtpHead
from engine.sampling_params import SamplingParams
from engine.training.corpus import Corpus, load_corpus

WINDOW = 256
HEADER = re.compile(r"^[ \t]*def \w+\(.*\)( -> .+)?:[ \t]*$")


@dataclass(frozen=True, slots=True)
class Evaluation:
    held_out_loss: float
    unigram_loss: float
    held_out_tokens: int
    parse_rate: float
    num_headers: int
    examples: tuple[str, ...]  # two continuations that parse (header + trimmed body)
    mtp_accept_held_out: float  # first draft == the model's greedy next-next token, teacher-forced
    mtp_accept_generated: float
    mtp_accuracy_held_out: float  # first draft == the true next-next token

    def as_dict(self) -> dict:
        return asdict(self)

    def report(self) -> str:
        lines = [
            f"held-out loss {self.held_out_loss:.3f} nats/token vs unigram {self.unigram_loss:.3f} "
            f"({self.held_out_tokens} tokens)",
            f"greedy continuations of {self.num_headers} held-out function headers that parse: {self.parse_rate:.0%}",
            f"MTP first-draft acceptance: {self.mtp_accept_held_out:.1%} teacher-forced on held-out text "
            f"(true-token accuracy {self.mtp_accuracy_held_out:.1%}), {self.mtp_accept_generated:.1%} on "
            "the model's own greedy generations",
        ]
        for example in self.examples:
            lines += ["--- example continuation (parses) ---", example.rstrip()]
        return "\n".join(lines)


def evaluate(
    model_dir: str | Path, corpus: Corpus | None = None, max_tokens: int = 16384, num_headers: int = 24
) -> Evaluation:
    model_dir = Path(model_dir)
    corpus = corpus or load_corpus()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    held_out = _ids(tokenizer, corpus.held_out)[:max_tokens]
    _, model = load_model(model_dir)
    head = MtpHead.from_model(model)
    loss, accept, accuracy = _teacher_forced(model, head, held_out)
    headers = function_headers(corpus.held_out, num_headers)
    llm = LLM(model_dir, enable_prefix_cache=False, max_num_seqs=len(headers))
    outputs = llm.generate(headers, SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True))
    programs = [trim_to_lines(h, o.text) for h, o in zip(headers, outputs, strict=True)]
    parsed = [p for p in programs if parses(p)]
    generated = [o.prompt_token_ids + o.token_ids for o in outputs]
    starts = [len(o.prompt_token_ids) - 1 for o in outputs]  # drafts serving makes: after the prompt
    _, gen_accept, _ = _teacher_forced(model, head, windows=generated, draft_from=starts)
    return Evaluation(
        held_out_loss=loss,
        unigram_loss=unigram_loss(_ids(tokenizer, corpus.train), held_out, tokenizer.get_vocab_size()),
        held_out_tokens=len(held_out),
        parse_rate=len(parsed) / len(programs),
        num_headers=len(programs),
        examples=tuple(sorted(parsed, key=len, reverse=True)[:2]),
        mtp_accept_held_out=accept,
        mtp_accept_generated=gen_accept,
        mtp_accuracy_held_out=accuracy,
    )


def draft_acceptance(model_dir: str | Path, sequences: list[list[int]], draft_from: list[int]) -> float:
    """First-draft acceptance through the engine's forward and MTP head, teacher-forced over
    `sequences`, counting drafts from row `draft_from[i]` of sequence i."""
    _, model = load_model(Path(model_dir))
    head = MtpHead.from_model(model)
    if head is None:
        raise ValueError(f"{model_dir} has no MTP head")
    return _teacher_forced(model, head, windows=sequences, draft_from=draft_from)[1]


def held_out_prompts(model_dir: str | Path, count: int, length: int) -> list[list[int]]:
    """`count` token-id prompts of `length` tokens of held-out source, evenly spaced."""
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    ids = _ids(tokenizer, load_corpus().held_out).tolist()
    step = max(length, len(ids) // (count + 1))
    return [ids[i * step : i * step + length] for i in range(count)]


def function_headers(texts: tuple[str, ...], count: int) -> list[str]:
    """`count` single-line `def` headers spread evenly over the texts, each with its newline."""
    found = [line + "\n" for text in texts for line in text.splitlines() if HEADER.match(line)]
    if not found:
        raise ValueError("no function headers in the held-out texts")
    step = max(1, len(found) // count)
    return found[::step][:count]


def trim_to_lines(header: str, continuation: str) -> str:
    """Header + the continuation's complete lines (up to its last newline)."""
    return header + continuation[: continuation.rfind("\n") + 1]


def parses(program: str) -> bool:
    try:
        ast.parse(textwrap.dedent(program))
    except (SyntaxError, ValueError):
        return False
    return True


def unigram_loss(train_ids: torch.Tensor, held_out: torch.Tensor, vocab: int) -> float:
    counts = Counter(train_ids.tolist())
    total = len(train_ids) + vocab
    targets = held_out[1:].tolist()
    return -sum(math.log((counts[t] + 1) / total) for t in targets) / len(targets)


@torch.inference_mode()
def _teacher_forced(
    model,
    head: MtpHead | None,
    ids: torch.Tensor | None = None,
    windows: list[list[int]] | None = None,
    draft_from: list[int] | None = None,
):
    """(mean next-token loss, MTP acceptance, MTP true-token accuracy) over `windows` (default:
    `ids` cut into WINDOW-token pieces); drafts count from row `draft_from[i]` of window i."""
    windows = windows or [ids[i : i + WINDOW].tolist() for i in range(0, len(ids) - 2, WINDOW)]
    draft_from = draft_from or [0] * len(windows)
    nll, count, accepted, correct, drafted = 0.0, 0, 0, 0, 0
    for tokens, first in zip(windows, draft_from, strict=True):
        if len(tokens) < 3:
            continue
        pages = -(-len(tokens) // 16)
        runner = ModelRunner(model, CacheTensors.allocate(model.config, pages, 1, 16, model.dtype))
        hidden, _ = runner.forward_hidden([SeqChunk(tokens, 0, list(range(pages)), 0)])
        logits = (hidden @ model.lm_head_t).float()
        target = torch.tensor(tokens)
        nll += float(torch.nn.functional.cross_entropy(logits[:-1], target[1:], reduction="sum"))
        count += len(tokens) - 1
        if head is None:
            continue
        n = len(tokens) - 2
        out = head.forward(hidden[:n], target[1 : n + 1], torch.arange(n), [(None, 0, n)])
        drafts = head.logits(out).argmax(-1)[first:]
        accepted += int((drafts == logits[1 + first : n + 1].argmax(-1)).sum())
        correct += int((drafts == target[2 + first :]).sum())
        drafted += n - first
    return nll / count, accepted / max(drafted, 1), correct / max(drafted, 1)


def _ids(tokenizer: Tokenizer, texts: tuple[str, ...]) -> torch.Tensor:
    eot = tokenizer.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(list(texts)):
        ids.extend(encoding.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)
