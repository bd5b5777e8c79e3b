"""A token stream cut into parallel streams and blocks, for truncated back-propagation through time.

The corpus x_0 .. x_{N-1} (with its end-of-line tokens) is one stream. Every token is predicted exactly once, from
the tokens before it: the inputs are x shifted right by one, behind a beginning-of-stream token. The N predictions
are cut into ``num_shards * streams_per_shard`` contiguous streams of nearly equal length (they differ by at most
one token), each rank (shard) takes its own ``streams_per_shard`` of them, and batch i holds block i of each of its
streams: ``block`` tokens, fewer (padded) at a stream's end. Streams are never shuffled.
"""

from __future__ import annotations

import math
from typing import Dict

import torch


class TokenStreams(torch.utils.data.Dataset):
    """Batches of consecutive blocks of parallel streams; item i is batch i (a dict of tensors).

    Args:
        tokens: the whole corpus, 1-D.
        block: tokens per stream per batch (``--tokens-per-sample``).
        streams_per_shard: streams of this rank (``--batch-size``).
        shard_id, num_shards: this rank and the number of ranks.
        bos: input token before the first token of the corpus (fairseq's convention: the end-of-sentence symbol).
        pad: padding of short blocks.
        name: the split, which names the model memory its batches continue.

    Raises:
        ValueError: bad sizes, or a corpus with fewer tokens than streams.
    """

    def __init__(self, tokens: torch.Tensor, block: int, streams_per_shard: int, shard_id: int = 0,
                 num_shards: int = 1, bos: int = 2, pad: int = 1, name: str = "train"):
        if block < 1 or streams_per_shard < 1 or num_shards < 1 or not 0 <= shard_id < num_shards:
            raise ValueError(f"TokenStreams: block={block}, streams_per_shard={streams_per_shard}, "
                             f"shard_id={shard_id}, num_shards={num_shards}: sizes must be >= 1 and shard_id < "
                             "num_shards")
        streams = streams_per_shard * num_shards
        if tokens.numel() < streams:
            raise ValueError(f"the corpus has {tokens.numel()} tokens, fewer than the {streams} streams asked for "
                             f"({streams_per_shard} per rank x {num_shards} ranks): lower --batch-size")
        self.block, self.pad, self.name = block, pad, name
        self.sequence = torch.cat([tokens.new_tensor([bos]), tokens.reshape(-1)]).to(torch.int32)  # inputs, then 1
        total = tokens.numel()
        bounds = [s * total // streams for s in range(streams + 1)]  # prediction s covers tokens bounds[s]..
        mine = range(shard_id * streams_per_shard, (shard_id + 1) * streams_per_shard)
        self.starts = [bounds[s] for s in mine]
        self.ends = [bounds[s + 1] for s in mine]
        self.num_batches = max(1, math.ceil(max(bounds[s + 1] - bounds[s] for s in range(streams)) / block))

    def __len__(self) -> int:
        return self.num_batches

    def block_range(self, index: int, stream: int) -> range:
        """Corpus positions predicted by block ``index`` of this shard's ``stream``."""
        start = min(self.starts[stream] + index * self.block, self.ends[stream])
        return range(start, min(start + self.block, self.ends[stream]))

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if not 0 <= index < self.num_batches:
            raise IndexError(index)
        rows = len(self.starts)
        inputs = torch.full((rows, self.block), self.pad, dtype=torch.long)
        targets = torch.full((rows, self.block), self.pad, dtype=torch.long)
        for row in range(rows):
            span = self.block_range(index, row)
            inputs[row, : len(span)] = self.sequence[span.start: span.stop]  # x_{j-1} (bos for j = 0)
            targets[row, : len(span)] = self.sequence[span.start + 1: span.stop + 1]  # x_j
        width = max(1, max(len(self.block_range(index, row)) for row in range(rows)))
        return {"index": index, "inputs": inputs[:, :width].contiguous(), "targets": targets[:, :width].contiguous()}
