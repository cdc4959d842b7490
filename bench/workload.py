"""A scaled multi-turn agentic workload, shared by every mode of `bench/agentic.py`.

Every session starts from one system prompt shared by all sessions plus a private context (a task
and some files), about `first_turn_tokens` in all. Each later turn appends what the model answered,
then ~`turn_tokens` of tool output (grep hits, JSON records, log lines, test results) and a short
user message, so turn k+1's prompt = turn k's prompt + its output + new text, in token ids. Text is
generated from a seed: the same config always gives the same prompts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from engine.tokenizer import Tokenizer

WORDS = (
    "request handler config cache worker router session token page slot state layer prefix block "
    "index metric retry timeout deadline stream batch queue schedule decode prefill transfer lease "
    "epoch manifest checksum shard replica drain health probe gateway client server tenant salt"
).split()
FILES = (
    "router/policy.py",
    "engine/scheduler.py",
    "kvtransfer/tcp.py",
    "worker/decode.py",
    "deploy/values.yaml",
)
USER_LINES = (
    "Fix the failing test and explain the root cause.",
    "Now check the other call sites for the same bug.",
    "Run the tests again and summarise what changed.",
    "Good. Can you make the retry path idempotent too?",
)


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    sessions: int = 4
    turns: int = 12
    system_tokens: int = 3000  # shared by every session
    first_turn_tokens: int = 4096  # system + private context
    turn_tokens: int = 200  # tool output + user message appended per turn
    output_tokens: int = 32  # what the model answers per turn
    seed: int = 0


@dataclass(slots=True)
class Session:
    index: int
    rng: random.Random
    prompts: list[list[int]] = field(default_factory=list)


class AgenticWorkload:
    def __init__(self, tokenizer: Tokenizer, config: WorkloadConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        rng = random.Random(config.seed)
        header = self._chat_piece("system", self._text(rng, config.system_tokens * 2))
        self.system_ids = header[: config.system_tokens]
        self.sessions = [
            Session(i, random.Random(config.seed * 1000 + i + 1)) for i in range(config.sessions)
        ]

    def first_prompt(self, session: Session) -> list[int]:
        private = self.config.first_turn_tokens - len(self.system_ids)
        body = self._chat_piece("user", f"[session {session.index}] " + self._text(session.rng, private * 2))
        prompt = self.system_ids + body[: max(private - 3, 1)] + self._assistant_header()
        session.prompts.append(prompt)
        return prompt

    def next_prompt(self, session: Session, previous_prompt: list[int], output_ids: list[int]) -> list[int]:
        """Turn k+1 = turn k's prompt + its output + tool output + user message."""
        tool = self._chat_piece("tool", self._tool_output(session.rng, self.config.turn_tokens - 20))
        user = self._chat_piece("user", session.rng.choice(USER_LINES))
        end = self.tokenizer.encode("<|im_end|>\n")
        prompt = previous_prompt + output_ids + end + tool + user + self._assistant_header()
        session.prompts.append(prompt)
        return prompt

    # ---- text ------------------------------------------------------------------------------
    def _chat_piece(self, role: str, text: str) -> list[int]:
        return self.tokenizer.encode(f"<|im_start|>{role}\n{text}<|im_end|>\n")

    def _assistant_header(self) -> list[int]:
        return self.tokenizer.encode("<|im_start|>assistant\n")

    def _text(self, rng: random.Random, approx_tokens: int) -> str:
        lines = []
        while sum(len(line) for line in lines) < approx_tokens * 3:
            lines.append(self._line(rng))
        return "\n".join(lines)

    def _tool_output(self, rng: random.Random, tokens: int) -> str:
        text, ids = "", []
        while len(ids) < tokens:
            text += self._line(rng) + "\n"
            ids = self.tokenizer.encode(text)
        return self.tokenizer.decode(ids[:tokens])

    @staticmethod
    def _line(rng: random.Random) -> str:
        kind = rng.randrange(4)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10)))
        if kind == 0:
            return f"{rng.choice(FILES)}:{rng.randint(1, 900)}:    def {rng.choice(WORDS)}_{rng.choice(WORDS)}(self, {rng.choice(WORDS)}):"
        if kind == 1:
            return f'{{"id": {rng.randint(1, 99999)}, "status": "{rng.choice(["ok", "error", "retry"])}", "detail": "{words}"}}'
        if kind == 2:
            return f"2025-06-{rng.randint(1, 28):02d}T12:{rng.randint(0, 59):02d}:00Z WARN {words}"
        return f"FAILED tests/test_{rng.choice(WORDS)}.py::test_{rng.choice(WORDS)} - AssertionError: {words}"
