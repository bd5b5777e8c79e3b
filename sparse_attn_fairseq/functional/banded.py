"""Banded self-attention: each query sees only a window of ``left`` keys before it and ``right`` after it.

Adaptive span (Sukhbaatar et al., ACL 2019, section 3.1) gives every key farther than the layer's largest span + ramp
a zero weight; computing scores for those keys is wasted work. Here queries are cut into blocks of ``block`` rows,
and each block is multiplied with the keys of its window only, ``width = block + left + right`` of them, in one
batched matmul. Costs fall from tgt_len^2 to tgt_len * width per head, memory likewise.

Layout: a banded tensor (..., num_blocks, block, width) holds, for query i = b * block + r, the keys at positions
``b * block - left + w`` for w in [0, width); positions outside [-memory, length) are marked invalid. padded_len is
length rounded up to a multiple of ``block`` (the extra query rows are dropped by the caller).

A streaming layer (Transformer-XL style) also sees ``memory`` cached keys before its queries: keys then hold
memory + length positions, the first query is key position ``memory``, and negative band positions read the memory.
It equals the full computation restricted to the band (see tests/functional/test_banded.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Band:
    """Geometry of a banded computation over ``length`` queries and ``memory + length`` keys (self-attention; the
    queries are the last ``length`` keys)."""

    length: int
    left: int
    right: int
    block: int
    memory: int = 0

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.length / self.block)

    @property
    def padded_len(self) -> int:
        return self.num_blocks * self.block

    @property
    def width(self) -> int:
        return self.block + self.left + self.right

    def key_index(self, device=None) -> torch.Tensor:
        """(padded_len, width) index of each band entry's key into the keys padded by ``left`` in front."""
        starts = torch.arange(self.padded_len, device=device) // self.block * self.block  # (padded_len,)
        return starts[:, None] + torch.arange(self.width, device=device)  # (padded_len, width)

    def distances(self, causal: bool, device=None) -> torch.Tensor:
        """(block, width) float distances query - key (|query - key| unless causal), as span_distances.

        The same for every block: query row r of a block and band column w are r + left - w apart.
        """
        row = torch.arange(self.block, device=device)[:, None]  # (block, 1)
        dist = (row + self.left - torch.arange(self.width, device=device)).float()  # (block, width)
        return dist if causal else dist.abs()

    def outside(self, device=None) -> torch.Tensor:
        """(num_blocks, block, width) bool: the band entry's key position lies outside [-memory, length)."""
        key = self.key_index(device) - self.left
        return ((key < -self.memory) | (key >= self.length)).view(self.num_blocks, self.block, self.width)


def make_band(length: int, keys_per_side: int, causal: bool, memory: int = 0) -> Band:
    """The band of a span covering ``keys_per_side`` keys (the query's own key included) on each allowed side.

    Blocks of half the window (at least 16 rows) keep the band narrow (width ~ 1.5 windows causal, ~2.5 symmetric)
    while the batched matmuls stay large enough to be efficient. Measured (bench/bench_adaptive_span.py, softmax,
    2048 tokens, span 128): half is 5-25% faster than a quarter, and faster than a whole window. The blocks are then
    evened out over the length, so the last one is not mostly padding (512 queries: 7 blocks of 74, not of 80).
    """
    keys_per_side = max(1, min(keys_per_side, length + memory))
    left = keys_per_side - 1
    right = 0 if causal else keys_per_side - 1
    block = max(1, min(length, max(16, math.ceil(keys_per_side / 2))))
    block = math.ceil(length / math.ceil(length / block))  # as many blocks, as little padding
    return Band(length, left, right, block, min(memory, left))


def _pad_keys(x: torch.Tensor, band: Band, value=0.0) -> torch.Tensor:
    """(..., memory + length, d) -> (..., left + padded_len + right, d): the last ``left`` memory keys (padded in front
    where the memory is shorter) and the keys of the queries, padded at the end."""
    start = x.size(-2) - band.length - band.left  # memory keys the band never reaches
    x = x[..., max(start, 0):, :]
    return F.pad(x, (0, 0, max(-start, 0), band.padded_len - band.length + band.right), value=value)


def band_queries(q: torch.Tensor, band: Band) -> torch.Tensor:
    """(..., length, d) -> (..., num_blocks, block, d), zero rows appended."""
    q = F.pad(q, (0, 0, 0, band.padded_len - band.length))  # (..., padded_len, d)
    return q.unflatten(-2, (band.num_blocks, band.block))  # (..., num_blocks, block, d)


def band_keys(k: torch.Tensor, band: Band) -> torch.Tensor:
    """(..., [memory +] length, d) -> (..., num_blocks, width, d): the keys (or values) of each query block's window.

    ``k`` may hold more memory than ``band.memory``: only the keys the band reaches are read."""
    windows = _pad_keys(k, band).unfold(-2, band.width, band.block)  # (..., num_blocks, d, width), a view
    return windows.transpose(-1, -2)  # (..., num_blocks, width, d)


def band_scores(q: torch.Tensor, k: torch.Tensor, band: Band) -> torch.Tensor:
    """q.k^T on the band: q (..., length, d), k (..., [memory +] length, d) -> (..., num_blocks, block, width)."""
    return torch.matmul(band_queries(q, band), band_keys(k, band).transpose(-1, -2))  # (..., nb, block, width)


def band_mix(weights: torch.Tensor, v: torch.Tensor, band: Band) -> torch.Tensor:
    """weights (..., num_blocks, block, width) x v (..., [memory +] length, d) -> (..., length, d)."""
    out = torch.matmul(weights, band_keys(v, band)).flatten(-3, -2)  # (..., padded_len, d)
    return out[..., : band.length, :]


def _key_positions(band: Band, keys: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded_len, width) indices into a table of ``keys`` >= memory + length keys (the last ``length`` are the
    queries'), clamped into range, and where the band's key lay outside [-memory, length)."""
    key = band.key_index(device) - band.left  # (padded_len, width), relative to the first query
    outside = (key < -band.memory) | (key >= band.length)
    return (key + keys - band.length).clamp(0, keys - 1), outside


def band_gather_keys(table: torch.Tensor, band: Band, fill) -> torch.Tensor:
    """A per-key table (..., [memory +] length), e.g. a key padding mask (bsz, src_len), on the band:
    (..., padded_len, width).

    ``fill`` is used for key positions outside [-memory, length). Reads only the band: O(padded_len * width).
    """
    key, outside = _key_positions(band, table.size(-1), table.device)
    return table[..., key].masked_fill(outside, fill)  # (..., padded_len, width)


def band_gather_rows(matrix: torch.Tensor, band: Band, fill) -> torch.Tensor:
    """A per-query-and-key table (length, [memory +] length), e.g. an attention mask, on the band: (padded_len, width).

    ``fill`` is used outside the keys. The padded query rows repeat the last row: they are dropped by the caller, and
    a fully masked row would send a normalizer down its slower dead-row path. Reads only the band:
    O(padded_len * width).
    """
    key, outside = _key_positions(band, matrix.size(-1), matrix.device)
    query = torch.arange(band.padded_len, device=matrix.device).clamp(max=band.length - 1)[:, None]  # (padded_len, 1)
    return matrix[query, key].masked_fill(outside, fill)  # (padded_len, width)


def unband(weights: torch.Tensor, band: Band, keys: int | None = None) -> torch.Tensor:
    """Scatter banded weights (..., num_blocks, block, width) to full (..., length, keys), zeros off the band;
    ``keys`` (default memory + length) counts the memory keys before the queries' own."""
    keys = band.memory + band.length if keys is None else keys
    weights = weights.flatten(-3, -2)  # (..., padded_len, width)
    index = band.key_index(weights.device).expand(weights.shape)  # (..., padded_len, width)
    full_width = band.left + band.padded_len + band.right
    full = weights.new_zeros(weights.shape[:-1] + (full_width,)).scatter_(-1, index, weights)
    full = full[..., : band.length, band.left - band.memory : band.left + band.length]  # (.., length, memory + length)
    return F.pad(full, (keys - band.memory - band.length, 0))  # memory keys beyond the band: zero
