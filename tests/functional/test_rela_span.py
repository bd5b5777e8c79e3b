"""ReLA weights, RMSNorm and the adaptive-span mask: hand-computed cases and references."""

import math

import pytest
import torch

from sparse_attn_fairseq.functional.reference import span_mask_reference
from sparse_attn_fairseq.functional.rela import rela_weights, rms_norm
from sparse_attn_fairseq.functional.span import keys_needed, renormalize, span_distances, span_soft_mask
from tests.tolerances import ATOL, max_err


def test_rela_weights_zero_masked_before_relu():
    x = torch.tensor([[1.5, -2.0, 3.0, float("-inf")]], requires_grad=True)
    mask = torch.tensor([[False, False, True, True]])
    out = rela_weights(x, mask)
    assert torch.equal(out, torch.tensor([[1.5, 0.0, 0.0, 0.0]]))
    out.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # no NaN from the -inf entry


def test_rela_weights_null_rows_and_dtypes():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = -torch.rand(2, 3, 5).to(dtype)
        out = rela_weights(x)
        assert out.dtype == dtype and torch.equal(out, torch.zeros_like(out))  # "null attention" rows


def test_rms_norm_hand_computed():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    gain = torch.tensor([2.0, 0.5])
    rms = math.sqrt((9 + 16) / 2 + 1e-8)
    expected = torch.tensor([[2 * 3 / rms, 0.5 * 4 / rms], [0.0, 0.0]])
    assert max_err(rms_norm(x, gain), expected) <= ATOL[torch.float32]
    half = rms_norm(x.half(), gain)
    assert half.dtype == torch.float16 and max_err(half, expected) <= ATOL[torch.float16] * 3


def test_span_mask_hand_computed():
    # z = 1, R = 2: m(x) = clamp((3 - x) / 2, 0, 1) -> x = 0, 1: 1; x = 2: 0.5; x >= 3: 0.
    causal = span_soft_mask(torch.tensor([1.0]), 2.0, 4, 4, causal=True)[0]
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0.5, 1, 1, 0], [0, 0.5, 1, 1]], dtype=torch.float32)
    assert torch.equal(causal, expected)
    encoder = span_soft_mask(torch.tensor([1.0]), 2.0, 3, 4, causal=False)[0]
    expected = torch.tensor([[1, 1, 0.5, 0], [1, 1, 1, 0.5], [0.5, 1, 1, 1]], dtype=torch.float32)
    assert torch.equal(encoder, expected)


@pytest.mark.parametrize("causal", [True, False])
def test_span_mask_matches_reference_with_offsets(causal):
    span = torch.tensor([0.0, 2.5, 7.0])
    for q_off, k_off in ((0, 0), (5, 2), (9, 0)):
        got = span_soft_mask(span, 3.0, 4, 6, causal, q_off, k_off)
        assert max_err(got, span_mask_reference(span, 3.0, 4, 6, causal, q_off, k_off)) <= ATOL[torch.float32]


def test_incremental_offsets_match_full_mask():
    span = torch.tensor([1.5, 4.0])
    full = span_soft_mask(span, 2.0, 10, 10, causal=True)
    for t in range(10):
        step = span_soft_mask(span, 2.0, 1, t + 1, causal=True, query_offset=t)
        assert torch.equal(step[:, 0], full[:, t, : t + 1])
        k = keys_needed(float(span.max()), 2.0, t + 1)
        cropped = span_soft_mask(span, 2.0, 1, k, causal=True, query_offset=t, key_offset=t + 1 - k)
        assert torch.equal(cropped[:, 0], full[:, t, t + 1 - k : t + 1])
        assert full[:, t, : t + 1 - k].abs().sum() == 0  # cropped keys had zero mask


def test_dynamic_span_mask_and_gradient():
    spans = torch.tensor([[[1.0, 3.0]]], requires_grad=True)  # (bsz=1, heads=1, tgt_len=2)
    mask = span_soft_mask(spans, 2.0, 2, 5, causal=False)
    assert mask.shape == (1, 1, 2, 5)
    assert max_err(mask, span_mask_reference(spans, 2.0, 2, 5)) <= ATOL[torch.float32]
    mask.sum().backward()
    assert spans.grad.abs().sum() > 0


def test_span_errors_and_distances():
    with pytest.raises(ValueError, match="ramp"):
        span_soft_mask(torch.ones(2), 0.0, 2, 2)
    with pytest.raises(ValueError, match="span must be"):
        span_soft_mask(torch.ones(2, 2), 1.0, 2, 2)
    assert torch.equal(span_distances(2, 3, causal=True, query_offset=1), torch.tensor([[1.0, 0, -1], [2, 1, 0]]))


def test_renormalize_and_keys_needed():
    w = torch.tensor([[0.2, 0.2, 0.0], [0.0, 0.0, 0.0]])
    assert max_err(renormalize(w), torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])) <= 1e-7
    assert keys_needed(2.5, 2, 100) == 5 and keys_needed(3.0, 2, 100) == 5 and keys_needed(300, 32, 100) == 100
    assert keys_needed(0.0, 32, 1000) == 32
