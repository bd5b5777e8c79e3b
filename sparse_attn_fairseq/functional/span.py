"""Adaptive attention span (Sukhbaatar, Grave, Bojanowski, Joulin, ACL 2019, section 3).

A soft mask on the query-key distance x, m_z(x) = clamp((R + z - x) / R, 0, 1), multiplies the normalised weights,
which are then renormalised (ReLA skips that step). z is a learned span in tokens per head (static) or per query
token (dynamic); R is the ramp.
"""

from __future__ import annotations

import math

import torch


def span_distances(
    tgt_len: int, src_len: int, causal: bool, query_offset: int = 0, key_offset: int = 0, device=None
) -> torch.Tensor:
    """Distance x between query i and key j: |i - j| (encoder) or i - j (causal decoder; negative = future key).

    Query positions are query_offset + arange(tgt_len) and key positions key_offset + arange(src_len), so incremental
    decoding (one query at position t, cropped keys starting at t - k + 1) uses the same distances as a full pass.

    Returns:
        (tgt_len, src_len) float32 tensor.
    """
    query = torch.arange(tgt_len, device=device, dtype=torch.float32) + query_offset  # (tgt_len,)
    key = torch.arange(src_len, device=device, dtype=torch.float32) + key_offset  # (src_len,)
    dist = query[:, None] - key[None, :]  # (tgt_len, src_len)
    return dist if causal else dist.abs()


def span_soft_mask(
    span: torch.Tensor,
    ramp: float,
    tgt_len: int,
    src_len: int,
    causal: bool = False,
    query_offset: int = 0,
    key_offset: int = 0,
) -> torch.Tensor:
    """m(x) = clamp((R + z - x) / R, 0, 1); future keys (causal, x < 0) get 0. Differentiable in ``span``.

    Args:
        span: z in tokens: (num_heads,) static, or (bsz, num_heads, tgt_len) dynamic (one span per query token).
        ramp: R > 0, the length of the linear ramp in tokens.
        tgt_len, src_len: number of queries and keys.
        causal: decoder self-attention (distance i - j >= 0) instead of encoder (|i - j|).
        query_offset, key_offset: absolute position of the first query and the first key.

    Returns:
        (num_heads, tgt_len, src_len) for a static span, (bsz, num_heads, tgt_len, src_len) for a dynamic one;
        float32 (or the span's dtype if it is float64).

    Raises:
        ValueError: ramp <= 0 or a span of another rank.
    """
    dist = span_distances(tgt_len, src_len, causal, query_offset, key_offset, span.device)
    return span_mask_at(span, ramp, dist, causal)


def span_mask_at(span: torch.Tensor, ramp: float, dist: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """m(x) = clamp((R + z - x) / R, 0, 1) at given distances x; future keys (causal, x < 0) get 0.

    The general form of :func:`span_soft_mask`: ``dist`` may be any (tgt_len, width) table, e.g. the distances of a
    banded computation (functional/banded.py), where each query row sees its own window of keys.

    Args:
        span: z in tokens, (num_heads,) static, or one per query, (..., tgt_len) (dynamic: (bsz, num_heads, tgt_len)).
        ramp: R > 0.
        dist: (tgt_len, width) query-key distances, as :func:`span_distances` returns them.
        causal: zero the mask where dist < 0.

    Returns:
        (num_heads, tgt_len, width) static, or (..., tgt_len, width), in the span's dtype.
    """
    if ramp <= 0:
        raise ValueError(f"ramp must be > 0, got ramp={ramp!r}")
    if span.ndim not in (1, 3, 4):
        raise ValueError(f"span must be (num_heads,) or (bsz, num_heads, tgt_len), got shape {tuple(span.shape)}")
    dist = dist.to(span.dtype)
    span = span[:, None, None] if span.ndim == 1 else span[..., None]  # (H, 1, 1) or (..., T, 1)
    mask = ((ramp + span - dist) / ramp).clamp(0.0, 1.0)  # (H, T, W) or (..., T, W)
    return mask.masked_fill(dist < 0, 0.0) if causal else mask


def log_soft_mask(mask: torch.Tensor) -> torch.Tensor:
    """log m, -inf where m = 0, with finite gradients (zero there, 1 / m on the ramp).

    For a normaliser with weights proportional to exp(scores) (softmax), normalising scores + log m equals multiplying
    the weights by m and renormalising: one fused pass instead of three, and exact (no eps).
    """
    return torch.where(mask > 0, mask.clamp_min(torch.finfo(mask.dtype).tiny).log(), float("-inf"))


class _ZeroGradThrough(torch.autograd.Function):
    """x unchanged; ``spans`` join the graph with a zero gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        ctx.spans_shape, ctx.spans_dtype = spans.shape, spans.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, grad.new_zeros(ctx.spans_shape, dtype=ctx.spans_dtype)


def keep_spans_in_graph(x: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """x, with ``spans`` in its autograd graph at zero gradient: where every span mask is 1 (spans past every
    distance) the spans' true gradient is 0, but their hooks (the span penalty) must still run and distributed
    training must still see their parameters used."""
    return _ZeroGradThrough.apply(x, spans) if spans.requires_grad and torch.is_grad_enabled() else x


def renormalize(weights: torch.Tensor) -> torch.Tensor:
    """w / sum_j w_j over the last dim: rows re-sum to 1 after the span mask; all-zero rows stay zero.

    The paper's code divides by sum + eps to guard all-zero rows; here their sum is replaced by 1 instead, which
    keeps the gradient finite in fp16 (1 / eps overflows there) and every other row exact. The sum is taken in
    float32 for fp16/bf16 weights.
    """
    half = weights.dtype in (torch.float16, torch.bfloat16)
    total = weights.sum(dim=-1, keepdim=True, dtype=torch.float32 if half else None)
    return (weights / total.masked_fill(total == 0, 1.0)).to(weights.dtype)


def keys_needed(max_span: float, ramp: float, length: int) -> int:
    """Keys per side a query can see with nonzero mask: ceil(max_span + ramp), capped at ``length``.

    The layer's longest head sets its cost: callers crop keys (and the incremental cache) to this many most recent
    positions (decoder) or to this window on each side (encoder) without changing the result.
    """
    return int(min(length, max(0, math.ceil(float(max_span) + float(ramp)))))
