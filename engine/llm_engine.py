"""`LLMEngine`: token ids in, token ids out, one `step()` at a time.

Life of a request: `add_request` validates it and queues a `Sequence` (WAITING). Each `step()` the
scheduler picks chunks (prefill pieces and decodes), the model runner computes them in one forward,
sequences whose chunk reached their last token sample the next one, and finished sequences give
back their pages and slot (into the prefix cache first, when it is on). Disaggregation hooks: a
`prefill_only` request stops after its first token and stays PINNED (pages + slot) until
`release`; `reserve` + `commit_reservation` let a sequence whose KV and state were written from
outside join the running batch. The engine takes no locks: one thread owns it and makes every call
(in a worker that thread is `worker/engine_loop.py::EngineLoop`; offline, the caller's).

A step is launched (forward + sampling queued on the device), its token ids come back in one copy
(`TokenReadback`), and with overlap scheduling (default on cuda) the next step is planned between
the two (`engine/overlap.py`). On cuda, pure decode and verify steps replay CUDA graphs
(`engine/cuda_graphs.py`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from engine.engine_build import build_engine
from engine.engine_config import EngineConfig
from engine.finisher import Finisher
from engine.metrics import EngineMetrics
from engine.model_runner import SeqChunk
from engine.overlap import LaunchedStep, StepTrace, drop_expectations, plan_ahead, still_runnable
from engine.parallel.comm import Comm
from engine.parallel.step_sync import call_followers, send_stop, watch_key
from engine.sampler import Sampler, SampleRequest, compute_logprobs, make_generator
from engine.sampling_params import SamplingParams
from engine.scheduled_chunk import ScheduledChunk
from engine.scheduler import Scheduler
from engine.sequence import PrefillResult, RequestOutput, Reservation, Sequence, Status
from engine.speculative import setup as spec_setup
from engine.token_readback import TokenReadback
from engine.tokenizer import IncrementalDecoder

LayerCallback = Callable[[int, int, int], None]


class LLMEngine:
    def __init__(
        self,
        model_dir: str | Path,
        config: EngineConfig | None = None,
        *,
        on_kv_event: Callable[[object], None] | None = None,
        model_id: str | None = None,
        comm: Comm | None = None,
    ) -> None:
        """With `config.tp`/`config.ep` > 1 this is rank 0 of the worker (`comm`): it schedules
        and broadcasts each step to the follower ranks (`engine/parallel/ranks.py`). The model,
        cache, runner and memory managers are built by `engine/engine_build.py`."""
        parts = build_engine(
            model_dir, config or EngineConfig(), on_kv_event=on_kv_event, model_id=model_id, comm=comm
        )
        self.config = config = parts.config  # with the cache budget resolved
        self.comm, self.model_dir, self.model_id = parts.comm, parts.model_dir, parts.model_id
        self.model_config, self.model = parts.model_config, parts.model
        self.tokenizer, self.eos_token_ids = parts.tokenizer, parts.eos_token_ids
        self.max_model_len = parts.max_model_len
        self.cache, self.runner = parts.cache, parts.runner
        self.memory, self.prefix_cache = parts.memory, parts.prefix_cache
        self.scheduler = Scheduler(config, self.memory, self.prefix_cache)
        self.sampler = Sampler(config.seed)
        self.metrics_state = EngineMetrics()
        self.finisher = Finisher(self.eos_token_ids, self.max_model_len)
        self.sequences: dict[str, Sequence] = {}
        self._pending: list[RequestOutput] = []  # outputs produced outside step() (abort, commit)
        self._arrivals = 0
        self.logits_observer: Callable[[str, torch.Tensor], None] | None = None  # tests: per sampled row
        # Speculative decoding (engine/speculative): when the checkpoint has a head and slots were spared.
        self.spec = spec_setup.decoder(self, parts.spec_head) if parts.spec_head is not None else None
        self.readback = TokenReadback(config.device)
        self.overlap = parts.overlap  # overlap scheduling (engine/overlap.py)
        self._plan: list[ScheduledChunk] | None = None  # step N+1, planned while step N ran
        self.step_trace: StepTrace | None = None  # tests: ("schedule" | "launch" | "read", step)

    def stop_followers(self) -> None:
        """Tell the follower ranks to leave their step loop (tp/ep > 1; a no-op otherwise)."""
        if self.comm.active:
            send_stop(self.comm)

    def call_followers(self, payload: bytes) -> list[bytes]:
        """Opaque bytes to the follower ranks' call handler, and their replies in rank order
        (`engine/parallel/step_sync.py`). On the engine's thread, between steps; [] with one rank."""
        if not self.comm.active or self.comm.world_size == 1:
            return []
        return call_followers(self.comm, payload)

    # ---- requests ----------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        *,
        prefill_only: bool = False,
        cache_salt: str = "",
        layer_callback: LayerCallback | None = None,
    ) -> None:
        seq = self._new_sequence(request_id, prompt_token_ids, params, prefill_only, cache_salt)
        seq.layer_callback = layer_callback
        self.sequences[request_id] = seq
        self.scheduler.add(seq)

    def _new_sequence(
        self, request_id: str, prompt: list[int], params: SamplingParams | None, prefill_only: bool, salt: str
    ) -> Sequence:
        params = (params or SamplingParams()).validate(self.model_config.vocab_size)
        if request_id in self.sequences:
            raise ValueError(f"request id {request_id!r} is already in use")
        prompt = list(prompt)
        if not prompt:
            raise ValueError("the prompt is empty")
        vocab = self.model_config.vocab_size
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in prompt):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        if len(prompt) >= self.max_model_len:
            raise ValueError(
                f"prompt of {len(prompt)} tokens does not fit max_model_len={self.max_model_len}"
            )
        if self.memory.pages.num_total < -(-len(prompt) // self.config.block_size) + 1:
            raise ValueError(f"prompt of {len(prompt)} tokens is larger than the whole KV cache")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer.json next to the model")
        self._arrivals += 1
        return Sequence(
            request_id=request_id,
            prompt_token_ids=prompt,
            params=params,
            arrival=self._arrivals,
            prefill_only=prefill_only,
            cache_salt=salt,
            generator=make_generator(params.seed) if params.seed is not None else None,
            detokenizer=IncrementalDecoder(self.tokenizer) if params.stop else None,
        )

    def abort(self, request_id: str) -> bool:
        seq = self.sequences.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.remove(seq)
        self.memory.free(seq)
        seq.status = Status.FINISHED
        self._pending.append(self._output(seq, [], finished=True, reason="abort"))
        return True

    def page_ids(self, request_id: str) -> list[int]:
        """The KV pages the request holds now, in block order (its block table)."""
        return list(self.sequences[request_id].block_table)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work() or bool(self._pending)

    # ---- disaggregation hooks ---------------------------------------------------------------
    def release(self, request_id: str) -> bool:
        """Free a PINNED prefill result or a RESERVED reservation (or abort anything else)."""
        seq = self.sequences.get(request_id)
        if seq is None:
            return False
        if seq.status in (Status.PINNED, Status.RESERVED):
            del self.sequences[request_id]
            self.memory.free(seq)
            seq.status = Status.FINISHED
            return True
        return self.abort(request_id)

    def reserve(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        cache_salt: str = "",
    ) -> Reservation:
        """Pages for the whole prompt + a live slot, to be filled from outside. Raises
        OutOfPages / OutOfSlots when the engine is full (nothing is held then)."""
        seq = self._new_sequence(request_id, prompt_token_ids, params, False, cache_salt)
        cached = self.prefix_cache.share_blocks(seq) if self.prefix_cache is not None else 0
        try:
            seq.state_slot = self.memory.live_slots.allocate()
            seq.block_table.extend(
                self.memory.allocate_pages(
                    -(-seq.num_prompt_tokens // self.config.block_size) - len(seq.block_table)
                )
            )
        except Exception:
            self.memory.free(seq)
            raise
        seq.status = Status.RESERVED
        seq.num_cached_tokens = cached * self.config.block_size
        self.sequences[request_id] = seq
        return Reservation(list(seq.block_table), seq.state_slot, cached)

    def commit_reservation(self, request_id: str, first_token: int) -> None:
        """The reservation's pages and slot now hold the prompt's KV and state: decode from here."""
        seq = self.sequences.get(request_id)
        if seq is None or seq.status is not Status.RESERVED:
            raise KeyError(f"no reservation {request_id!r}")
        if not 0 <= first_token < self.model_config.vocab_size:
            raise ValueError(f"first_token {first_token} is not a token id of this model")
        seq.num_computed_tokens = seq.num_prompt_tokens
        seq.admitted = True
        self.metrics_state.count_admission(seq)
        self.scheduler.add_running(seq)
        self.append_token(seq, first_token, None, announce=False)

    # ---- one step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs, self._pending = self._pending, []
        chunks = self._next_chunks()
        if not chunks:
            return outputs
        self._count_admissions(chunks)
        if self.spec is not None:  # speculative decoding: its own forward + acceptance (engine/speculative)
            outputs.extend(self.spec.step(chunks))
        else:
            outputs.extend(self._run(chunks))
        outputs.extend(self._pending)
        self._pending = []
        self.metrics_state.steps += 1
        return outputs

    def _next_chunks(self) -> list[ScheduledChunk]:
        """The plan made while the last step ran (what is still runnable of it), else a fresh one."""
        plan, self._plan = self._plan, None
        if plan is not None:
            plan = still_runnable(plan)
            if plan:
                return plan
        self._trace("schedule", self.metrics_state.steps)
        return self.scheduler.schedule()

    def _count_admissions(self, chunks: list[ScheduledChunk]) -> None:
        for chunk in chunks:
            if not chunk.seq.admitted:
                chunk.seq.admitted = True
                self.metrics_state.count_admission(chunk.seq)

    def _run(self, chunks: list[ScheduledChunk]) -> list[RequestOutput]:
        """Launch the step; with overlap, plan the next one while the device runs it; then read."""
        launched = self._launch(chunks)
        if self.overlap:
            self._trace("schedule", launched.index + 1)
            self._plan = plan_ahead(self.scheduler, launched, self.max_model_len)
        return self._complete(launched)

    def _launch(self, chunks: list[ScheduledChunk]) -> LaunchedStep:
        """Queue the forward and the sampling of one step; nothing is read back yet."""
        self._trace("launch", self.metrics_state.steps)
        logits = self._forward(chunks)
        for chunk in chunks:
            chunk.seq.num_computed_tokens = chunk.end
        if self.prefix_cache is not None:
            self.prefix_cache.after_step(chunks)
        return self._start_sampling(chunks, logits)

    def _trace(self, event: str, step: int) -> None:
        if self.step_trace is not None:
            self.step_trace(event, step)

    def _forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        seq_chunks = [
            SeqChunk(
                c.seq.token_slice(c.start, c.end), c.start, list(c.seq.block_table), c.seq.state_slot,
                watch_key=self._watch_key(c.seq),
            )  # fmt: skip
            for c in chunks
        ]
        watchers = [c for c in chunks if c.seq.layer_callback is not None]

        def on_layer(layer_index: int) -> None:
            for c in watchers:
                c.seq.layer_callback(layer_index, c.start, c.end)

        with torch.inference_mode():
            return self.runner.forward(seq_chunks, layer_callback=on_layer if watchers else None)

    def _watch_key(self, seq: Sequence) -> int:
        """Follower ranks call their layer hook for a sequence watched here (-1: not watched)."""
        if seq.layer_callback is None or self.comm.world_size == 1:
            return -1
        return watch_key(seq.request_id)

    def sample(self, chunks: list[ScheduledChunk], logits: torch.Tensor) -> list[RequestOutput]:
        """Choose, read back and append the next token of every chunk that samples (one row of
        `logits` per chunk)."""
        return self._complete(self._start_sampling(chunks, logits))

    def _start_sampling(self, chunks: list[ScheduledChunk], logits: torch.Tensor) -> LaunchedStep:
        rows = [i for i, c in enumerate(chunks) if c.samples]
        seqs = [chunks[i].seq for i in rows]
        if len(rows) != len(chunks):
            logits = logits[rows] if rows else logits[:0]
        if self.logits_observer is not None:
            for seq, row in zip(seqs, logits, strict=True):
                self.logits_observer(seq.request_id, row)
        requests = [
            SampleRequest(s.params, s.prompt_token_ids, s.output_token_ids, s.generator) for s in seqs
        ]
        token_ids = self.sampler.choose(logits, requests) if seqs else torch.empty(0, dtype=torch.long)
        pending = self.readback.start(token_ids)  # the one copy to the host of this step
        return LaunchedStep(self.metrics_state.steps, seqs, requests, logits, pending)

    def _complete(self, launched: LaunchedStep) -> list[RequestOutput]:
        """Read the step's tokens, append them, finish whom they finish."""
        if not launched.seqs:
            return []
        self._trace("read", launched.index)
        chosen = launched.tokens.read()
        drop_expectations(launched)
        logprobs = compute_logprobs(launched.logits, chosen, launched.requests)
        outputs = [
            self.append_token(seq, token, logprob)
            for seq, token, logprob in zip(launched.seqs, chosen, logprobs, strict=True)
        ]
        if self._plan is not None:
            self._plan = still_runnable(self._plan)
        return outputs

    def append_token(self, seq: Sequence, token: int, logprob, announce: bool = True) -> RequestOutput:
        """Append one chosen token to a running sequence and finish it if that token ends it
        (speculative decoding appends its accepted tokens through here too)."""
        seq.output_token_ids.append(token)
        self.metrics_state.generated_tokens += 1
        reason = self.finisher.check(seq, token)
        if seq.prefill_only and reason is None:
            reason = "length"
        if reason is not None:
            self._finish(seq, reason)
        output = self._output(seq, [token] if announce else [], reason is not None, reason, logprob)
        if not announce and reason is not None:
            self._pending.append(output)
        return output

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self.scheduler.remove(seq)
        if seq.prefill_only:
            seq.prefill = self._pin(seq)
            return
        if self.prefix_cache is not None and seq.status is Status.RUNNING:
            self.prefix_cache.cache_finished(seq)  # (not when overlap planning preempted it)
        self.memory.free(seq)
        seq.status = Status.FINISHED
        self.sequences.pop(seq.request_id, None)

    def _pin(self, seq: Sequence) -> PrefillResult:
        seq.status = Status.PINNED
        num_tokens = seq.num_prompt_tokens
        pages = seq.block_table[: -(-num_tokens // self.config.block_size)]
        return PrefillResult(list(pages), seq.state_slot, seq.output_token_ids[0], num_tokens)

    def _output(
        self, seq: Sequence, tokens: list[int], finished: bool, reason: str | None, logprob=None
    ) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=tokens,
            finished=finished,
            finish_reason=reason,
            logprobs=[logprob] if logprob is not None else None,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            prefill=seq.prefill if finished else None,
            stop_reason=seq.stop_reason,
        )

    # ---- observability ----------------------------------------------------------------------
    def metrics(self) -> dict:
        return self.metrics_state.snapshot(self)
