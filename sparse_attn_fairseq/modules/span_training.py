"""Training hooks of the adaptive-span models (Sukhbaatar et al., ACL 2019): span penalty and clamping.

Span penalty. The paper adds coefficient * S * mean(z') per layer to the per-token loss. fairseq's criteria return a
*summed* loss, which fp16 and amp training multiply by a loss scale before backward, and the trainer divides all
gradients by the scale and by the batch's total sample size (target tokens, or sentences with --sentence-avg). A
term added to the loss would need all of that, and stock criteria cannot add it. So each layer's AdaptiveSpan adds
coefficient * W * d mean(z) / dz to its spans' gradient during backward (``AdaptiveSpan.attach_penalty``), where W
is the weight the loss gives this batch's tokens, measured in backward: the model's ``get_normalized_probs`` passes
the training log-probabilities through an identity whose backward sums their gradient. NLL-type criteria
(cross_entropy, label_smoothed_cross_entropy) put gradients summing to -1 on each target token's log-probabilities,
so W = -sum is the number of tokens in the loss, times the loss scale, and 0 for fairseq's ignored (dummy) batches.
The result is exactly the gradient of the paper's term added to every token's loss: after fairseq's division every
z' receives coefficient * S / num_heads (per token; with --sentence-avg the penalty, like the data term, is summed
over each sentence's tokens), independent of batch size, workers, --update-freq and loss scaling. Criteria that
never call ``get_normalized_probs`` (adaptive_loss) fall back to the batch's target tokens counted before the
forward, which is right without fp16. The reported loss excludes the penalty.

The measurement assumes every target token weighs the same in the loss. The first training steps check it: each
target position's log-probability gradients must sum to the same negative value (padding: 0). A token-weighted or
sequence-level loss fails the check with :class:`SpanPenaltyError`, naming what was seen, rather than a silently
rescaled penalty.

Clamping. fairseq calls ``model.set_num_updates`` before every training step (``FairseqTask.train_step``), i.e.
after each optimizer update, and when a checkpoint is loaded: z' is clamped to [0, 1] there. Forward passes read z'
clamped (without writing it), so a checkpoint saved right after an update also behaves as clamped.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from sparse_attn_fairseq.functional.host import reads_are_free
from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan, LossWeight, refresh_bounds


def span_modules(model: nn.Module) -> List[AdaptiveSpan]:
    return [m for m in model.modules() if isinstance(m, AdaptiveSpan)]


PROBE_CHECKS = 3  # training steps whose loss-weight measurement is checked (one host sync each)


class SpanPenaltyError(RuntimeError):
    """The loss does not weigh every target token equally, so the span penalty's weight cannot be measured."""


def token_weight_range(rows: Tensor) -> Tensor:
    """(lowest, highest) of the nonzero entries of ``rows`` as one tensor, (inf, -inf) if none: no host read."""
    real = rows != 0
    low = torch.where(real, rows, torch.full_like(rows, float("inf"))).min()
    high = torch.where(real, rows, torch.full_like(rows, float("-inf"))).max()
    return torch.stack([low, high])


def check_token_weights(rows: Tensor) -> None:
    """``rows``: the summed log-probability gradient of each target position. NLL-type losses give every real
    token the same negative sum (minus the loss scale) and padding 0; raise SpanPenaltyError otherwise."""
    check_token_weight_range(token_weight_range(rows))


def check_token_weight_range(extremes: Tensor) -> None:
    """Raise SpanPenaltyError unless the (lowest, highest) per-token sums of :func:`token_weight_range` agree."""
    low, high = extremes.tolist()
    if low == float("inf"):  # no real token
        return
    if high >= 0 or (high - low) > 1e-3 * abs(low):
        raise SpanPenaltyError(
            "the adaptive span penalty needs a loss that weighs every target token equally (cross_entropy, "
            "label_smoothed_cross_entropy, adaptive_span_loss): the gradients of this criterion's target "
            f"log-probabilities sum to between {low:.4g} and {high:.4g} per token (expected one negative value). "
            "A token-weighted or sequence-level loss would rescale the penalty silently: use such a criterion with "
            "--adaptive-span-loss 0, or add the penalty to its loss yourself (AdaptiveSpan.span_loss)")


class _LossWeightProbe(torch.autograd.Function):
    """Identity on log-probabilities (bsz, tgt_len, vocab); backward adds -sum(grad) to a LossWeight. In the first
    PROBE_CHECKS steps it also checks the per-token sums: at once on the CPU; on a GPU the extremes wait on the
    device in the record, and the model checks them after the update (``set_num_updates``), with no sync in
    backward."""

    @staticmethod
    def forward(ctx, lprobs: Tensor, record: LossWeight, check: bool) -> Tensor:
        ctx.record, ctx.check = record, check
        return lprobs.view_as(lprobs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows = grad.sum(-1, dtype=torch.float32)  # one sum per target position
        if ctx.check:
            if reads_are_free(rows):
                check_token_weights(rows)
            else:
                ctx.record.unchecked.append(token_weight_range(rows))
        ctx.record.add(-rows.sum())
        return grad, None, None


class AdaptiveSpanTraining:
    """Mixin for a fairseq model with adaptive spans (list it before the fairseq model class)."""

    def set_span_sample_size(self, tokens: Tensor, pad: int) -> None:
        """Before a training forward: record the batch's target tokens (the non-pad tokens of the decoder input
        (bsz, tgt_len): same count), the penalty's weight if the loss's is not measured, and start this forward's
        loss-weight record."""
        if not self.training:
            return
        sample_size = tokens.ne(pad).sum().to(torch.float32)  # a tensor: no host read
        previous = getattr(self, "span_loss_weight", None)
        self.span_loss_weight = LossWeight()
        if previous is not None:  # checks still waiting (gradient accumulation: several forwards per update)
            self.span_loss_weight.unchecked = previous.unchecked
        for span in span_modules(self):
            span.sample_size, span.loss_weight = sample_size, self.span_loss_weight

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        """fairseq's, with the loss-weight probe on training log-probabilities when a span penalty is active."""
        probs = super().get_normalized_probs(net_output, log_probs, sample)
        record = getattr(self, "span_loss_weight", None)
        if self.training and log_probs and record is not None and probs.requires_grad and self._span_penalized():
            checks = getattr(self, "_span_probe_checks", PROBE_CHECKS)
            self._span_probe_checks = max(0, checks - 1)
            probs = _LossWeightProbe.apply(probs, record, checks > 0)
        return probs

    def _span_penalized(self) -> bool:
        return any(span.loss_coefficient > 0 for span in span_modules(self))

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.clamp_spans_()
        record = getattr(self, "span_loss_weight", None)
        while record is not None and record.unchecked:
            check_token_weight_range(record.unchecked.pop(0))

    @torch.no_grad()
    def clamp_spans_(self) -> None:
        """z' to [0, 1] in every layer, and their largest spans measured for the host (after each update; never
        inside a forward)."""
        spans = span_modules(self)
        for span in spans:
            span.clamp_()
        refresh_bounds(spans)
