"""SparseMultiheadAttention on its own: weights, masks, incremental state, span and output-norm hooks, stats."""

import math

import pytest
import torch
from fairseq.logging import metrics

from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan
from sparse_attn_fairseq.layers.normalizers import build_normalizer, normalizer_names
from sparse_attn_fairseq.layers.rela_norm import RelaOutputNorm
from sparse_attn_fairseq.modules.attention_stats import masked_count
from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention
from tests.tolerances import CLOSED_FORM, INCREMENTAL

EMBED, HEADS = 16, 4
SPARSE = ("sparsemax", "entmax15", "entmax_fixed", "entmax_alpha")


def _attention(name, **kwargs):
    torch.manual_seed(0)
    attention = SparseMultiheadAttention(EMBED, HEADS, build_normalizer(name, HEADS), **kwargs)
    with torch.no_grad():  # sharper scores, so sparse normalizers do produce zeros
        attention.q_proj.weight.mul_(4.0)
    return attention.eval()


def _causal_mask(length):
    return torch.triu(torch.full((length, length), float("-inf")), 1)


@pytest.mark.parametrize("name", SPARSE)
def test_need_head_weights_are_sparse_probabilities(name):
    attention = _attention(name, self_attention=True)
    x = torch.randn(7, 3, EMBED)  # (tgt_len, bsz, embed_dim)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, -2:] = True
    out, weights = attention(x, x, x, key_padding_mask=padding, need_head_weights=True)
    assert out.shape == (7, 3, EMBED) and weights.shape == (HEADS, 3, 7, 7)
    assert (weights[:, 1, :, -2:] == 0).all()
    assert (weights == 0).sum() > (weights.shape.numel() // 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(HEADS, 3, 7))
    _, averaged = attention(x, x, x, key_padding_mask=padding, need_weights=True)
    torch.testing.assert_close(averaged, weights.mean(0))
    assert attention(x, x, x, need_weights=False)[1] is None


def test_before_softmax_returns_masked_scores_and_values():
    attention = _attention("entmax15", self_attention=True)
    x = torch.randn(5, 2, EMBED)
    scores, values = attention(x, x, x, attn_mask=_causal_mask(5), before_softmax=True)
    assert scores.shape == (2 * HEADS, 5, 5) and values.shape == (2 * HEADS, 5, EMBED // HEADS)
    assert torch.isneginf(scores[:, 0, 1:]).all()


def _rela_attention():
    torch.manual_seed(0)
    return SparseMultiheadAttention(EMBED, HEADS, build_normalizer("rela", HEADS), self_attention=True, causal=True,
                                    output_norm=RelaOutputNorm(EMBED, HEADS)).eval()


def _span_attention():
    torch.manual_seed(0)
    span = AdaptiveSpan(HEADS, max_span=4, ramp=2, init_span=0.5)
    return SparseMultiheadAttention(EMBED, HEADS, build_normalizer("entmax15", HEADS), self_attention=True,
                                    causal=True, span=span).eval()


CAUSAL_CASES = {**{name: (lambda name=name: _attention(name, self_attention=True, causal=True))
                   for name in normalizer_names() if name != "rela"},
                "rela+output_norm": _rela_attention, "entmax15+span": _span_attention}


@pytest.mark.parametrize("case", sorted(CAUSAL_CASES))
def test_causal_self_attention_incremental_equals_full_with_reorder(case):
    attention = CAUSAL_CASES[case]()
    length, bsz, reorder_at = 6, 4, 3
    x = torch.randn(length, bsz, EMBED)
    new_order = torch.tensor([1, 0, 3, 2])
    state, steps = {}, []
    with torch.no_grad():
        for t in range(length):
            if t == reorder_at:
                attention.reorder_incremental_state(state, new_order)
                x = x.index_select(1, new_order)
            step = x[t : t + 1]
            steps.append(attention(step, step, step, incremental_state=state, need_weights=False)[0])
        stepwise = torch.cat(steps)  # (length, bsz, embed_dim)
        full_after = attention(x, x, x, attn_mask=_causal_mask(length))[0]
    torch.testing.assert_close(stepwise[reorder_at:], full_after[reorder_at:], atol=INCREMENTAL, rtol=0)
    # steps before the reorder belong to the old order: undo it to compare
    torch.testing.assert_close(stepwise[:reorder_at].index_select(1, new_order), full_after[:reorder_at],
                               atol=INCREMENTAL, rtol=0)


def test_cross_attention_shares_static_keys_across_beams():
    attention = _attention("entmax_alpha", encoder_decoder_attention=True)
    bsz, beam, src_len = 2, 3, 5
    encoder_out = torch.randn(src_len, bsz, EMBED).repeat_interleave(beam, dim=1)  # (src_len, bsz * beam, C)
    padding = torch.zeros(bsz, src_len, dtype=torch.bool)
    padding[1, -1] = True
    padding = padding.repeat_interleave(beam, dim=0)
    queries = torch.randn(2, bsz * beam, EMBED)
    with torch.no_grad():
        full = attention(queries, encoder_out, encoder_out, key_padding_mask=padding, static_kv=True)[0]
        attention.set_beam_size(beam)
        state, steps = {}, []
        for t in range(2):
            q = queries[t : t + 1]
            steps.append(attention(q, encoder_out, encoder_out, key_padding_mask=padding, incremental_state=state,
                                   static_kv=True)[0])
        cached = attention._get_input_buffer(state)["prev_key"]
    assert cached.shape[0] == bsz  # one copy of the keys per sentence, not per beam
    torch.testing.assert_close(torch.cat(steps), full, atol=INCREMENTAL, rtol=0)


def test_get_input_buffer_without_incremental_state_is_empty():
    attention = _attention("softmax", self_attention=True)
    assert attention._get_input_buffer(None) == {}


def test_masked_count_does_not_expand():
    mask = torch.tensor([[False, True, True]])  # (1, 3)
    assert masked_count(mask, torch.Size([2, 4, 5, 3])) == 2 * 4 * 5 * 2
    assert masked_count(None, torch.Size([2, 3])) == 0


def test_stats_log_zero_fraction_and_alpha():
    attention = _attention("entmax_alpha", self_attention=True, stats_key="unit")
    x = torch.randn(6, 2, EMBED)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, -3:] = True
    with metrics.aggregate(new_root=True) as agg:
        _, weights = attention(x, x, x, key_padding_mask=padding, need_head_weights=True)
    unmasked = ~padding[None, :, None, :].expand_as(weights)
    expected = ((weights == 0) & unmasked).sum().item() / unmasked.sum().item()
    assert agg.get_smoothed_values()["zeros_unit"] == pytest.approx(expected, abs=1e-3)
    assert agg.get_smoothed_values()["alpha_unit"] == pytest.approx(attention.normalizer.alpha().mean().item(),
                                                                    abs=1e-3)


def test_rela_hand_computed_weights_masking_null_row_and_gated_norm():
    """embed_dim 2, one head, identity projections: weights relu(q.k / sqrt(2)) with the padded key zeroed before
    the relu, a null row, then gated RMSNorm (gain 1, w 1) before out_proj."""
    attention = SparseMultiheadAttention(2, 1, build_normalizer("rela", 1), encoder_decoder_attention=True,
                                         output_norm=RelaOutputNorm(2, 1), stats_key="hand").eval()
    with torch.no_grad():
        for proj in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
            proj.weight.copy_(torch.eye(2))
            proj.bias.zero_()
    queries = torch.tensor([[1.0, 0.0], [-1.0, -1.0]]).unsqueeze(1)  # (tgt_len=2, bsz=1, 2)
    keys = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [3.0, 3.0]]).unsqueeze(1)  # (src_len=3, bsz=1, 2)
    padding = torch.tensor([[False, False, True]])  # key 2 would score 3 / sqrt(2) > 0 for query 0
    with metrics.aggregate(new_root=True) as agg:
        out, weights = attention(queries, keys, keys, key_padding_mask=padding, static_kv=True,
                                 need_head_weights=True)
    # scores: q0 = [2, -1, (3)] / sqrt(2); q1 = [-2, 0, (-6)] / sqrt(2) -> a null row
    expected_weights = torch.tensor([[[math.sqrt(2), 0.0, 0.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(weights[0], expected_weights, atol=CLOSED_FORM, rtol=0)
    # o0 = sqrt(2) * k0 = [2 sqrt(2), 0]; rms = sqrt(8 / 2) = 2; y = o / rms * sigmoid(o); o1 = 0 -> y = 0
    expected_out = torch.tensor([[[math.sqrt(2) / (1 + math.exp(-2 * math.sqrt(2))), 0.0]], [[0.0, 0.0]]])
    torch.testing.assert_close(out, expected_out, atol=CLOSED_FORM, rtol=0)
    stats = agg.get_smoothed_values()
    assert stats["zeros_hand"] == pytest.approx(3 / 4) and stats["null_hand"] == pytest.approx(1 / 2)


def test_constructor_reports_every_problem():
    with pytest.raises(ValueError, match="not divisible.*exclusive"):
        SparseMultiheadAttention(10, 4, build_normalizer("softmax", 4), self_attention=True,
                                 encoder_decoder_attention=True)


@pytest.mark.parametrize("name", normalizer_names())
def test_an_all_padding_batch_gives_zeros_not_nan(name):
    """Every key of every row padded (an all-padding batch): finite outputs and gradients, for every normalizer."""
    torch.manual_seed(0)
    norm = RelaOutputNorm(16, 2) if name == "rela" else None
    attention = SparseMultiheadAttention(16, 2, build_normalizer(name, 2), self_attention=True, output_norm=norm)
    x = torch.randn(5, 3, 16, requires_grad=True)
    out, weights = attention(x, x, x, key_padding_mask=torch.ones(3, 5, dtype=torch.bool))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all() and (weights == 0).all()


@pytest.mark.parametrize("name", ["softmax", "entmax_alpha"])
def test_inference_mode_with_a_causal_mask_matches_no_grad(name):
    """torch.inference_mode (its tensors have no version counter) gives the outputs of no_grad, future mask included."""
    attention = _attention(name, self_attention=True, causal=True)
    x = torch.randn(5, 2, EMBED)
    with torch.no_grad():
        expected = attention(x, x, x, attn_mask=_causal_mask(5), need_weights=False)[0]
    with torch.inference_mode():  # the mask made inside it is an inference tensor, as fairseq's would be
        got = attention(x, x, x, attn_mask=_causal_mask(5), need_weights=False)[0]
    torch.testing.assert_close(got, expected, atol=INCREMENTAL, rtol=0)
