"""AdaptiveSpan: static and dynamic spans, loss, clamp, cropping."""

import pytest
import torch

from sparse_attn_fairseq.functional.span import span_soft_mask
from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan
from tests.tolerances import ATOL, CLOSED_FORM, max_err


def test_static_mask_loss_clamp():
    span = AdaptiveSpan(num_heads=2, max_span=10, ramp=4, init_span=0.5)
    assert torch.equal(span.current_spans(), torch.tensor([5.0, 5.0]))
    assert torch.equal(span.soft_mask(3, 7, causal=True), span_soft_mask(torch.tensor([5.0, 5.0]), 4, 3, 7, True))
    assert span.span_loss().item() == 5.0
    span.span_loss().backward()
    assert torch.equal(span.span_frac.grad, torch.full((2,), 5.0))  # d(S mean z')/dz' = S / num_heads
    with torch.no_grad():
        span.span_frac.copy_(torch.tensor([-0.5, 1.7]))
    span.clamp_()
    assert torch.equal(span.span_frac.data, torch.tensor([0.0, 1.0]))
    assert span.keys_needed(100) == 14 and span.keys_needed(8) == 8


def test_forward_renormalises_and_crops():
    torch.manual_seed(0)
    span = AdaptiveSpan(num_heads=2, max_span=6, ramp=2, init_span=0.4)
    tgt = 9
    weights = torch.softmax(torch.randn(1, 2, tgt, tgt), -1)
    full = span(weights, causal=True)
    assert max_err(full.sum(-1), torch.ones(1, 2, tgt)) <= CLOSED_FORM
    unnorm = span(weights, causal=True, renorm=False)
    assert max_err(unnorm, weights * span.soft_mask(tgt, tgt, True)) == 0.0
    k = span.keys_needed(tgt)
    t = tgt - 1
    step = span(weights[:, :, t:, t + 1 - k : t + 1], causal=True, query_offset=t, key_offset=t + 1 - k, renorm=False)
    assert max_err(step, unnorm[:, :, t:, t + 1 - k :]) == 0.0


def test_dynamic_span():
    torch.manual_seed(0)
    span = AdaptiveSpan(num_heads=3, max_span=50, ramp=8, dynamic=True, embed_dim=4)
    assert torch.equal(span.span_proj.bias.data, torch.full((3,), -4.0))
    feats = torch.randn(5, 2, 4)  # (tgt_len, bsz, embed_dim)
    spans = span.spans(feats)
    assert spans.shape == (2, 3, 5)
    assert max_err(spans, torch.full((2, 3, 5), 50 * torch.sigmoid(torch.tensor(-4.0)).item())) <= ATOL[torch.float32]
    weights = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    out = span(weights, causal=False, spans=spans)
    assert out.shape == (2, 3, 5, 5)
    loss = span.span_loss(spans) + out.sum()
    loss.backward()
    assert span.span_proj.bias.grad.abs().sum() > 0
    assert span.keys_needed(100, spans) == 9
    with pytest.raises(ValueError, match="query_features"):
        span.spans()
    with pytest.raises(ValueError, match="spans computed"):
        span.span_loss()


def test_validation_lists_every_problem():
    with pytest.raises(ValueError, match="max_span=0.*ramp=0.*init_span=2"):
        AdaptiveSpan(2, 0, ramp=0, init_span=2)
    with pytest.raises(ValueError, match="embed_dim"):
        AdaptiveSpan(2, 10, dynamic=True)
    with pytest.raises(ValueError, match="only used with dynamic"):
        AdaptiveSpan(2, 10, embed_dim=8)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_with_log_mask_equals_mask_then_renormalise(causal, dynamic):
    """For softmax, normalize() adds log m to the scores; it must equal the paper's softmax, * m, renormalise
    (forced through the generic path), in value and in the gradients of the scores and of the span."""
    from sparse_attn_fairseq.layers.normalizers import build_normalizer

    torch.manual_seed(0)
    heads, tgt, dim = 3, 12, 4
    span = AdaptiveSpan(heads, max_span=8, ramp=3, init_span=0.4, dynamic=dynamic,
                        embed_dim=dim if dynamic else None).double()
    if not dynamic:
        with torch.no_grad():
            span.span_frac.copy_(torch.tensor([0.0, 0.3, 0.77]))  # z = 0 (own key only), mid-ramp, long
    feats = torch.randn(tgt, 2, dim, dtype=torch.float64)
    scores = torch.randn(2, heads, tgt, tgt, dtype=torch.float64, requires_grad=True)
    softmax, generic = build_normalizer("softmax", heads), build_normalizer("softmax", heads)
    generic.exp_family = False  # the multiply-and-renormalise path
    results = []
    for normalizer in (softmax, generic):
        span.zero_grad()
        scores.grad = None
        spans = span.spans(feats if dynamic else None)
        soft = span_soft_mask(spans, span.ramp, tgt, tgt, causal)
        weights = span.normalize(normalizer, scores, soft)
        (weights * torch.linspace(-1, 1, tgt, dtype=torch.float64)).sum().backward()
        span_grad = span.span_proj.weight.grad if dynamic else span.span_frac.grad
        results.append((weights.detach(), scores.grad.clone(), span_grad.clone()))
    (w_log, g_log, s_log), (w_mul, g_mul, s_mul) = results
    assert max_err(w_log, w_mul) <= 1e-12
    assert max_err(g_log, g_mul) <= 1e-10 and max_err(s_log, s_mul) <= 1e-10
    assert s_log.abs().sum() > 0
    assert (w_log == 0).any()  # keys outside the span get exact zeros


def test_dynamic_span_penalty_averages_over_real_tokens_only():
    """Padded query positions get no penalty gradient; the real ones share coefficient * W / (H * real tokens)."""
    span = AdaptiveSpan(num_heads=2, max_span=10, ramp=2, dynamic=True, embed_dim=3, loss_coefficient=0.5)
    span.sample_size = 12.0  # W without a measured loss weight
    spans = span.spans(torch.randn(4, 2, 3))  # (bsz=2, H=2, tgt_len=4)
    spans.retain_grad()
    padding = torch.tensor([[False, False, False, True], [False, False, True, True]])  # 5 real tokens
    span.attach_penalty(spans, padding=padding)
    (spans * 0).sum().backward()
    expected = 0.5 * 12.0 / (2 * 5) * (~padding).float()[:, None, :].expand(2, 2, 4)
    assert torch.allclose(spans.grad, expected)
