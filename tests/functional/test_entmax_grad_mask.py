"""Closed-form gradients (float64 gradcheck, scores and alpha) and the shared masking semantics."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparse_attn_fairseq.functional.entmax import entmax15, entmax_alpha, softmax_masked, sparsemax
from tests.tolerances import GRADCHECK, max_err

REPO = Path(__file__).resolve().parents[2]

NORMALIZERS = {
    "softmax": softmax_masked,
    "sparsemax": sparsemax,
    "entmax15": entmax15,
    "entmax_1.3": lambda s, m=None, dim=-1: entmax_alpha(s, 1.3, m, dim),
    "entmax_per_row": lambda s, m=None, dim=-1: entmax_alpha(s, _row_alpha(s, dim), m, dim),
}


def _row_alpha(s, dim=-1):
    shape = list(s.shape)
    shape[dim] = 1
    n = max(1, torch.Size(shape).numel())
    return torch.linspace(1.05, 2.0, n, dtype=s.dtype if s.dtype == torch.float64 else torch.float32).view(shape)


def rand(*shape, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


@pytest.mark.parametrize("alpha_value", [1.01, 1.2, 1.5, 1.8, 1.995])
def test_gradcheck_scores_and_alpha(alpha_value):
    x = rand(2, 3, 6).requires_grad_()
    alpha = torch.full((3, 1), alpha_value, dtype=torch.float64)
    alpha = (alpha + torch.tensor([[0.0], [0.003], [-0.003]], dtype=torch.float64)).requires_grad_()  # in (1, 2)
    assert torch.autograd.gradcheck(lambda s, a: entmax_alpha(s, a), (x, alpha), **GRADCHECK)


def test_gradcheck_with_mask_and_other_dim():
    x = rand(3, 5, 4, seed=1).requires_grad_()
    mask = rand(3, 5, 4, seed=2) > 0.8
    mask[0, :, 1] = True  # a fully masked "row" along dim=1
    alpha = (1.0 + torch.rand(3, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    alpha = alpha.clamp(1.05, 2.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, a: entmax_alpha(s, a, mask, dim=1), (x, alpha), **GRADCHECK)
    for fn in (sparsemax, entmax15, softmax_masked):
        assert torch.autograd.gradcheck(lambda s: fn(s, mask, dim=1), (x,), **GRADCHECK)


def test_alpha_gradient_sums_over_broadcast_rows():
    x = rand(4, 2, 3, 7).requires_grad_()  # (bsz, num_heads, tgt_len, src_len)
    alpha = torch.tensor([1.3, 1.7], dtype=torch.float64).view(2, 1, 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, a: entmax_alpha(s, a), (x, alpha), **GRADCHECK)
    scalar = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, a: entmax_alpha(s, a), (x, scalar), **GRADCHECK)


@pytest.mark.parametrize("name", list(NORMALIZERS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_masking_semantics(name, dtype):
    fn = NORMALIZERS[name]
    x = rand(2, 3, 9).to(dtype)
    mask = torch.zeros(2, 3, 9, dtype=torch.bool)
    mask[0, 1] = True  # fully masked row
    mask[1, :, ::2] = True  # partially masked rows
    x_inf = x.masked_fill(mask, float("-inf"))
    x_fin = x.masked_fill(mask, torch.finfo(dtype).min)
    x_big = x.masked_fill(mask, -1e9) if dtype not in (torch.float16,) else x_fin
    outs = []
    for scores, m in ((x, mask), (x_inf, None), (x_fin, None), (x_big, None), (x_inf, mask)):
        leaf = scores.clone().requires_grad_()
        out = fn(leaf, m)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dtype))
        assert out.dtype == dtype and not out.isnan().any() and not leaf.grad.isnan().any()
        assert torch.equal(out[mask], torch.zeros_like(out[mask]))
        assert torch.equal(leaf.grad[0, 1], torch.zeros_like(leaf.grad[0, 1]))  # fully masked row: zero gradient
        assert torch.equal(leaf.grad[mask], torch.zeros_like(leaf.grad[mask]))
        outs.append(out)
    for out in outs[1:]:
        assert max_err(out, outs[0]) == 0.0  # -inf, finite mask values and a bool mask behave the same
    live = out.sum(-1)[~mask.all(-1)]
    assert max_err(live, torch.ones_like(live)) <= 1e-2


def test_all_rows_masked():
    for fn in NORMALIZERS.values():
        x = torch.full((2, 3), float("-inf"), requires_grad=True)
        out = fn(x)
        out.sum().backward()
        assert torch.equal(out, torch.zeros(2, 3)) and torch.equal(x.grad, torch.zeros(2, 3))


def test_softmax_masked_matches_torch():
    x = rand(3, 4, 10)
    mask = rand(3, 4, 10, seed=5) > 1.0
    assert max_err(softmax_masked(x, mask), torch.softmax(x.masked_fill(mask, float("-inf")), -1)) <= 1e-15
    assert torch.equal(softmax_masked(x.float()), torch.softmax(x.float(), -1))


def test_mask_must_be_bool_and_broadcast():
    x = rand(2, 5)
    with pytest.raises(TypeError, match="bool"):
        sparsemax(x, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="broadcast"):
        entmax15(x, torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="broadcast"):
        entmax15(x, torch.zeros(1, 2, 5, dtype=torch.bool))  # more dims than the scores
    assert torch.equal(entmax15(x, torch.zeros(1, 5, dtype=torch.bool)), entmax15(x))


def test_first_call_does_not_import_sympy():
    """torch.broadcast_shapes imports sympy on first use (0.25 s, inside fairseq-generate's timed loop)."""
    code = ("import sys, torch; from sparse_attn_fairseq.functional.entmax import entmax_alpha; "
            "entmax_alpha(torch.randn(2, 3, 5), torch.full((3, 1), 1.3), torch.zeros(5, dtype=torch.bool)); "
            "print('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_broadcast_mask_equals_full_mask(name):
    """A broadcast mask takes the additive path in masking.fill_masked, a full-size one masked_fill: same results."""
    fn = NORMALIZERS[name]
    x = rand(2, 3, 4, 9, seed=7)
    key_padding = torch.zeros(2, 1, 1, 9, dtype=torch.bool)
    key_padding[0, ..., 5:] = True
    key_padding[1] = True  # a fully masked batch element
    outs, grads = [], []
    for mask in (key_padding, key_padding.expand(2, 3, 4, 9).clone()):
        leaf = x.clone().requires_grad_()
        out = fn(leaf, mask)
        out.backward(torch.ones_like(out))
        outs.append(out)
        grads.append(leaf.grad)
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert torch.equal(outs[0][1], torch.zeros(3, 4, 9)) and torch.equal(grads[0][1], torch.zeros(3, 4, 9))
