"""The sync-free branches (taken off the CPU, see functional/host.py) compute the same numbers: forced on CPU
tensors here, against the oracles and the checks the CPU branches pass (incremental == full, blocks with memory ==
one forward, banded == full).

tests/gpu/test_no_host_sync.py shows that these branches read nothing on the host; this file shows they are right.
"""

import pytest
import torch

from sparse_attn_fairseq.functional import host
from sparse_attn_fairseq.functional.reference import entmax_bisect_reference, softmax_reference
from sparse_attn_fairseq.kernels import get_kernel
from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan, refresh_bounds
from sparse_attn_fairseq.modules.span_training import SpanPenaltyError
from tests.models.builders import NO_DROPOUT, TINY_LM_FLAGS, build, incremental_vs_full, lm_incremental_vs_full, \
    random_batch
from tests.models.test_streaming_lm import blockwise, log_probs, streaming_model, tokens
from tests.tolerances import ATOL, INCREMENTAL_LOGPROBS, STREAMING, max_err


@pytest.fixture(autouse=True)
def sync_free(monkeypatch):
    monkeypatch.setattr(host, "_SYNC_FREE_EVERYWHERE", True)


def test_reference_kernel_masks_alpha_one_and_invalid_alpha():
    x = torch.randn(5, 3, 12) * 3
    mask = torch.zeros(5, 3, 12, dtype=torch.bool)
    mask[:, :, 9:] = True
    mask[:, 1] = True  # fully masked rows
    alpha = torch.tensor([1.0, 1.001, 1.3, 1.7, 2.0]).view(5, 1, 1)
    reference = get_kernel("reference").fn
    got = reference("entmax_alpha", x, mask, alpha)
    assert max_err(got, entmax_bisect_reference(x.double(), alpha.double(), mask)) <= ATOL[torch.float32]
    assert max_err(reference("softmax", x, mask, None), softmax_reference(x.double(), mask)) <= ATOL[torch.float32]
    bad = reference("entmax_alpha", x, None, torch.tensor([1.5, 2.5, 0.9, 1.2, float("nan")]).view(5, 1, 1))
    assert bad[[1, 2, 4]].isnan().all() and not bad[[0, 3]].isnan().any()  # on the device, never a silent number


SHORT_SPANS = ("--adaptive-span-max", "3", "--adaptive-span-ramp", "1", "--adaptive-span-init", "0.5")


@pytest.mark.parametrize("arch,flags", [
    ("transformer_entmax", ()),
    ("transformer_rela", ()),
    ("transformer_adaptive_span", SHORT_SPANS),
    ("transformer_adaptive_span", (*SHORT_SPANS, "--adaptive-span-dynamic")),
])
def test_incremental_decoding_equals_the_full_forward(arch, flags):
    model, task = build(arch, *flags, "--attention-kernel", "reference", *NO_DROPOUT)
    refresh_bounds([m for m in model.modules() if isinstance(m, AdaptiveSpan)])  # as after an update
    assert incremental_vs_full(model.eval(), task, tgt_len=8)[0] <= INCREMENTAL_LOGPROBS


@pytest.mark.parametrize("arch", ["transformer_lm_entmax", "transformer_lm_adaptive_span"])
def test_language_model_incremental_decoding_equals_the_full_forward(arch):
    extra = ("--adaptive-span-max", "6", "--adaptive-span-ramp", "2") if "span" in arch else ()
    model, task = build(arch, *extra, "--attention-kernel", "reference", *NO_DROPOUT, base=TINY_LM_FLAGS)
    assert lm_incremental_vs_full(model.double().eval(), task) <= INCREMENTAL_LOGPROBS


@pytest.mark.parametrize("measured", [True, False])
def test_streaming_memory_from_the_host_bound(measured):
    """Blocks with memory equal one forward, the memory trimmed by the measured bound (or kept at S without one)."""
    model, task = streaming_model("--decoder-attention-normalizer", "entmax_alpha", span_max=64, init=0.1)
    spans = [m.span for m in model.span_attentions()]
    if measured:
        refresh_bounds(spans)
    assert all(s.host_bound() == pytest.approx(6.4 if measured else 64.0) for s in spans)
    src = tokens(task, length=96)
    assert max_err(blockwise(model, src), log_probs(model, src)) <= STREAMING
    kept = max(model.stream_memory.tokens("train").values())
    assert kept == (64 if measured else src.size(1))  # the spans' reach in multiples of 64 keys, or everything


def test_the_host_bound_retires_when_the_spans_change():
    span = AdaptiveSpan(2, 100, ramp=4, init_span=0.2)
    assert span.host_bound() == 100.0  # never measured: S
    refresh_bounds([span])
    assert span.host_bound() == pytest.approx(20.0) and span.keys_needed(1000) == 24
    with torch.no_grad():
        span.span_frac.add_(0.5)  # an update without refresh: the bound no longer holds
    assert span.host_bound() == 100.0 and span.keys_needed(1000) == 104
    span.clamp_()
    refresh_bounds([span])
    assert span.host_bound() == pytest.approx(70.0)
    fresh = AdaptiveSpan(2, 100, ramp=4)
    fresh.load_state_dict(span.state_dict())  # measured at load, from the checkpoint's tensor
    assert fresh.host_bound() == pytest.approx(70.0)


def test_a_loss_that_weighs_tokens_unequally_is_reported_after_the_update():
    """Off the CPU the span penalty's token-weight check waits on the device and is read at set_num_updates."""
    model, task = build("transformer_adaptive_span", *SHORT_SPANS, "--adaptive-span-loss", "2e-6", *NO_DROPOUT)
    model.train()
    src, lengths, prev = random_batch(task, bsz=3, tgt_len=6)
    lprobs = model.get_normalized_probs(model(src, lengths, prev), log_probs=True)
    nll = -lprobs.gather(-1, prev.roll(-1, dims=1).unsqueeze(-1)).squeeze(-1)
    (nll * (torch.rand_like(nll) + 0.5)).sum().backward()  # per-token weights: no error inside backward
    with pytest.raises(SpanPenaltyError, match="weighs every target token equally"):
        model.set_num_updates(1)
