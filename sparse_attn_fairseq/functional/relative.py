"""Relative key positions (Sukhbaatar et al., ACL 2019, section 4; Transformer-XL's key-side term).

Every distance d = query - key >= 0 has a learned embedding e_d; the score of a query q and a key at distance d gains
q . e_d. The products q . e_d are computed once per query for the distances it can reach (a matmul with the first
``reach`` embeddings) and then gathered onto the keys: the same for full, banded and incremental layouts.
"""

from __future__ import annotations

import torch


def relative_scores(q: torch.Tensor, table: torch.Tensor, dist: torch.Tensor, reach: int) -> torch.Tensor:
    """q . e_dist for every query and key: q (..., T, d), table (D, d), dist (T, W) -> (..., T, W).

    ``reach`` bounds the distances needed (<= D): dist is clamped into [0, reach), so future keys (dist < 0) and keys
    beyond the table read the nearest embedding; callers mask those keys (a causal or span mask).
    """
    reach = max(1, min(int(reach), table.size(0)))
    by_distance = torch.matmul(q, table[:reach].to(q.dtype).transpose(0, 1))  # (..., T, reach)
    index = dist.to(device=q.device, dtype=torch.long).clamp(0, reach - 1)  # (T, W)
    return torch.gather(by_distance, -1, index.expand(*by_distance.shape[:-1], index.size(-1)))
