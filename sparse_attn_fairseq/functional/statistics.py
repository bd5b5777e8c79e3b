"""Per-head statistics of attention weights, as the papers report them (pure torch; sums, so batches add up).

- Sparsity: the fraction of exact zeros among the unmasked weights of real (non-padded) queries; the support size,
  the number of nonzero weights per query, as a count and relative to the query's unmasked keys (Correia et al. 2019,
  "density"); the null rate, the fraction of queries whose weights are all zero (Zhang et al. 2021).
- Head diversity: per query, JS = H(mean_h p_h) - mean_h H(p_h) over a layer's heads, entropies in log base n (n the
  query's unmasked keys), so 0 <= JS <= 1 (Correia et al. 2019, section 5.2). Rows that do not sum to one (ReLA) are
  normalised first; null rows take no part, and a query with fewer than two non-null heads or one key is skipped.

Shapes: weights (bsz, num_heads, tgt_len, src_len); ``key_mask`` bool broadcastable to it, True = masked key;
``query_padding`` bool (bsz, tgt_len), True = padded query (its row is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadSums:
    """Sums per head (num_heads,) over real queries; add two with ``+``, read the means with the properties."""

    queries: torch.Tensor  # real query rows
    unmasked: torch.Tensor  # unmasked weights of those rows
    zeros: torch.Tensor  # exact zeros among them
    support: torch.Tensor  # nonzero weights
    relative_support: torch.Tensor  # sum over rows of support / unmasked keys
    null_rows: torch.Tensor  # rows whose every weight is zero

    def __add__(self, other: "HeadSums") -> "HeadSums":
        return HeadSums(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    @property
    def zero_fraction(self) -> torch.Tensor:
        return self.zeros / self.unmasked.clamp_min(1)

    @property
    def mean_support(self) -> torch.Tensor:
        return self.support / self.queries.clamp_min(1)

    @property
    def mean_relative_support(self) -> torch.Tensor:
        return self.relative_support / self.queries.clamp_min(1)

    @property
    def null_rate(self) -> torch.Tensor:
        return self.null_rows / self.queries.clamp_min(1)


def _masks(weights: torch.Tensor, key_mask: torch.Tensor | None, query_padding: torch.Tensor | None):
    """(unmasked keys bool (bsz, H, T, S), real queries bool (bsz, 1, T))."""
    bsz, _, tgt_len, _ = weights.shape
    unmasked = torch.ones_like(weights, dtype=torch.bool)
    if key_mask is not None:
        unmasked = unmasked & ~key_mask.to(torch.bool)
    real = torch.ones(bsz, 1, tgt_len, dtype=torch.bool, device=weights.device)
    if query_padding is not None:
        real = real & ~query_padding.to(torch.bool).view(bsz, 1, tgt_len)
    return unmasked, real


def head_sums(weights: torch.Tensor, key_mask: torch.Tensor | None = None,
              query_padding: torch.Tensor | None = None) -> HeadSums:
    """Sparsity sums per head of one batch (see the module docstring)."""
    unmasked, real = _masks(weights, key_mask, query_padding)
    real_rows = real.expand(weights.shape[:3])  # (bsz, H, T)
    n_keys = unmasked.sum(-1)  # (bsz, H, T)
    rows = real_rows & (n_keys > 0)
    nonzero = (weights != 0) & unmasked
    support = nonzero.sum(-1)  # (bsz, H, T)
    zeros = (unmasked & (weights == 0)).sum(-1)

    def per_head(x: torch.Tensor) -> torch.Tensor:
        return (x * rows).sum(dim=(0, 2)).double()

    return HeadSums(
        queries=per_head(torch.ones_like(support)),
        unmasked=per_head(n_keys),
        zeros=per_head(zeros),
        support=per_head(support),
        relative_support=per_head(support / n_keys.clamp_min(1)),
        null_rows=per_head(support == 0),
    )


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the last dim (0 log 0 = 0)."""
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


def js_divergence_sums(weights: torch.Tensor, key_mask: torch.Tensor | None = None,
                       query_padding: torch.Tensor | None = None) -> tuple[float, int]:
    """(sum of JS over the batch's counted queries, their number); JS as in the module docstring."""
    unmasked, real = _masks(weights, key_mask, query_padding)
    w = torch.where(unmasked, weights.double(), torch.zeros((), dtype=torch.float64, device=weights.device))
    row_sum = w.sum(-1, keepdim=True)  # (bsz, H, T, 1)
    live = row_sum.squeeze(-1) > 0  # non-null heads (bsz, H, T)
    p = w / row_sum.clamp_min(1e-300)
    n_live = live.sum(1)  # (bsz, T)
    mean_p = (p * live.unsqueeze(-1)).sum(1) / n_live.clamp_min(1).unsqueeze(-1)  # (bsz, T, S)
    mean_entropy = (_entropy(p) * live).sum(1) / n_live.clamp_min(1)  # (bsz, T)
    n_keys = unmasked.any(1).sum(-1)  # (bsz, T): keys unmasked for some head
    js = (_entropy(mean_p) - mean_entropy) / n_keys.clamp_min(2).double().log()
    counted = real.squeeze(1) & (n_live >= 2) & (n_keys >= 2)
    return float(js[counted].sum()), int(counted.sum())
