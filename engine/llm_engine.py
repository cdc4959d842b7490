"""`LLMEngine`: token ids in, token ids out, one `step()` at a time.

Life of a request: `add_request` validates it and queues a `Sequence` (WAITING). Each `step()` the
scheduler picks chunks (prefill pieces and decodes), the model runner computes them in one forward,
sequences whose chunk reached their last token sample the next one, and finished sequences give
back their pages and slot (into the prefix cache first, when it is on). Disaggregation hooks: a
`prefill_only` request stops after its first token and stays PINNED (pages + slot) until
`release`; `reserve` + `commit_reservation` let a sequence whose KV and state were written from
outside join the running batch. Every public method takes one lock, so gRPC threads may call
add_request/abort/reserve/release while another thread runs step()."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from engine.block_manager import BlockManager
from engine.cache.page_pool import PagePool
from engine.cache.prefix_cache import PrefixCache
from engine.cache.state_pool import StatePool
from engine.cache.tensors import CacheTensors
from engine.engine_config import EngineConfig
from engine.finisher import Finisher
from engine.gpu_budget import resolve_cache_budget
from engine.loader import load_model
from engine.metrics import EngineMetrics
from engine.model_config import ModelConfig, parse_dtype
from engine.model_runner import ModelRunner, SeqChunk
from engine.sampler import Sampler, SampleRequest, make_generator
from engine.sampling_params import SamplingParams
from engine.scheduled_chunk import ScheduledChunk
from engine.scheduler import Scheduler
from engine.sequence import PrefillResult, RequestOutput, Reservation, Sequence, Status
from engine.speculative import setup as spec_setup
from engine.tokenizer import IncrementalDecoder, Tokenizer

LayerCallback = Callable[[int, int, int], None]


class LLMEngine:
    def __init__(
        self,
        model_dir: str | Path,
        config: EngineConfig | None = None,
        *,
        on_kv_event: Callable[[object], None] | None = None,
        model_id: str | None = None,
    ) -> None:
        self.config = config = config or EngineConfig()
        self.model_dir = Path(model_dir)
        dtype = parse_dtype(config.dtype) if config.dtype else None
        self.model_config, self.model = load_model(self.model_dir, dtype=dtype, device=config.device)
        self.config = config = resolve_cache_budget(config, self.model_config)  # --gpu-memory-utilization
        self.tokenizer = (
            Tokenizer.from_dir(model_dir) if (self.model_dir / "tokenizer.json").is_file() else None
        )
        self.eos_token_ids = frozenset(_generation_eos(self.model_dir, self.model_config))
        self.max_model_len = config.max_model_len or self.model_config.max_position_embeddings
        num_pages, live, checkpoints = _pool_sizes(self.model_config, config, self._cache_dtype())
        spec_head = spec_setup.load_head(self.model, config)
        spares = spec_setup.spare_slots(spec_head, config, live)  # 0 without speculation
        self.cache = CacheTensors.allocate(
            self.model_config,
            num_pages,
            live + checkpoints + spares,
            config.block_size,
            self._cache_dtype(),
            config.device,
        )
        self.runner = ModelRunner(self.model, self.cache)
        pages = PagePool(num_pages)
        self.prefix_cache: PrefixCache | None = None
        if config.enable_prefix_cache:
            self.prefix_cache = PrefixCache(
                self.cache,
                pages,
                list(range(live, live + checkpoints)),
                config,
                has_state=self.model_config.num_linear_layers > 0,
                model_id=model_id or self.model_dir.name,
                on_kv_event=on_kv_event,
            )
        live_pool = spec_setup.live_pool(live, live + checkpoints, spares) if spares else StatePool(range(live))
        self.memory = BlockManager(self.cache, pages, live_pool, self.prefix_cache)
        self.scheduler = Scheduler(config, self.memory, self.prefix_cache)
        self.sampler = Sampler(config.seed)
        self.metrics_state = EngineMetrics()
        self.finisher = Finisher(self.eos_token_ids, self.max_model_len)
        self.sequences: dict[str, Sequence] = {}
        self._pending: list[RequestOutput] = []  # outputs produced outside step() (abort, commit)
        self._arrivals = 0
        self._lock = threading.RLock()
        self.logits_observer: Callable[[str, torch.Tensor], None] | None = None  # tests: per sampled row
        self.spec = spec_setup.decoder(self, spec_head) if spares else None  # speculative decoding

    def _cache_dtype(self) -> torch.dtype:
        return parse_dtype(self.config.dtype, self.model_config.dtype)

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
        with self._lock:
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
        if self.cache.num_pages < -(-len(prompt) // self.config.block_size) + 1:
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
        with self._lock:
            seq = self.sequences.pop(request_id, None)
            if seq is None:
                return False
            self.scheduler.remove(seq)
            self.memory.free(seq)
            seq.status = Status.FINISHED
            self._pending.append(self._output(seq, [], finished=True, reason="abort"))
            return True

    def has_unfinished_requests(self) -> bool:
        with self._lock:
            return self.scheduler.has_work() or bool(self._pending)

    # ---- disaggregation hooks ---------------------------------------------------------------
    def release(self, request_id: str) -> bool:
        """Free a PINNED prefill result or a RESERVED reservation (or abort anything else)."""
        with self._lock:
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
        with self._lock:
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
        with self._lock:
            seq = self.sequences.get(request_id)
            if seq is None or seq.status is not Status.RESERVED:
                raise KeyError(f"no reservation {request_id!r}")
            if not 0 <= first_token < self.model_config.vocab_size:
                raise ValueError(f"first_token {first_token} is not a token id of this model")
            seq.num_computed_tokens = seq.num_prompt_tokens
            seq.admitted = True
            self.metrics_state.count_admission(seq)
            self.scheduler.add_running(seq)
            self._append_token(seq, first_token, None, announce=False)

    # ---- one step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        with self._lock:
            outputs, self._pending = self._pending, []
            chunks = self.scheduler.schedule()
            if not chunks:
                return outputs
            for chunk in chunks:
                if not chunk.seq.admitted:
                    chunk.seq.admitted = True
                    self.metrics_state.count_admission(chunk.seq)
            if self.spec is not None:  # speculative decoding: its own forward + acceptance (engine/speculative)
                outputs.extend(self.spec.step(chunks))
            else:
                logits = self._forward(chunks)
                for chunk in chunks:
                    chunk.seq.num_computed_tokens = chunk.end
                if self.prefix_cache is not None:
                    self.prefix_cache.after_step(chunks)
                outputs.extend(self._sample(chunks, logits))
            outputs.extend(self._pending)
            self._pending = []
            self.metrics_state.steps += 1
            return outputs

    def _forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        seq_chunks = [
            SeqChunk(c.seq.token_slice(c.start, c.end), c.start, list(c.seq.block_table), c.seq.state_slot)
            for c in chunks
        ]
        watchers = [c for c in chunks if c.seq.layer_callback is not None]

        def on_layer(layer_index: int) -> None:
            for c in watchers:
                c.seq.layer_callback(layer_index, c.start, c.end)

        with torch.inference_mode():
            return self.runner.forward(seq_chunks, layer_callback=on_layer if watchers else None)

    def _sample(self, chunks: list[ScheduledChunk], logits: torch.Tensor) -> list[RequestOutput]:
        rows = [i for i, c in enumerate(chunks) if c.samples]
        if not rows:
            return []
        seqs = [chunks[i].seq for i in rows]
        row_logits = logits[rows]
        if self.logits_observer is not None:
            for seq, row in zip(seqs, row_logits, strict=True):
                self.logits_observer(seq.request_id, row)
        requests = [
            SampleRequest(s.params, s.prompt_token_ids, s.output_token_ids, s.generator) for s in seqs
        ]
        result = self.sampler(row_logits, requests)
        outputs = []
        for seq, token, logprob in zip(seqs, result.token_ids, result.logprobs, strict=True):
            outputs.append(self._append_token(seq, token, logprob))
        return outputs

    def _append_token(self, seq: Sequence, token: int, logprob, announce: bool = True) -> RequestOutput:
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
        if self.prefix_cache is not None:
            self.prefix_cache.cache_finished(seq)
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
        with self._lock:
            return self.metrics_state.snapshot(self)


def _generation_eos(model_dir: Path, model_config: ModelConfig) -> tuple[int, ...]:
    """The eos ids `transformers` generate would stop at: generation_config.json, else config.json."""
    path = model_dir / "generation_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("eos_token_id")
        if value is not None:
            return tuple(value) if isinstance(value, list) else (value,)
    return tuple(model_config.eos_token_id)


def _pool_sizes(model_config: ModelConfig, config: EngineConfig, dtype: torch.dtype) -> tuple[int, int, int]:
    """(pages, live slots, checkpoint slots) from explicit counts or the byte budget."""
    live, checkpoints = config.live_slots, config.cache_checkpoint_slots
    if config.num_pages is not None:
        return config.num_pages, live, checkpoints
    page_bytes, slot_bytes = CacheTensors.bytes_for(model_config, config.block_size, dtype)
    left = config.cache_bytes - (live + checkpoints) * slot_bytes
    if page_bytes == 0:
        return config.cache_bytes // (config.block_size * 64), live, checkpoints
    if left < page_bytes * 16:
        raise ValueError(
            f"cache_bytes={config.cache_bytes} cannot hold {live + checkpoints} state slots of {slot_bytes} bytes "
            f"plus 16 pages of {page_bytes} bytes; raise cache_bytes or lower max_num_seqs/checkpoint_slots"
        )
    return left // page_bytes, live, checkpoints
