"""functional/banded.py against the full computation: scores, masks, value mixing and unbanding, with and without
a memory of keys before the queries (streaming)."""

import pytest
import torch

from sparse_attn_fairseq.functional.banded import (
    band_gather_keys, band_gather_rows, band_mix, band_scores, make_band, unband,
)
from tests.tolerances import ATOL, max_err

CASES = [  # length, keys per side, causal, memory
    (37, 9, True, 0), (37, 9, False, 0), (37, 9, True, 3), (37, 9, True, 40), (5, 30, True, 12), (64, 1, True, 7),
]


def _full_band_mask(length, memory, band):
    """(length, memory + length) True where a key lies in its query's block window: from left keys before the
    block's first query to right keys after its last."""
    start = torch.arange(length)[:, None] // band.block * band.block - band.left  # first key of each row's window
    key = torch.arange(memory + length)[None, :] - memory  # positions relative to the first query
    return (key >= start) & (key < start + band.width)


@pytest.mark.parametrize("length,per_side,causal,memory", CASES)
def test_scores_mix_and_unband_equal_the_full_computation(length, per_side, causal, memory):
    torch.manual_seed(0)
    q = torch.randn(2, 3, length, 4, dtype=torch.float64)
    k = torch.randn(2, 3, memory + length, 4, dtype=torch.float64)
    v = torch.randn(2, 3, memory + length, 5, dtype=torch.float64)
    band = make_band(length, per_side, causal, memory=memory)
    assert band.memory == min(memory, band.left)
    inside = _full_band_mask(length, memory, band)
    banded = band_scores(q, k, band)
    valid = ~band.outside()
    full = unband(banded.masked_fill(~valid, 0.0), band, memory + length)
    assert full.shape == (2, 3, length, memory + length)
    expected = (q @ k.transpose(-1, -2)).masked_fill(~inside, 0.0)
    assert max_err(full, expected) <= ATOL[torch.float64]
    weights = torch.rand_like(banded).masked_fill(~valid, 0.0)
    mixed = band_mix(weights, v, band)
    assert max_err(mixed, unband(weights, band, memory + length) @ v) <= ATOL[torch.float64]
    assert int(valid.flatten(0, 1)[:length].sum()) == int(inside.sum())  # every in-window key exactly once


@pytest.mark.parametrize("length,per_side,causal,memory", CASES)
def test_gathered_masks_read_the_right_keys(length, per_side, causal, memory):
    torch.manual_seed(1)
    band = make_band(length, per_side, causal, memory=memory)
    padding = torch.rand(2, memory + length) < 0.3
    matrix = torch.randn(length, memory + length)
    keys = band.key_index() - band.left + memory  # (padded_len, width) index into the memory + length keys
    outside = band.outside().flatten(0, 1)
    gathered = band_gather_keys(padding, band, True)
    rows = band_gather_rows(matrix, band, float("-inf"))
    for i in range(length):
        for w in range(band.width):
            if outside[i, w]:
                assert bool(gathered[0, i, w]) and rows[i, w] == float("-inf")
            else:
                assert bool(gathered[1, i, w]) == bool(padding[1, keys[i, w]])
                assert rows[i, w] == matrix[i, keys[i, w]]
