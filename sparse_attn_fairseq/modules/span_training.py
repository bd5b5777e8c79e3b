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

Clamping. fairseq calls ``model.set_num_updates`` before every training step (``FairseqTask.train_step``), i.e.
after each optimizer update, and when a checkpoint is loaded: z' is clamped to [0, 1] there. Forward passes read z'
clamped (without writing it), so a checkpoint saved right after an update also behaves as clamped.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan


def span_modules(model: nn.Module) -> List[AdaptiveSpan]:
    return [m for m in model.modules() if isinstance(m, AdaptiveSpan)]


class AdaptiveSpanTraining:
    """Mixin for a fairseq model with adaptive spans; set ``span_sentence_avg`` (the criterion's --sentence-avg)."""

    span_sentence_avg = False

    def set_span_sample_size(self, tokens: Tensor, pad: int) -> None:
        """Record this batch's criterion normaliser from the decoder input (bsz, tgt_len): its non-pad tokens
        (the target tokens: same count), or its sentences with --sentence-avg."""
        if not self.training:
            return
        sample_size = tokens.size(0) if self.span_sentence_avg else int(tokens.ne(pad).sum())
        for span in span_modules(self):
            span.sample_size = float(sample_size)

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.clamp_spans_()

    @torch.no_grad()
    def clamp_spans_(self) -> None:
        """z' to [0, 1] in every layer (after each update; never inside a forward)."""
        for span in span_modules(self):
            span.clamp_()
