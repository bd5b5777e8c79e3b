"""Adaptive span inside SparseMultiheadAttention: banded == full masked computation, trimmed cache == full forward."""

import pytest
import torch

from sparse_attn_fairseq.functional.span import keys_needed
from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan
from sparse_attn_fairseq.layers.normalizers import build_normalizer
from sparse_attn_fairseq.modules.attention_cores import AttentionCall, BandedSpanCore
from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention
from tests.tolerances import BAND, INCREMENTAL

EMBED, HEADS, LENGTH, RAMP = 16, 4, 40, 4


def _span_attention(normalizer="softmax", causal=True, dynamic=False, max_span=LENGTH, seed=0):
    torch.manual_seed(seed)
    span = AdaptiveSpan(HEADS, max_span=max_span, ramp=RAMP, dynamic=dynamic, embed_dim=EMBED if dynamic else None)
    return SparseMultiheadAttention(EMBED, HEADS, build_normalizer(normalizer, HEADS), self_attention=True,
                                    causal=causal, span=span, renormalize_span=normalizer != "rela").eval()


def _set_spans(attention, largest):
    """Spans in tokens, one per head, the largest = ``largest`` (static), or dynamic ones of about that size."""
    with torch.no_grad():
        if attention.span.dynamic:
            frac = min(max(largest / attention.span.max_span, 1e-3), 1 - 1e-3)
            attention.span.span_proj.weight.normal_(0, 0.05)
            attention.span.span_proj.bias.fill_(torch.logit(torch.tensor(frac)).item())
        else:
            fractions = torch.tensor([1.0, 0.5, 0.25, 0.0]) * largest / attention.span.max_span
            attention.span.span_frac.copy_(fractions)


def _run(attention, x, banded, padding=None):
    attention.span_banding = banded
    x = x.clone().requires_grad_(True)
    attn_mask = torch.triu(torch.full((LENGTH, LENGTH), float("-inf")), 1) if attention.causal else None
    out, weights = attention(x, x, x, key_padding_mask=padding, attn_mask=attn_mask, need_head_weights=True)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, EMBED)).sum(), [x, *attention.parameters()],
                                allow_unused=True)
    return out, weights, grads


CASES = [(n, c, d) for n in ("softmax", "entmax15", "rela") for c in (True, False) for d in (False, True)]


@pytest.mark.parametrize("normalizer,causal,dynamic", CASES)
def test_banded_equals_full_masked_computation(normalizer, causal, dynamic):
    attention = _span_attention(normalizer, causal, dynamic)
    attention.train()  # gradients of the span parameters too; dropout is 0
    x = torch.randn(LENGTH, 3, EMBED)
    padding = torch.zeros(3, LENGTH, dtype=torch.bool)
    padding[1, :5] = True  # left padding, as fairseq's encoder input
    banded_somewhere = False
    for largest in (1, 3, 7, 12, 20, 30, LENGTH):
        _set_spans(attention, largest)
        spans = attention._spans(x) if dynamic else attention.span.spans()
        q = torch.zeros(3, HEADS, LENGTH, EMBED // HEADS)
        call = AttentionCall(q, q, q, None, None, spans, need_weights=False, incremental=False, observe_weights=False)
        banded_somewhere |= BandedSpanCore().refusal(attention, call) is None
        full = _run(attention, x, banded=False, padding=None if causal else padding)
        band = _run(attention, x, banded=True, padding=None if causal else padding)
        for a, b in zip(full[:2], band[:2]):  # outputs and weights
            assert (a - b).abs().max().item() <= BAND, (largest, a.shape)
        for a, b in zip(full[2], band[2]):  # gradients: sums in different orders, relative tolerance
            if a is not None:
                assert (a - b).abs().max().item() <= BAND * max(1.0, a.abs().max().item()), largest
    assert banded_somewhere


@pytest.mark.parametrize("dynamic", [False, True])
def test_incremental_cache_is_trimmed_and_equals_full_forward(dynamic):
    attention = _span_attention("entmax15", causal=True, dynamic=dynamic, max_span=6)
    _set_spans(attention, 5)
    x = torch.randn(LENGTH, 4, EMBED)
    new_order = torch.tensor([1, 0, 3, 2])
    state, steps, reorder_at = {}, [], 20
    with torch.no_grad():
        for t in range(LENGTH):
            if t == reorder_at:
                attention.reorder_incremental_state(state, new_order)
                x = x.index_select(1, new_order)
            step = x[t : t + 1]
            steps.append(attention(step, step, step, incremental_state=state, need_weights=False)[0])
            cached = attention._get_input_buffer(state)["prev_key"].size(2)
            assert cached == min(t + 1, attention.span.cache_keys(LENGTH))  # bounded by the span, not the length
        full = attention(x, x, x, attn_mask=torch.triu(torch.full((LENGTH, LENGTH), float("-inf")), 1))[0]
    stepwise = torch.cat(steps)
    assert cached == keys_needed(6 if dynamic else 5, RAMP, LENGTH) < LENGTH
    assert (stepwise[reorder_at:] - full[reorder_at:]).abs().max() <= INCREMENTAL
    assert (stepwise[:reorder_at].index_select(1, new_order) - full[:reorder_at]).abs().max() <= INCREMENTAL


def test_softmax_span_equals_papers_mask_after_softmax():
    """Masking out-of-span keys before the softmax changes nothing for softmax (renormalisation cancels them)."""
    attention = _span_attention("softmax", causal=False)
    _set_spans(attention, 9)
    x = torch.randn(LENGTH, 2, EMBED)
    with torch.no_grad():
        ours = attention(x, x, x, need_head_weights=True)[1].transpose(0, 1)  # (bsz, H, T, S)
        q = attention._split_heads(attention.q_proj(x) * attention.scaling)
        k = attention._split_heads(attention.k_proj(x))
        paper = attention.span(torch.softmax(q @ k.transpose(-1, -2), -1), causal=False)
    assert (ours - paper).abs().max() <= BAND


@pytest.mark.parametrize("normalizer", ["softmax", "entmax15", "sparsemax"])
@pytest.mark.parametrize("banded", [False, True])
def test_half_precision_rows_without_keys_stay_finite(normalizer, banded):
    """fp16 (as under --fp16 / --amp): rows whose keys all lie outside the span or are padding (left padding longer
    than the window; padded band rows) must give zeros, not 0/0 = NaN, in forward and backward."""
    length, spans = 100, torch.tensor([0.25, 0.125, 0.0625, 0.0])
    torch.manual_seed(0)
    span = AdaptiveSpan(HEADS, max_span=length, ramp=3)
    attention = SparseMultiheadAttention(EMBED, HEADS, build_normalizer(normalizer, HEADS), self_attention=True,
                                         span=span).half().train()
    with torch.no_grad():
        span.span_frac.copy_(spans)
    attention.span_banding = banded
    x = torch.randn(length, 2, EMBED).half().requires_grad_(True)
    padding = torch.arange(length)[None].expand(2, length) < torch.tensor([[0], [40]])  # sentence 2: 40 left pads
    out, _ = attention(x, x, x, key_padding_mask=padding)
    out.float().sum().backward()
    assert not out.isnan().any() and not x.grad.isnan().any()


@pytest.mark.parametrize("normalizer", ["softmax", "entmax15", "rela"])
@pytest.mark.parametrize("causal", [True, False])
def test_spans_covering_every_distance_equal_the_masked_computation(normalizer, causal):
    """Spans >= length - 1 make m = 1 on every key a query may see (a shortcut skips the mask): the result must
    still equal the normaliser with m applied explicitly, future keys masked when causal (no attn_mask given)."""
    attention = _span_attention(normalizer, causal)
    with torch.no_grad():
        attention.span.span_frac.copy_(torch.tensor([1.0, 1.0, 0.99, (LENGTH - 1) / LENGTH]))
    x = torch.randn(LENGTH, 2, EMBED)
    with torch.no_grad():
        ours = attention(x, x, x, need_head_weights=True)[1].transpose(0, 1)  # (bsz, H, T, S)
        q = attention._split_heads(attention.q_proj(x) * attention.scaling)
        k = attention._split_heads(attention.k_proj(x))
        soft = attention.span.soft_mask(LENGTH, LENGTH, causal)  # (H, T, S): 1 on the allowed keys, 0 on future ones
        reference = attention.normalizer(q @ k.transpose(-1, -2), soft == 0) * soft
        if normalizer != "rela":
            reference = reference / reference.sum(-1, keepdim=True)
    assert (ours - reference).abs().max() <= BAND
