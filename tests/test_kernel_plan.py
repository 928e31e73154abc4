"""The kernel's plan and block geometry, on their own: tiles, query blocks, chunks and the working-set budget."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaincell import HardwareConfig
from gaincell.kernel.plan import (
    BLOCK_BUDGET,
    MAX_EXPONENT,
    chunk_sizes,
    geometries,
    head_chunks,
    make_plan,
    query_blocks,
    segments,
)

LIKE = torch.empty(0, dtype=torch.float64)


def _plan(window, array_size, n_queries, n_keys, key_start=0, decay=0.0, **kw):
    cfg = HardwareConfig.preset("paper").replace(window=window, array_size=array_size, decay_per_token=decay)
    return make_plan(cfg, n_queries, n_keys, 8, key_start=key_start, decay=decay, backward=True, **kw)


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(1, 100),
    array_size=st.sampled_from([4, 8, 16, 64]),
    n_keys=st.integers(1, 300),
    query_fraction=st.floats(0.0, 1.0),
    key_start=st.integers(0, 500),
)
def test_every_aligned_block_of_key_slots_is_one_physical_tile(window, array_size, n_keys, query_fraction, key_start):
    n_queries = max(1, round(query_fraction * n_keys))
    plan = _plan(window, array_size, n_queries, n_keys, key_start)
    for block in geometries(plan, LIKE):
        assert block.n_key_slots == block.n_key_blocks * array_size
        position = key_start + block.key_index
        holds = block.holds_key
        # a slot that holds a key holds it at ring slot position mod window
        assert torch.equal(block.physical_slot[holds], position[holds] % window)
        tile_of_slot = block.physical_slot // array_size
        tiles = []
        for b in range(block.n_key_blocks):
            in_block = slice(b * array_size, (b + 1) * array_size)
            written = tile_of_slot[in_block][holds[in_block]]
            assert written.numel() == 0 or bool((written == written[0]).all()), "a block of slots spans two tiles"
            tiles.append(int(written[0]) if written.numel() else None)
        # blocks read out together are exactly the blocks of one physical tile (the ring wraps onto the same tile)
        readout = block.tile_of_key_block.tolist() if block.tile_of_key_block is not None else list(range(block.n_key_blocks))
        assert max(readout) < block.n_readouts
        for b1, t1 in enumerate(tiles):
            for b2, t2 in enumerate(tiles):
                if t1 is not None and t2 is not None:
                    assert (t1 == t2) == (readout[b1] == readout[b2])


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(1, 100),
    array_size=st.sampled_from([4, 16, 64]),
    n_keys=st.integers(1, 300),
    query_fraction=st.floats(0.0, 1.0),
    key_start=st.integers(0, 500),
)
def test_each_block_reads_every_key_of_its_windows_once_and_masks_the_rest(window, array_size, n_keys, query_fraction, key_start):
    n_queries = max(1, round(query_fraction * n_keys))
    plan = _plan(window, array_size, n_queries, n_keys, key_start)
    for block in geometries(plan, LIKE):
        keys = block.key_index[block.holds_key].tolist()
        assert len(keys) == len(set(keys)), "a key sits in two slots"
        first_query = n_keys - n_queries + block.query_begin  # key index of the block's first query
        last_query = n_keys - n_queries + block.query_end - 1
        # every key some query of the block sees; beyond them only what shares their array-sized blocks (masked below)
        seen = range(max(0, first_query - window + 1), last_query + 1)
        assert set(seen) <= set(keys)
        assert seen[0] - (array_size - 1) <= min(keys) and max(keys) <= seen[-1] + array_size - 1
        # the mask (with the rows declared unmasked treated as all-inside) is exactly the causal window
        query = torch.arange(first_query, last_query + 1)[None, :]
        key = block.key_index[:, None]
        inside = block.holds_key[:, None] & (key <= query) & (key > query - window)
        assert torch.equal(block.window_mask().bool(), inside)
        assert torch.equal(block.window_count[0], inside.sum(0).to(block.window_count.dtype))


@pytest.mark.parametrize(
    ("n_queries", "decay"), [(1, 0.0), (127, 0.0), (128, 0.0), (129, 0.0), (1000, 0.0), (500, 0.3), (50, 3.0)]
)
def test_query_blocks_cover_every_query_once_in_order(n_queries, decay):
    plan = _plan(64, 16, n_queries, n_queries + 5, decay=decay)
    blocks = query_blocks(plan)
    assert blocks[0][0] == 0 and blocks[-1][1] == n_queries
    assert all(end == begin for (_, end), (begin, _) in itertools.pairwise(blocks))
    assert all(0 < end - begin <= plan.query_block for begin, end in blocks)
    # the query side of the decay factorisation stays below e^MAX_EXPONENT
    max_power = max(t.power for t in plan.forward_terms + plan.backward_terms)
    assert (plan.query_block - 1) * max_power * decay <= MAX_EXPONENT
    if decay >= 3.0:
        assert plan.query_block < 128


@pytest.mark.parametrize(("batch", "heads"), [(1, 1), (1, 12), (3, 12), (16, 5), (64, 32), (2, 200)])
@pytest.mark.parametrize("window", [64, 1024, 4096])
def test_chunks_tile_batch_and_heads_and_respect_the_budget(batch, heads, window):
    cfg = HardwareConfig.preset("paper").replace(window=window)
    plan = make_plan(cfg, 4096, 4096, 64, batch=batch, heads=heads, decay=cfg.decay_per_token, backward=True)
    chunks = head_chunks(plan, batch, heads)
    covered = torch.zeros(batch, heads, dtype=torch.int64)
    for chunk in chunks:
        covered[chunk.batch_begin : chunk.batch_end, chunk.head_begin : chunk.head_end] += 1
        assert chunk.size == chunk.n_batch * chunk.n_heads > 0
        # a chunk holds either whole batch entries or heads of one entry
        assert chunk.n_heads == heads or chunk.n_batch == 1
        assert chunk.size * plan.bytes_per_head <= BLOCK_BUDGET or chunk.size == 1
    assert bool((covered == 1).all())


def test_chunk_sizes_fill_the_budget_and_balance_the_chunks():
    assert chunk_sizes(8, 4, BLOCK_BUDGET // 32) == (8, 4)  # everything fits: one chunk
    assert chunk_sizes(8, 4, BLOCK_BUDGET // 16) == (4, 4)  # 16 heads fit: four batch entries at a time
    assert chunk_sizes(5, 4, BLOCK_BUDGET // 12) == (3, 4)  # 3 entries fit: chunks of 3 and 2
    assert chunk_sizes(1, 10, BLOCK_BUDGET // 4) == (1, 4)  # 4 heads fit: 10 heads in chunks of 4, 4, 2
    assert chunk_sizes(1, 9, BLOCK_BUDGET // 4) == (1, 3)  # 9 heads, 4 fit: three chunks of 3 rather than 4, 4, 1
    assert chunk_sizes(2, 3, BLOCK_BUDGET * 2) == (1, 1)  # one head is over budget: one head at a time


def test_working_set_grows_with_the_window_not_the_sequence():
    cfg = HardwareConfig.preset("paper").replace(window=256)
    short = make_plan(cfg, 1024, 1024, 64, decay=cfg.decay_per_token, backward=True)
    long = make_plan(cfg, 65536, 65536, 64, decay=cfg.decay_per_token, backward=True)
    wide = make_plan(cfg.replace(window=4096), 65536, 65536, 64, decay=cfg.decay_per_token, backward=True)
    assert long.bytes_per_head == short.bytes_per_head
    assert wide.bytes_per_head > 4 * long.bytes_per_head
    forward_only = make_plan(cfg, 1024, 1024, 64, decay=cfg.decay_per_token, backward=False)
    assert forward_only.bytes_per_head < short.bytes_per_head
    assert _plan(100, 64, 10, 10).padded_window == 128  # two tiles of 64 slots hold a window of 100


@settings(max_examples=40, deadline=None)
@given(
    window=st.integers(1, 300),
    array_size=st.sampled_from([4, 16, 64]),
    n_keys=st.integers(1, 700),
    query_fraction=st.floats(0.0, 1.0),
    key_start=st.integers(0, 500),
    decay=st.sampled_from([0.0, 0.001, 0.05, 0.5]),
)
def test_segments_hold_every_block_slot_and_share_one_decay_reference(
    window, array_size, n_keys, query_fraction, key_start, decay
):
    n_queries = max(1, round(query_fraction * n_keys))
    plan = _plan(window, array_size, n_queries, n_keys, key_start, decay=decay)
    blocks = [block for segment in segments(plan, LIKE) for block in segment.blocks]
    assert [(b.query_begin, b.query_end) for b in blocks] == query_blocks(plan)
    # the working-set budget counts exactly the largest block and segment
    assert plan.most_block_slots == max(b.n_key_slots for b in blocks)
    assert plan.most_segment_slots == max(s.keys.n_key_slots for s in segments(plan, LIKE))
    for segment in segments(plan, LIKE):
        assert segment.keys is not None  # no cell variation: the blocks read the segment's features
        assert segment.query_end - segment.query_begin <= plan.segment_queries
        for block in segment.blocks:
            rows = slice(
                block.first_slot - segment.keys.first_slot, block.first_slot - segment.keys.first_slot + block.n_key_slots
            )
            assert rows.start >= 0 and rows.stop <= segment.keys.n_key_slots
            assert torch.equal(segment.keys.holds_key[rows], block.holds_key)
            assert torch.equal(segment.keys.key_index[rows][block.holds_key], block.key_index[block.holds_key])
            queries = slice(block.query_begin - segment.query_begin, block.query_end - segment.query_begin)
            for n in block.key_decay:  # the same reference: the segment's factors restricted to the block
                torch.testing.assert_close(segment.keys.key_decay[n][rows], block.key_decay[n], rtol=1e-12, atol=0)
                torch.testing.assert_close(segment.query_decay[n][queries], block.query_decay[n], rtol=1e-12, atol=0)
                assert float(segment.query_decay[n].max()) <= math.exp(MAX_EXPONENT) * (1 + 1e-9)
