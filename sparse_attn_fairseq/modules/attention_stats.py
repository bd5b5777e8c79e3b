"""Training and validation logging of attention sparsity and learned alpha, into fairseq's log lines.

Per attention type (key "enc", "dec" or "encdec"), each full forward of each layer logs:

* ``alpha_<key>``: mean alpha over heads (only for normalizers with an ``alpha()`` method), averaged over layers;
* ``null_<key>``: fraction of query rows whose weights are all zero ("null attention", Zhang et al., EMNLP 2021),
  pooled over layers, heads and batches; only for normalizers that declare ``allows_null_rows`` (ReLA).
* ``zeros_<key>``: fraction of exact zeros among the unmasked attention weights, pooled over layers and batches
  (with an adaptive span, keys outside the span count as masked);
* ``span_<key>``: with an adaptive span, the mean span in tokens over heads (and tokens, if dynamic), averaged over
  layers, and ``span_<key>_<layer>`` per layer (Sukhbaatar et al., ACL 2019).

All go through ``fairseq.logging.metrics``, so they appear in the train, train_inner and valid lines and in
tensorboard when enabled. Each rank logs its own batches (not all-reduced); rank 0 prints.
"""

from __future__ import annotations

from typing import Optional

import torch
from fairseq.logging import metrics
from torch import Tensor, nn


def masked_count(mask: Optional[Tensor], shape: torch.Size) -> int:
    """Number of entries of a tensor of ``shape`` that a broadcastable bool ``mask`` masks, without expanding it."""
    if mask is None or mask.numel() == 0:
        return 0
    return int(mask.sum()) * (shape.numel() // mask.numel())


@torch.no_grad()
def log_attention_stats(key: str, weights: Tensor, mask: Optional[Tensor], normalizer: nn.Module) -> None:
    """Log ``alpha_<key>``, ``zeros_<key>`` and ``null_<key>`` for weights (bsz, num_heads, tgt_len, src_len).

    Masked entries are exact zeros (the normalizer's contract), so zeros among unmasked entries are
    numel - count_nonzero - masked: one reduction over the weights, no temporary of their size. Weights are
    non-negative, so a row is null when its max is 0: one more reduction.
    """
    total = weights.numel()
    unmasked = total - masked_count(mask, weights.shape)
    if unmasked > 0:
        zeros = total - int(torch.count_nonzero(weights)) - (total - unmasked)
        metrics.log_scalar(f"zeros_{key}", zeros / unmasked, weight=unmasked, priority=250, round=3)
    if getattr(normalizer, "allows_null_rows", False) and weights.numel() > 0:
        rows = weights.shape[:-1].numel()
        null = int((weights.amax(dim=-1) == 0).sum())  # amax: (bsz, num_heads, tgt_len)
        metrics.log_scalar(f"null_{key}", null / rows, weight=rows, priority=250, round=3)
    alpha = getattr(normalizer, "alpha", None)
    if callable(alpha):
        metrics.log_scalar(f"alpha_{key}", float(alpha().mean()), priority=250, round=3)


@torch.no_grad()
def log_span_stats(key: str, layer_index: Optional[int], spans: Tensor) -> None:
    """Log ``span_<key>`` (mean over layers) and ``span_<key>_<layer>`` from spans in tokens (any shape)."""
    mean = float(spans.detach().float().mean())
    metrics.log_scalar(f"span_{key}", mean, priority=250, round=1)
    if layer_index is not None:
        metrics.log_scalar(f"span_{key}_{layer_index}", mean, priority=260, round=1)
