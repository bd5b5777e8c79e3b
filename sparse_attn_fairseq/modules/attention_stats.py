"""Training and validation logging of attention sparsity, learned alpha and spans: an opt-in observer.

:class:`AttentionStatsObserver`, attached to an attention module (the models attach one per layer unless
``--no-attention-stats``), logs for its attention type (key "enc", "dec" or "encdec") after each full forward:

* ``alpha_<key>``: mean alpha over heads (only for normalizers with an ``alpha()`` method), averaged over layers;
* ``null_<key>``: fraction of query rows whose weights are all zero ("null attention", Zhang et al., EMNLP 2021),
  pooled over layers, heads and batches; only for normalizers that declare ``allows_null_rows`` (ReLA).
* ``zeros_<key>``: fraction of exact zeros among the unmasked attention weights, pooled over layers and batches
  (with an adaptive span, keys outside the span count as masked); not for exp-family normalizers (softmax), whose
  weights have no exact zeros, so their attention can take the fused core;
* ``span_<key>``: with an adaptive span, the mean span in tokens over heads (and tokens, if dynamic), averaged over
  layers, and ``span_<key>_<layer>`` per layer (Sukhbaatar et al., ACL 2019).

Every value is logged as a tensor, never converted to a Python number in the forward: fairseq's meters accumulate
tensors and read them only when a log line is printed, so logging adds no device-to-host synchronisation to a
training step. They appear in the train, train_inner and valid lines and in tensorboard. Each rank logs its own
batches (not all-reduced); rank 0 prints.
"""

from __future__ import annotations

from typing import Optional

import torch
from fairseq.logging import metrics
from torch import Tensor, nn


def masked_count(mask: Optional[Tensor], shape: torch.Size):
    """Number of entries of a tensor of ``shape`` that a broadcastable bool ``mask`` masks, without expanding it
    (a tensor, or 0 without a mask)."""
    if mask is None or mask.numel() == 0:
        return 0
    return mask.sum() * (shape.numel() // mask.numel())


def _ratio(numerator: str, denominator: str):
    def derive(meters) -> float:
        total = meters[denominator].sum
        return round(float(meters[numerator].sum / total), 3) if float(total) > 0 else 0.0

    return derive


class AttentionStatsObserver:
    """Logs sparsity, alpha and span statistics of one attention module under ``key`` (see the module docstring).

    ``wants_weights(normalizer)``: whether the weights are worth reading (the fused core cannot return them).
    """

    def __init__(self, key: str, layer_index: Optional[int] = None):
        self.key, self.layer_index = key, layer_index

    @staticmethod
    def wants_weights(normalizer: nn.Module) -> bool:
        return not getattr(normalizer, "exp_family", False) or callable(getattr(normalizer, "alpha", None))

    @torch.no_grad()
    def __call__(self, normalizer: nn.Module, observed, spans: Optional[Tensor]) -> None:
        if observed is not None:
            self._log_weights(normalizer, *observed)
        if spans is not None:
            mean = spans.detach().float().mean()
            metrics.log_scalar(f"span_{self.key}", mean, priority=250, round=1)
            if self.layer_index is not None:
                metrics.log_scalar(f"span_{self.key}_{self.layer_index}", mean, priority=260, round=1)

    def _log_weights(self, normalizer: nn.Module, weights: Tensor, mask: Optional[Tensor]) -> None:
        """Masked entries are exact zeros (the normalizer's contract), so zeros among unmasked entries are
        numel - count_nonzero - masked: one reduction over the weights, no temporary of their size. Weights are
        non-negative, so a row is null when its max is 0: one more reduction."""
        key, total = self.key, weights.numel()
        if total == 0:
            return
        masked = masked_count(mask, weights.shape)
        metrics.log_scalar_sum(f"_zeros_{key}", total - torch.count_nonzero(weights) - masked)
        metrics.log_scalar_sum(f"_unmasked_{key}", total - masked)
        metrics.log_derived(f"zeros_{key}", _ratio(f"_zeros_{key}", f"_unmasked_{key}"), priority=250)
        if getattr(normalizer, "allows_null_rows", False):
            rows = weights.shape[:-1].numel()
            metrics.log_scalar(f"null_{key}", (weights.amax(dim=-1) == 0).sum() / rows, weight=rows, priority=250,
                               round=3)
        alpha = getattr(normalizer, "alpha", None)
        if callable(alpha):
            metrics.log_scalar(f"alpha_{key}", alpha().detach().mean(), priority=250, round=3)
