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

Clamping. fairseq calls ``model.set_num_updates`` before every training step (``FairseqTask.train_step``), i.e.
after each optimizer update, and when a checkpoint is loaded: z' is clamped to [0, 1] there. Forward passes read z'
clamped (without writing it), so a checkpoint saved right after an update also behaves as clamped.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan, LossWeight


def span_modules(model: nn.Module) -> List[AdaptiveSpan]:
    return [m for m in model.modules() if isinstance(m, AdaptiveSpan)]


class _LossWeightProbe(torch.autograd.Function):
    """Identity on log-probabilities (bsz, tgt_len, vocab); backward adds -sum(grad) to a LossWeight (no sync)."""

    @staticmethod
    def forward(ctx, lprobs: Tensor, record: LossWeight) -> Tensor:
        ctx.record = record
        return lprobs.view_as(lprobs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.record.add(-grad.sum(dtype=torch.float32))
        return grad, None


class AdaptiveSpanTraining:
    """Mixin for a fairseq model with adaptive spans (list it before the fairseq model class)."""

    def set_span_sample_size(self, tokens: Tensor, pad: int) -> None:
        """Before a training forward: record the batch's target tokens (the non-pad tokens of the decoder input
        (bsz, tgt_len): same count), the penalty's weight if the loss's is not measured, and start this forward's
        loss-weight record."""
        if not self.training:
            return
        sample_size = int(tokens.ne(pad).sum())
        self.span_loss_weight = LossWeight()
        for span in span_modules(self):
            span.sample_size, span.loss_weight = float(sample_size), self.span_loss_weight

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        """fairseq's, with the loss-weight probe on training log-probabilities when a span penalty is active."""
        probs = super().get_normalized_probs(net_output, log_probs, sample)
        record = getattr(self, "span_loss_weight", None)
        if self.training and log_probs and record is not None and probs.requires_grad and self._span_penalized():
            probs = _LossWeightProbe.apply(probs, record)
        return probs

    def _span_penalized(self) -> bool:
        return any(span.loss_coefficient > 0 for span in span_modules(self))

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.clamp_spans_()

    @torch.no_grad()
    def clamp_spans_(self) -> None:
        """z' to [0, 1] in every layer (after each update; never inside a forward)."""
        for span in span_modules(self):
            span.clamp_()
