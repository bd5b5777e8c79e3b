"""Training hooks of the adaptive-span models (Sukhbaatar et al., ACL 2019): span penalty and clamping.

Span penalty. The paper adds coefficient * S * mean(z') per layer to the per-token loss. fairseq's criteria return a
*summed* loss and the trainer divides all gradients by the batch's total sample size (target tokens, or sentences
with --sentence-avg) after backward and after summing over workers and accumulated batches. A term added to the
loss would need the same scaling, and stock criteria cannot add it. So before each training forward the model
records this batch's sample size, and each layer's AdaptiveSpan adds coefficient * sample_size * d mean(z) / dz to
its spans' gradient during backward (``AdaptiveSpan.attach_penalty``). After fairseq's division every z' receives
exactly coefficient * S / num_heads, the gradient of the paper's term: independent of batch size, number of workers
and --update-freq, with any criterion that normalises by tokens or sentences (cross_entropy,
label_smoothed_cross_entropy, adaptive_loss, ...). The reported loss excludes the penalty.

Loss scaling. fp16 and amp training multiply the loss by a scale before backward and divide every gradient by it
after; the added gradient must be scaled too. The model's ``get_normalized_probs`` passes the log-probabilities
through an identity whose backward reads the scale: NLL-type criteria (cross_entropy, label_smoothed_cross_entropy)
put gradients summing to -1 on each target token's log-probabilities, so their sum is -scale * tokens. fairseq's
scales are powers of two; the estimate is rounded to one. Criteria that never call ``get_normalized_probs``
(adaptive_loss) leave the scale at 1, which is right without fp16.

Clamping. fairseq calls ``model.set_num_updates`` before every training step (``FairseqTask.train_step``), i.e.
after each optimizer update, and when a checkpoint is loaded: z' is clamped to [0, 1] there. Forward passes read z'
clamped (without writing it), so a checkpoint saved right after an update also behaves as clamped.
"""

from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor, nn

from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan


def span_modules(model: nn.Module) -> List[AdaptiveSpan]:
    return [m for m in model.modules() if isinstance(m, AdaptiveSpan)]


class _LossScaleProbe(torch.autograd.Function):
    """Identity on log-probabilities (bsz, tgt_len, vocab); backward reports the loss scale to ``on_scale``."""

    @staticmethod
    def forward(ctx, lprobs: Tensor, tokens: int, on_scale) -> Tensor:
        ctx.tokens, ctx.on_scale = tokens, on_scale
        return lprobs.view_as(lprobs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        estimate = -float(grad.float().sum()) / ctx.tokens  # loss scale: each target token's gradients sum to -scale
        if estimate > 0 and math.isfinite(estimate):
            ctx.on_scale(2.0 ** round(math.log2(estimate)))
        return grad, None, None


class AdaptiveSpanTraining:
    """Mixin for a fairseq model with adaptive spans; set ``span_sentence_avg`` (the criterion's --sentence-avg)."""

    span_sentence_avg = False

    def set_span_sample_size(self, tokens: Tensor, pad: int) -> None:
        """Record this batch's criterion normaliser from the decoder input (bsz, tgt_len): its non-pad tokens
        (the target tokens: same count), or its sentences with --sentence-avg."""
        if not self.training:
            return
        self.span_tokens = int(tokens.ne(pad).sum())
        sample_size = tokens.size(0) if self.span_sentence_avg else self.span_tokens
        for span in span_modules(self):
            span.sample_size, span.loss_scale = float(sample_size), 1.0

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        """fairseq's, with the loss-scale probe on training log-probabilities when a span penalty is active."""
        probs = super().get_normalized_probs(net_output, log_probs, sample)
        spans = span_modules(self)
        penalized = any(span.loss_coefficient > 0 for span in spans)
        if self.training and log_probs and probs.requires_grad and penalized and getattr(self, "span_tokens", 0) > 0:
            probs = _LossScaleProbe.apply(probs, self.span_tokens, lambda scale: self._set_loss_scale(spans, scale))
        return probs

    @staticmethod
    def _set_loss_scale(spans: List[AdaptiveSpan], scale: float) -> None:
        for span in spans:
            span.loss_scale = scale

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.clamp_spans_()

    @torch.no_grad()
    def clamp_spans_(self) -> None:
        """z' to [0, 1] in every layer (after each update; never inside a forward)."""
        for span in span_modules(self):
            span.clamp_()
