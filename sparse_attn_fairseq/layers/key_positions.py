"""Learned relative key positions of the adaptive-span language model (Sukhbaatar et al., ACL 2019, section 4)."""

from __future__ import annotations

import torch
from torch import nn

from sparse_attn_fairseq.functional.relative import relative_scores


class KeyPositions(nn.Module):
    """One embedding e_d per distance d in [0, num_distances) and head dimension; scores gain q . e_d.

    As in the paper, one table serves every head and every layer of a model (the decoder owns it and lends it to
    its attentions). Initialised N(0, 1), as the authors' ``key_pe``.

    Args:
        num_distances: distances covered, at least the largest span plus the ramp (farther keys are masked).
        head_dim: size of a head's queries.
    """

    def __init__(self, num_distances: int, head_dim: int):
        super().__init__()
        if num_distances < 1 or head_dim < 1:
            raise ValueError(f"KeyPositions: num_distances={num_distances} and head_dim={head_dim} must be >= 1")
        self.weight = nn.Parameter(torch.empty(num_distances, head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, 1.0)

    def forward(self, q: torch.Tensor, dist: torch.Tensor, reach: int) -> torch.Tensor:
        """q (..., T, head_dim), distances (T, W) -> the position term (..., T, W); see relative_scores."""
        return relative_scores(q, self.weight, dist, reach)

    def extra_repr(self) -> str:
        return f"num_distances={self.weight.size(0)}, head_dim={self.weight.size(1)}"
