"""ReLA output normalisation (Zhang, Titov, Sennrich, EMNLP 2021, section 3.2).

The unnormalised ReLA weights can make the attention output any size, so the concatenated head outputs o
(..., embed_dim) go through RMSNorm with a learned gain (init 1, eps 1e-8) before the output projection:

- variant "gated" (ReLA-g, the authors' default): y = rms_norm(o, g) * sigmoid(w * o), w a learned embed_dim vector,
  initialised as the authors' code does ("glorot", see GATE_INITS) or to ones.
- variant "init" (ReLA-i): no gate; the gain starts as a small random Xavier-style vector. The paper's text could not
  be read here; this follows third-party ports (unverified), see /work/shared/SPEC.md section 2.
- per_head=True normalises each head_dim slice on its own (a common variant of ports), still one gain per channel.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparse_attn_fairseq.functional.rela import rms_norm

VARIANTS = ("gated", "init")
# Initial gate weight w of ReLA-g: "ones", or "glorot", the small random values U(-sqrt(3/d), sqrt(3/d)) the authors'
# TensorFlow code gets from its default initialiser (bzhangGo/zero, modules/rela.py: `gate` has no initializer of its own,
# so the model's variance-scaling fan-avg uniform initialiser applies; for a (d,) vector that is U(+-sqrt(3/d))).
GATE_INITS = ("ones", "glorot")


class RelaOutputNorm(nn.Module):
    """y = RMSNorm(o) [* sigmoid(w * o)] over the concatenated heads; input and output (..., embed_dim).

    Args:
        embed_dim: d_model, the concatenation of num_heads heads of size embed_dim // num_heads.
        num_heads: number of heads (used by ``per_head``).
        variant: "gated" (ReLA-g) or "init" (ReLA-i).
        per_head: normalise each head's slice separately instead of all of embed_dim.
        eps: added to the mean square.
        gate_init: the gated variant's initial gate weight, one of GATE_INITS.

    Raises:
        ValueError: unknown variant or gate_init, or embed_dim not divisible by num_heads (every problem listed).
    """

    def __init__(
        self, embed_dim: int, num_heads: int, variant: str = "gated", per_head: bool = False, eps: float = 1e-8,
        gate_init: str = "ones",
    ):
        super().__init__()
        problems = []
        if variant not in VARIANTS:
            problems.append(f"variant={variant!r} not in {VARIANTS}")
        if gate_init not in GATE_INITS:
            problems.append(f"gate_init={gate_init!r} not in {GATE_INITS}")
        if num_heads < 1 or embed_dim % num_heads:
            problems.append(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if problems:
            raise ValueError("RelaOutputNorm: " + "; ".join(problems))
        self.embed_dim, self.num_heads, self.variant = embed_dim, num_heads, variant
        self.per_head, self.eps, self.gate_init = per_head, eps, gate_init
        self.gain = nn.Parameter(torch.empty(embed_dim))
        self.gate_weight = nn.Parameter(torch.empty(embed_dim)) if variant == "gated" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.variant == "gated":
                self.gain.fill_(1.0)
                if self.gate_init == "ones":
                    self.gate_weight.fill_(1.0)
                else:
                    bound = math.sqrt(3.0 / self.embed_dim)
                    self.gate_weight.uniform_(-bound, bound)
            else:  # Xavier-uniform bound for a (1, embed_dim) weight
                bound = math.sqrt(6.0 / (1 + self.embed_dim))
                self.gain.uniform_(-bound, bound)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        """attn: (..., embed_dim) concatenated head outputs -> (..., embed_dim)."""
        if self.per_head:
            heads = attn.unflatten(-1, (self.num_heads, -1))  # (..., num_heads, head_dim)
            gain = self.gain.view(self.num_heads, -1)  # (num_heads, head_dim)
            out = rms_norm(heads, gain, self.eps).flatten(-2)  # (..., embed_dim)
        else:
            out = rms_norm(attn, self.gain, self.eps)
        if self.gate_weight is not None:
            out = out * torch.sigmoid(self.gate_weight * attn)
        return out.to(attn.dtype)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, variant={self.variant!r}, "
            f"per_head={self.per_head}, eps={self.eps}, gate_init={self.gate_init!r}"
        )
