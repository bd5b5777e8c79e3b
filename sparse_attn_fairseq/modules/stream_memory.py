"""The memory of a streaming language model (Transformer-XL; Sukhbaatar et al., ACL 2019): each span self-attention
attends over the keys and values of the tokens before the current block, cached from the previous block, detached
(truncated back-propagation through time).

A :class:`StreamMemory` belongs to one model and keeps one memory per stream group (training, and each evaluation
subset, so validation never sees training tokens) and layer. The streaming task (tasks/truncated_bptt_lm.py) tags
each batch with a :class:`StreamPosition`; a group's memory is reset where its streams start (block 0), when blocks
arrive out of order (a resumed run starts with an empty memory) and when the number of streams changes. Memories
are not module state: checkpoints never store them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

CachedKeys = Tuple[Tensor, Tensor, Optional[Tensor]]  # keys, values (bsz, H, M, head_dim), padding (bsz, M) or None


@dataclass(frozen=True)
class StreamPosition:
    """Which streams a batch continues: ``group`` (the data split) and the index of its block within them."""

    group: str
    block: int


class MemorySlot:
    """One layer's memory in one group: what the attention reads before its block and writes after it."""

    def __init__(self, store: Dict[Tuple[str, int], CachedKeys], key: Tuple[str, int], batch_size: int):
        self._store, self._key, self._batch_size = store, key, batch_size

    def read(self) -> Optional[CachedKeys]:
        cached = self._store.get(self._key)
        if cached is None or cached[0].size(0) != self._batch_size:
            return None  # no memory yet, or a different number of streams: start afresh
        return cached

    def write(self, keys: Tensor, values: Tensor, padding: Optional[Tensor], keep: int) -> None:
        """Store the last ``keep`` keys, values and padding flags, detached."""
        keep = min(keep, keys.size(2))
        padding = None if padding is None else padding[:, padding.size(1) - keep:].detach()
        self._store[self._key] = (keys[:, :, keys.size(2) - keep:].detach(),
                                  values[:, :, values.size(2) - keep:].detach(), padding)


class StreamMemory:
    """Memories of every stream group and layer of one model (see the module docstring)."""

    def __init__(self):
        self._store: Dict[Tuple[str, int], CachedKeys] = {}
        self._last_block: Dict[str, int] = {}

    def reset(self, group: Optional[str] = None) -> None:
        """Forget one group's memory, or every group's."""
        groups = set(self._last_block) if group is None else {group}
        self._store = {key: value for key, value in self._store.items() if key[0] not in groups}
        for name in groups:
            self._last_block.pop(name, None)

    def tokens(self, group: str) -> Dict[int, int]:
        """Memory length per layer of ``group`` (for logs and tests)."""
        return {layer: cached[0].size(2) for (name, layer), cached in self._store.items() if name == group}

    def cached(self, group: str, layer: int) -> Optional[CachedKeys]:
        return self._store.get((group, layer))

    @contextlib.contextmanager
    def attached(self, attentions: Iterable, position: StreamPosition, batch_size: int):
        """Lend each attention (indexed by its layer) its slot of ``position.group`` for one forward."""
        if position.block == 0 or self._last_block.get(position.group) != position.block - 1:
            self.reset(position.group)
        self._last_block[position.group] = position.block
        attentions = list(attentions)
        for layer, attention in enumerate(attentions):
            attention.memory = MemorySlot(self._store, (position.group, layer), batch_size)
        try:
            yield
        finally:
            for attention in attentions:
                attention.memory = None


def prepend_memory(cached: Optional[CachedKeys], k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor],
                   attn_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Keys and values (bsz, H, len, head_dim) with the memory's before them, the key padding mask (bsz, len) over
    both, and attn_mask (tgt_len, len) widened over the memory (every memory key is in the past)."""
    if cached is None:
        return k, v, key_padding_mask, attn_mask
    mem_k, mem_v, mem_padding = cached
    if key_padding_mask is not None or mem_padding is not None:
        def flags(padding, keys):
            return padding.to(torch.bool) if padding is not None else keys.new_zeros(keys.size(0), keys.size(2),
                                                                                      dtype=torch.bool)
        key_padding_mask = torch.cat([flags(mem_padding, mem_k), flags(key_padding_mask, k)], dim=1)
    if attn_mask is not None:
        attn_mask = F.pad(attn_mask, (mem_k.size(2), 0), value=False if attn_mask.dtype == torch.bool else 0.0)
    return torch.cat([mem_k, k], dim=2), torch.cat([mem_v, v], dim=2), key_padding_mask, attn_mask
