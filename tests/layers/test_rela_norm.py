"""RelaOutputNorm: gated / init variants, per-head option."""

import math

import pytest
import torch

from sparse_attn_fairseq.layers.rela_norm import RelaOutputNorm
from tests.tolerances import ATOL, CLOSED_FORM, max_err


def test_gated_hand_computed():
    norm = RelaOutputNorm(embed_dim=2, num_heads=1)
    x = torch.tensor([[3.0, 4.0]])
    rms = math.sqrt(12.5 + 1e-8)
    expected = torch.tensor([[3 / rms / (1 + math.exp(-3)), 4 / rms / (1 + math.exp(-4))]])
    assert max_err(norm(x), expected) <= ATOL[torch.float32]
    assert torch.equal(norm.gain.data, torch.ones(2)) and norm.gate_weight is not None


def test_init_variant_has_small_random_gain_and_no_gate():
    torch.manual_seed(0)
    norm = RelaOutputNorm(512, 8, variant="init")
    assert norm.gate_weight is None
    bound = math.sqrt(6 / 513)
    assert norm.gain.abs().max() <= bound and norm.gain.std() > bound / 4
    x = torch.randn(3, 512)
    assert max_err(norm(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-8).sqrt() * norm.gain) <= CLOSED_FORM


def test_per_head_normalises_each_slice():
    norm = RelaOutputNorm(6, 3, variant="init", per_head=True)
    x = torch.randn(4, 5, 6)
    slices = x.view(4, 5, 3, 2)
    expected = (slices / slices.pow(2).mean(-1, keepdim=True).add(1e-8).sqrt()).reshape(4, 5, 6) * norm.gain
    assert max_err(norm(x), expected) <= CLOSED_FORM
    assert "per_head=True" in repr(norm)


def test_half_and_errors():
    norm = RelaOutputNorm(8, 2)
    out = norm(torch.randn(2, 8).half())
    assert out.dtype == torch.float16
    with pytest.raises(ValueError, match="variant='x'.*divisible"):
        RelaOutputNorm(7, 2, variant="x")


def test_gate_init_glorot_is_the_authors_small_uniform():
    """bzhangGo/zero leaves the gate to its variance-scaling (fan_avg, uniform) default: U(-sqrt(3/d), sqrt(3/d))."""
    torch.manual_seed(0)
    norm = RelaOutputNorm(512, 8, gate_init="glorot")
    bound = math.sqrt(3 / 512)
    assert norm.gate_weight.abs().max() <= bound and norm.gate_weight.std() > bound / 4
    assert torch.equal(norm.gain.data, torch.ones(512)) and "gate_init='glorot'" in repr(norm)
    assert torch.equal(RelaOutputNorm(4, 2, gate_init="ones").gate_weight.data, torch.ones(4))
    with pytest.raises(ValueError, match="gate_init='zeros'"):
        RelaOutputNorm(4, 2, gate_init="zeros")
