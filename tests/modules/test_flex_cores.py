"""The flex_attention core (modules/flex_cores.py) against the dense cores, forward, on CPU (flex's backward has
no CPU implementation: the GPU check runs it, and the core checks itself on the device before first use)."""

import warnings

import pytest
import torch

from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan
from sparse_attn_fairseq.layers.normalizers import build_normalizer
from sparse_attn_fairseq.layers.rela_norm import RelaOutputNorm
from sparse_attn_fairseq.modules import flex_cores
from sparse_attn_fairseq.modules.attention_cores import AttentionCall, choose_core
from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention
from tests.tolerances import CLOSED_FORM, max_err

EMBED, HEADS, LENGTH, BSZ = 32, 4, 37, 3


def _attention(kind, span=None, causal=False):
    normalizer = build_normalizer(kind, HEADS)
    torch.manual_seed(0)
    module = SparseMultiheadAttention(
        EMBED, HEADS, normalizer, self_attention=True, span=span, causal=causal, renormalize_span=kind != "rela",
        output_norm=RelaOutputNorm(EMBED, HEADS) if kind == "rela" else None)
    return module.eval()


def _span(dynamic=False):
    span = AdaptiveSpan(HEADS, 12, ramp=4, dynamic=dynamic, embed_dim=EMBED if dynamic else None)
    with torch.no_grad():
        if dynamic:
            span.span_proj.bias.copy_(torch.tensor([-3.0, -1.0, 0.0, 2.0]))
            span.span_proj.weight.normal_(0.0, 0.5)
        else:
            span.span_frac.copy_(torch.tensor([0.0, 0.2, 0.55, 1.0]))
    return span


def _inputs(padded=True):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(LENGTH, BSZ, EMBED, generator=generator)
    padding = torch.zeros(BSZ, LENGTH, dtype=torch.bool)
    if padded:
        padding[1, -9:] = True
        padding[2, :5] = True
    return x, padding


def _future(length):
    return torch.triu(torch.full((length, length), float("-inf")), 1)


CASES = {
    "span": ("softmax", lambda: _span(), False),
    "span-dynamic": ("softmax", lambda: _span(dynamic=True), False),
    "span-causal": ("softmax", lambda: _span(), True),
    "rela": ("rela", lambda: None, False),
    "rela-span": ("rela", lambda: _span(), False),
    "rela-span-causal": ("rela", lambda: _span(), True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_flex_forward_equals_the_dense_cores(case, monkeypatch):
    kind, make_span, causal = CASES[case]
    module = _attention(kind, make_span(), causal)
    x, padding = _inputs()
    attn_mask = _future(LENGTH) if causal or case == "rela" else None  # fairseq's decoder self-attention mask
    with torch.no_grad():
        dense, _ = module(x, x, x, key_padding_mask=padding, attn_mask=attn_mask, need_weights=False)
        monkeypatch.setattr(flex_cores, "DEVICES", ("cuda", "cpu"))
        chosen = []
        original_run = flex_cores.FlexCore.run
        monkeypatch.setattr(flex_cores.FlexCore, "run", lambda self, m, c: chosen.append(1) or original_run(self, m, c))
        flex, _ = module(x, x, x, key_padding_mask=padding, attn_mask=attn_mask, need_weights=False)
    assert chosen, "the flex core did not run"
    assert max_err(flex, dense) <= 10 * CLOSED_FORM * max(1.0, dense.abs().max().item())


def test_refusals(monkeypatch):
    """On CPU (flex's backward is CUDA-only), with dropout, with weights needed, for entmax: the other cores."""
    module = _attention("rela")
    x, padding = _inputs()
    q = k = v = torch.zeros(BSZ, HEADS, LENGTH, EMBED // HEADS)
    call = AttentionCall(q, k, v, padding, None, None, need_weights=False, incremental=False, observe_weights=False)
    core = flex_cores.FlexCore()
    assert "CUDA only" in core.refusal(module, call)
    monkeypatch.setattr(flex_cores, "DEVICES", ("cuda", "cpu"))
    assert core.refusal(module, call) is None and choose_core(module, call).name == "flex"
    module.train()
    module.dropout_module.p = 0.1
    assert core.refusal(module, call) == "attention dropout"
    module.dropout_module.p = 0.0
    call.need_weights = True
    assert core.refusal(module, call) == "the weights are needed"
    assert core.refusal(_attention("entmax_alpha"), call).startswith("normalizer is entmax_alpha")
    assert core.refusal(_attention("softmax"), call).startswith("softmax without a span")


def test_a_failed_check_switches_the_core_off_with_one_warning(monkeypatch):
    """The check runs flex's backward: on CPU it fails, as a broken flex would on a GPU."""
    monkeypatch.setattr(flex_cores, "_STATE", {"error": None, "trusted": set(), "compiled": flex_cores._flex()})
    monkeypatch.setattr(flex_cores, "DEVICES", ("cuda", "cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not flex_cores._trusted("softmax", True, False, torch.float32, 8, torch.device("cpu"))
    assert len(caught) == 1 and "flex attention core is off" in str(caught[0].message)
    module = _attention("rela")
    q = torch.zeros(BSZ, HEADS, LENGTH, EMBED // HEADS)
    call = AttentionCall(q, q, q, None, None, None, need_weights=False, incremental=False, observe_weights=False)
    assert "failed its check" in flex_cores.FlexCore().refusal(module, call)
    assert choose_core(module, call).name == "dense"
