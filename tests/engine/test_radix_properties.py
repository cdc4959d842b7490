"""Random insert/match/release/evict/abort sequences against real pools. The test keeps its own
record of what every page and checkpoint slot holds (which tokens of which namespace), so a match
is checked against the tokens, not against the tree's own idea of them."""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.cache.events import KvEvent
from engine.cache.page_pool import OutOfPages, PagePool
from engine.cache.radix import RadixCache
from engine.cache.state_pool import StatePool

BLOCK = 4
NUM_PAGES = 24
NUM_CHECKPOINTS = 5
TENANTS = (b"tenant-a", b"tenant-b")


class Seq:
    def __init__(self, tokens, extra, block_table, match):
        self.tokens, self.extra, self.block_table, self.match = tokens, extra, block_table, match
        self.handle = match.handle


class RadixMachine(RuleBasedStateMachine):
    has_state = True

    def __init__(self):
        super().__init__()
        self.pages = PagePool(NUM_PAGES)
        self.slots = StatePool(range(100, 100 + NUM_CHECKPOINTS))
        self.events: list[KvEvent] = []
        self.cache = RadixCache(self.pages, self.slots, BLOCK, self.has_state, on_event=self.events.append)
        self.seqs: dict[int, Seq] = {}
        self.history: list[tuple[tuple[int, ...], bytes]] = []  # finished sequences, for growth
        self.page_holds: dict[int, tuple] = {}  # page -> (extra, tokens up to the end of its block)
        self.slot_holds: dict[int, tuple] = {}  # slot -> (extra, tokens consumed)
        self.next_id = 0
        self.stored_blocks: set[int] = set()
        self.stored_checkpoints: set[int] = set()

    # ---- rules ---------------------------------------------------------------------------------
    @rule(
        base=st.integers(0, 10),
        tail_blocks=st.integers(0, 2),
        partial=st.lists(st.integers(0, 2), max_size=BLOCK - 1),
        tenant=st.sampled_from(TENANTS),
        keep_pinned=st.booleans(),
    )
    def start(self, base, tail_blocks, partial, tenant, keep_pinned):
        prefix: tuple[int, ...] = ()
        if self.history and base < len(self.history) * 2:
            prefix, tenant = self.history[base % len(self.history)]  # a later turn of a session
        # Block-aligned tails make full hits (which must back off) common.
        tokens = prefix + (base % 3,) * (tail_blocks * BLOCK) + tuple(partial)
        if not tokens:
            return
        match = self.cache.match(tokens, tenant)
        self._check_match(match, tokens, tenant)
        seq = Seq(tokens, tenant, list(match.page_ids), match)
        if not keep_pinned:
            self.cache.release(match.handle)
        needed = -(-len(tokens) // BLOCK) - len(seq.block_table)
        if self.pages.num_free < needed:
            self.cache.evict(needed - self.pages.num_free)
        try:
            fresh = self.pages.allocate(needed)
        except OutOfPages:
            self._drop(seq)
            return
        for offset, page in enumerate(fresh, start=len(seq.block_table)):
            self.page_holds[page] = (tenant, tokens[: (offset + 1) * BLOCK])  # prefill writes it
        seq.block_table += fresh
        self.seqs[self.next_id] = seq
        self.next_id += 1

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), finish=st.booleans())
    def insert(self, data, finish):
        sid = data.draw(st.sampled_from(sorted(self.seqs)))
        seq = self.seqs[sid]
        upto = len(seq.tokens) if finish else data.draw(st.integers(0, len(seq.tokens)))
        ends = [p for p in range(BLOCK, upto + 1, BLOCK)]
        chosen = data.draw(st.lists(st.sampled_from(ends), unique=True)) if ends and self.has_state else []
        checkpoints = {}
        for position in chosen:
            slot = self.cache.allocate_checkpoint()
            if slot is not None:
                self.slot_holds[slot] = (seq.extra, seq.tokens[:position])
                checkpoints[position] = slot
        self.cache.insert(seq.tokens[:upto], seq.block_table, seq.extra, checkpoints)
        if finish:
            del self.seqs[sid]
            self._drop(seq)
            self.history.append((seq.tokens, seq.extra))

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def abort(self, data):
        sid = data.draw(st.sampled_from(sorted(self.seqs)))
        self._drop(self.seqs.pop(sid))

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def release(self, data):
        seq = self.seqs[data.draw(st.sampled_from(sorted(self.seqs)))]
        if not seq.handle.released:
            self.cache.release(seq.handle)

    @rule(num_pages=st.integers(0, NUM_PAGES))
    def evict(self, num_pages):
        free_before = self.pages.num_free
        freed = self.cache.evict(num_pages)
        assert freed <= num_pages
        assert self.pages.num_free == free_before + freed

    # ---- checks --------------------------------------------------------------------------------
    def _check_match(self, match, tokens, extra):
        assert match.num_tokens % BLOCK == 0
        assert match.num_tokens < len(tokens) or match.num_tokens == 0
        assert len(match.page_ids) * BLOCK == match.num_tokens
        for index, page in enumerate(match.page_ids):
            assert self.page_holds[page] == (extra, tokens[: (index + 1) * BLOCK])
        if self.has_state and match.num_tokens:
            assert match.checkpoint_slot is not None
            assert self.slot_holds[match.checkpoint_slot] == (extra, tokens[: match.num_tokens])
        else:
            assert match.checkpoint_slot is None

    def _drop(self, seq):
        if not seq.handle.released:
            self.cache.release(seq.handle)
        self.pages.decref(seq.block_table)
        seq.block_table = []

    @invariant()
    def refcounts_are_exact(self):
        in_tree = self.cache.cached_page_ids()
        held: dict[int, int] = {}
        for seq in self.seqs.values():
            for page in seq.block_table:
                held[page] = held.get(page, 0) + 1
        for page in range(NUM_PAGES):
            expected = held.get(page, 0) + (page in in_tree)
            assert self.pages.refcount(page) == expected  # never negative, never free while cached
        assert self.pages.num_free == sum(1 for p in range(NUM_PAGES) if p not in in_tree and p not in held)

    @invariant()
    def pinned_checkpoints_stay(self):
        for seq in self.seqs.values():
            if not seq.handle.released and seq.match.checkpoint_slot is not None:
                assert seq.match.checkpoint_slot in self.cache.checkpoint_slots()
                assert self.slot_holds[seq.match.checkpoint_slot] == (
                    seq.extra,
                    seq.tokens[: seq.match.num_tokens],
                )

    @invariant()
    def checkpoints_within_budget(self):
        in_tree = self.cache.checkpoint_slots()
        assert self.cache.num_checkpoints == len(in_tree) <= NUM_CHECKPOINTS
        assert not any(self.slots.is_free(slot) for slot in in_tree)
        assert self.slots.num_free + len(in_tree) == NUM_CHECKPOINTS  # no slot leaks between rules
        if not self.has_state:
            assert not in_tree

    @invariant()
    def events_describe_the_tree(self):
        for event in self.events:
            target_blocks = self.stored_blocks
            if event.kind == "stored":
                self.stored_blocks |= set(event.block_hashes)
                self.stored_checkpoints |= set(event.checkpoint_hashes)
            else:
                target_blocks -= set(event.block_hashes)
                self.stored_checkpoints -= set(event.checkpoint_hashes)
        self.events.clear()
        nodes = list(self.cache.iter_nodes())
        assert self.stored_blocks == {node.block_hash for node in nodes}
        assert self.stored_checkpoints == {node.block_hash for node in nodes if node.checkpoint is not None}

    def teardown(self):
        for seq in list(self.seqs.values()):
            self._drop(seq)
        self.seqs.clear()
        self.cache.evict(NUM_PAGES)
        assert self.cache.num_cached_blocks == 0 and self.cache.num_checkpoints == 0
        assert self.pages.num_free == NUM_PAGES
        assert self.slots.num_free == NUM_CHECKPOINTS


class PureAttentionMachine(RadixMachine):
    has_state = False


_settings = settings(
    max_examples=120, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestHybridRadix = pytest.mark.timeout(120)(RadixMachine.TestCase)
TestHybridRadix.settings = _settings
TestPureAttentionRadix = pytest.mark.timeout(120)(PureAttentionMachine.TestCase)
TestPureAttentionRadix.settings = _settings
