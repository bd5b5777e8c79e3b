"""Adaptive attention span (Sukhbaatar, Grave, Bojanowski, Joulin, ACL 2019, sections 3.1-3.2).

Static: one learned z' in [0, 1] per head, span z = max_span * z'. Dynamic: z_t = max_span * sigmoid(v . x_t + b) per
query token and head (b initialised to -4). The soft mask m(x) = clamp((R + z - x) / R, 0, 1) multiplies the weights
after the normalizer; the row is then renormalised (ReLA skips that). ``clamp_()`` keeps z' in [0, 1] and must be
called after each optimizer step: the forward never mutates parameters (it reads z' clamped, without writing it).

Span penalty (section 3.1: coefficient * S * mean(z') per layer, added to the per-token loss in training only): rather
than adding a term to a loss that each criterion normalises its own way, :meth:`AdaptiveSpan.attach_penalty` adds
the penalty's gradient, coefficient * W * d mean(z) / dz with W the loss's weight on this batch's tokens, to the
spans during backward. The trainer later divides every gradient by the batch's total sample size (tokens), leaving
exactly coefficient * d mean(z) / dz per layer, whatever the batch size, the number of workers, the gradient
accumulation or the fp16 loss scale.

Keys a span reaches (``keys_needed``: the band of a full pass, the incremental cache, a streaming memory) depend on
the learned spans, but reading them on a GPU would synchronise every forward. There the largest span comes from a
bound kept on the host: measured after each optimizer update (``refresh_bounds``, called with the clamp) and when
weights are loaded, and valid while ``span_frac`` is unchanged since (its version counter says so; any in-place
change, an update or a copy, retires it). Without a valid bound, the largest possible span (S) is used: the same
numbers, at the cost of cropping less.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparse_attn_fairseq.functional.host import reads_are_free
from sparse_attn_fairseq.functional.span import (
    keys_needed, log_soft_mask, renormalize, span_mask_at, span_soft_mask,
)


class AdaptiveSpan(nn.Module):
    """Learned soft span per head (static) or per query token and head (dynamic).

    Args:
        num_heads: heads of the attention layer.
        max_span: S, the largest span in tokens.
        ramp: R, length of the soft ramp in tokens (paper: 32).
        init_span: initial z' in [0, 1] for static spans (paper: 0; half the span works as well).
        dynamic: predict the span from the query features instead of learning one per head.
        embed_dim: size of the query features; required if and only if ``dynamic``.
        loss_coefficient: weight of the span penalty per layer (paper: 2e-6; 5e-7 for S = 8192); 0 disables it.

    Raises:
        ValueError: listing every invalid argument.
    """

    def __init__(self, num_heads: int, max_span: int, ramp: int = 32, init_span: float = 0.0, dynamic: bool = False,
                 embed_dim: int | None = None, loss_coefficient: float = 0.0):
        super().__init__()
        _raise_problems(_span_problems(num_heads, max_span, ramp, init_span, dynamic, embed_dim, loss_coefficient))
        self.num_heads, self.max_span, self.ramp, self.dynamic = num_heads, max_span, ramp, dynamic
        self.init_span, self.loss_coefficient = float(init_span), float(loss_coefficient)
        self.sample_size = 0.0  # this batch's criterion normaliser (a float or a tensor), set by the model
        self._host_bound: tuple[int, float] | None = None  # (span_frac's version, its largest span in tokens)
        self.loss_weight: LossWeight | None = None  # this forward's token weight in the loss, measured in backward
        if dynamic:
            self.span_proj = nn.Linear(embed_dim, num_heads)  # v and b of z_t = S sigmoid(v . x_t + b), per head
        else:
            self.span_frac = nn.Parameter(torch.empty(num_heads))  # z' in [0, 1]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.dynamic:
                nn.init.zeros_(self.span_proj.weight)
                nn.init.constant_(self.span_proj.bias, -4.0)
            else:
                self.span_frac.fill_(self.init_span)

    def spans(self, query_features: torch.Tensor | None = None) -> torch.Tensor:
        """Spans in tokens: (num_heads,) static; dynamic: (bsz, num_heads, tgt_len) from (tgt_len, bsz, embed_dim)."""
        if not self.dynamic:
            if query_features is not None:
                raise ValueError("query_features are only used by a dynamic span")
            return self.max_span * self.span_frac.clamp(0.0, 1.0)  # clamped read: z' may sit outside until clamp_()
        if query_features is None:
            raise ValueError("a dynamic span needs query_features (tgt_len, bsz, embed_dim)")
        logits = self.span_proj(query_features)  # (tgt_len, bsz, num_heads)
        return self.max_span * torch.sigmoid(logits.float()).permute(1, 2, 0)  # (bsz, num_heads, tgt_len)

    def soft_mask(self, tgt_len: int, src_len: int, causal: bool, query_offset: int = 0, key_offset: int = 0,
                  spans: torch.Tensor | None = None) -> torch.Tensor:
        """m(x) for these positions: (num_heads, tgt_len, src_len), or (bsz, num_heads, tgt_len, src_len) if dynamic.

        ``spans`` defaults to the static spans; pass ``self.spans(query_features)`` for a dynamic span.
        """
        spans = self.spans() if spans is None else spans
        return span_soft_mask(spans, self.ramp, tgt_len, src_len, causal, query_offset, key_offset)

    def forward(self, weights: torch.Tensor, causal: bool, query_offset: int = 0, key_offset: int = 0,
                spans: torch.Tensor | None = None, renorm: bool = True) -> torch.Tensor:
        """weights (bsz, num_heads, tgt_len, src_len) * m, then divided by the row sum if ``renorm``."""
        tgt_len, src_len = weights.shape[-2:]
        mask = self.soft_mask(tgt_len, src_len, causal, query_offset, key_offset, spans)  # (.., H, T, S)
        return self.apply_mask(weights, mask, renorm)  # (bsz, num_heads, tgt_len, src_len)

    def mask_at(self, dist: torch.Tensor, causal: bool, spans: torch.Tensor | None = None) -> torch.Tensor:
        """m at a (tgt_len, width) table of distances (full or banded): (num_heads, ..) or (bsz, num_heads, ..)."""
        spans = self.spans() if spans is None else spans
        return span_mask_at(spans, self.ramp, dist, causal)

    def normalize(self, normalizer: nn.Module, scores: torch.Tensor, soft: torch.Tensor,
                  renorm: bool = True) -> torch.Tensor:
        """The normalizer's weights with this span's soft mask m applied: scores (bsz, H, *rows, W) -> same shape.

        ``soft`` is m, broadcastable to the scores (e.g. (H, 1, block, W) for a banded static span); ``rows`` are
        flattened into one query axis for the normalizer. Other masked keys must already be -inf in the scores.
        Keys with m = 0 are masked, the weights are multiplied by m and renormalised (unless ``renorm`` is False,
        for ReLA). For an ``exp_family`` normalizer (softmax) that equals normalising scores + log m: one pass.
        """
        if renorm and getattr(normalizer, "exp_family", False):
            log_m = log_soft_mask(soft.to(torch.promote_types(soft.dtype, scores.dtype)))  # log in the finer dtype
            return _normalize_rows(normalizer, scores + log_m.to(scores.dtype))
        off_span = torch.zeros(soft.shape, dtype=scores.dtype, device=scores.device).masked_fill_(soft == 0, -math.inf)
        weights = _normalize_rows(normalizer, scores + off_span)  # keys with m = 0 are -inf: masked
        return self.apply_mask(weights, soft, renorm)

    @staticmethod
    def apply_mask(weights: torch.Tensor, mask: torch.Tensor, renorm: bool = True) -> torch.Tensor:
        """weights * m, divided by the row sum if ``renorm`` (all-zero rows stay 0); weights (bsz, H, T, W), m
        broadcastable."""
        out = (weights * mask).to(weights.dtype)
        return renormalize(out) if renorm else out

    def attach_penalty(self, spans: torch.Tensor, sample_size: float | None = None,
                       padding: torch.Tensor | None = None) -> None:
        """During backward, add coefficient * W * d mean(spans) / d spans to the gradient of ``spans``.

        ``spans`` are the ones this forward used (:meth:`spans`). W is the weight the loss gives this forward's
        tokens, as measured during backward in :attr:`loss_weight` (see modules/span_training.py): the penalty then
        acts as if added to every token's loss, through any loss scaling (fp16, amp) or ignored batch. Without a
        measurement, W is ``sample_size`` (default :attr:`sample_size`): this batch's share of the criterion's
        normaliser. After fairseq divides the summed gradients by the total sample size (tokens), z' receives
        coefficient * S / num_heads per layer, the gradient of coefficient * S * mean(z'). Dynamic spans
        (bsz, H, tgt_len) average over the real tokens only when ``padding`` (bsz, tgt_len), True = pad, is given.
        Nothing is attached outside autograd or with a zero coefficient.
        """
        sample_size = self.sample_size if sample_size is None else sample_size
        if self.loss_coefficient > 0 and spans.requires_grad and torch.is_grad_enabled():
            per_entry = self.loss_coefficient / spans.numel()  # d mean(z) / dz_i = 1 / numel
            if padding is not None and spans.ndim == 3:  # mean over the real tokens: pads get nothing
                real = (~padding.to(torch.bool)).to(spans.dtype)[:, None, :]  # (bsz, 1, tgt_len)
                per_entry = self.loss_coefficient * real / (real.sum() * spans.shape[1]).clamp_min(1.0)
            measured = self.loss_weight  # this forward's record; read when the hook runs
            spans.register_hook(lambda grad: grad + per_entry * (
                measured.value if measured is not None and measured.value is not None else sample_size))

    def span_loss(self, spans: torch.Tensor | None = None) -> torch.Tensor:
        """S * mean(z') (static), or the mean dynamic span in tokens (pass the spans used in the forward)."""
        if self.dynamic:
            if spans is None:
                raise ValueError("a dynamic span loss needs the spans computed in the forward")
            return spans.mean()
        return self.max_span * self.span_frac.mean()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp z' to [0, 1]; call after each optimizer step. Dynamic spans are bounded by the sigmoid: no-op."""
        if not self.dynamic:
            self.span_frac.clamp_(0.0, 1.0)

    @torch.no_grad()
    def current_spans(self, query_features: torch.Tensor | None = None) -> torch.Tensor:
        """Spans in tokens, detached, for logging: (num_heads,) or, dynamic, (bsz, num_heads, tgt_len)."""
        return self.spans(query_features).clamp(0, self.max_span).detach()

    def cache_keys(self, length: int) -> int:
        """Keys an incremental cache must keep: the static spans' window, or the largest possible one if dynamic."""
        return keys_needed(self.max_span, self.ramp, length) if self.dynamic else self.keys_needed(length)

    def keys_needed(self, length: int, spans: torch.Tensor | None = None) -> int:
        """Most recent keys (per side) with a nonzero mask: ceil(largest span + ramp), capped at ``length``.

        The largest span is read from ``spans`` (default: the current ones) on the CPU; elsewhere it is
        :meth:`host_bound` (no synchronisation)."""
        probe = self.span_proj.weight if self.dynamic else self.span_frac
        if not reads_are_free(probe if spans is None else spans):
            return keys_needed(self.host_bound(), self.ramp, length)
        spans = self.current_spans() if spans is None else spans.detach()
        largest = float(spans.max()) if spans.numel() else 0.0
        return keys_needed(min(largest, self.max_span), self.ramp, length)

    def host_bound(self) -> float:
        """A bound of the largest span in tokens known on the host: the one measured by :func:`refresh_bounds` or at
        load while ``span_frac`` has not changed since, else S (and always S for a dynamic span)."""
        bound = self._host_bound
        if self.dynamic or bound is None or bound[0] != self.span_frac._version:
            return float(self.max_span)
        return bound[1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        saved = state_dict.get(prefix + "span_frac")
        if not self.dynamic and saved is not None and saved.shape == self.span_frac.shape:
            # checkpoints load on the CPU: reading them is free
            largest = self.max_span * float(saved.detach().clamp(0.0, 1.0).max()) if saved.numel() else 0.0
            self._host_bound = (self.span_frac._version, largest)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, max_span={self.max_span}, ramp={self.ramp}, dynamic={self.dynamic}, "
                f"loss_coefficient={self.loss_coefficient}")


@torch.no_grad()
def refresh_bounds(spans) -> None:
    """Measure the largest span of every static :class:`AdaptiveSpan` in ``spans`` with one read from the device
    (after an optimizer update and its clamp, outside any forward): their :meth:`AdaptiveSpan.host_bound`."""
    static = [span for span in spans if not span.dynamic and span.span_frac.numel()]
    if not static:
        return
    largest = torch.stack([span.span_frac.detach().max().clamp(0.0, 1.0) * span.max_span for span in static])
    for span, value in zip(static, largest.tolist()):
        span._host_bound = (span.span_frac._version, float(value))


class LossWeight:
    """The weight a loss gives one forward's tokens, summed during backward (None until measured): the number of
    target tokens, times any loss scale (fp16, amp), 0 for a batch whose loss is ignored."""

    def __init__(self):
        self.value: torch.Tensor | None = None
        self.unchecked: list[torch.Tensor] = []  # token-weight extremes still to check (span_training.py)

    def add(self, weight: torch.Tensor) -> None:
        self.value = weight if self.value is None else self.value + weight


def _normalize_rows(normalizer: nn.Module, scores: torch.Tensor) -> torch.Tensor:
    """normalizer over scores (bsz, H, *rows, W), the row dims flattened into the (bsz, H, T, W) it expects."""
    if scores.ndim == 4:
        return normalizer(scores)
    return normalizer(scores.flatten(2, -2)).view(scores.shape)


def _span_problems(num_heads, max_span, ramp, init_span, dynamic, embed_dim, loss_coefficient) -> list[str]:
    checks = [
        (isinstance(num_heads, int) and num_heads >= 1, f"num_heads={num_heads!r} must be a positive int"),
        (max_span > 0, f"max_span={max_span!r} must be > 0"),
        (ramp > 0, f"ramp={ramp!r} must be > 0"),
        (0.0 <= init_span <= 1.0, f"init_span={init_span!r} must lie in [0, 1] (a fraction of max_span)"),
        (not dynamic or (embed_dim or 0) > 0, "dynamic=True needs embed_dim > 0"),
        (dynamic or embed_dim is None, f"embed_dim={embed_dim!r} is only used with dynamic=True"),
        (loss_coefficient >= 0, f"loss_coefficient={loss_coefficient!r} must be >= 0"),
    ]
    return [message for ok, message in checks if not ok]


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise ValueError("AdaptiveSpan: " + "; ".join(problems))
