"""transformer_adaptive_span in-process: incremental == full with a trimmed cache, train == eval, span penalty
independent of the batch, clamps after updates, spans that shrink or stay under training."""

import pytest
import torch
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan
from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention
from tests.tolerances import SPAN_PENALTY
from sparse_attn_fairseq.options import AttentionOptionsError
from tests.models.builders import (
    NO_DROPOUT, TINY_LM_FLAGS, build, incremental_vs_full, normalizer_flags, random_batch, train_equals_eval_after_loading,
)

INCREMENTAL_LOGPROBS = 1e-4
SAME = 1e-5
SHORT_SPANS = ["--adaptive-span-max", "8", "--adaptive-span-ramp", "2", "--adaptive-span-init", "0.25"]


def _spans(model):
    return [m for m in model.modules() if isinstance(m, AdaptiveSpan)]


def test_span_in_self_attentions_only_and_options_validated():
    model, _ = build("transformer_adaptive_span")
    attentions = [m for m in model.modules() if isinstance(m, SparseMultiheadAttention)]
    assert [a.span is not None for a in attentions] == [True, True, False]  # enc self, dec self, cross
    assert {type(a.normalizer).__name__ for a in attentions} == {"SoftmaxNormalizer"}
    with pytest.raises(AttentionOptionsError, match=r"--adaptive-span-max=0.*--adaptive-span-init=1\.5.*--adaptive-span-loss=-1"):
        build("transformer_adaptive_span", "--adaptive-span-max", "0", "--adaptive-span-init", "1.5",
              "--adaptive-span-loss", "-1")


@pytest.mark.parametrize("flags", [[], ["--adaptive-span-dynamic"], normalizer_flags("entmax15")],
                         ids=["softmax", "dynamic", "entmax15"])
def test_incremental_decoding_with_trimmed_cache_matches_full_forward(flags):
    model, task = build("transformer_adaptive_span", *SHORT_SPANS, *flags)
    diff, state = incremental_vs_full(model.eval(), task, tgt_len=14, reorder_at=7)
    assert diff <= INCREMENTAL_LOGPROBS
    self_attn = model.decoder.layers[0].self_attn
    cached = self_attn._get_input_buffer(state)["prev_key"].size(2)
    assert cached == self_attn.span.cache_keys(10**6) < 14  # bounded by the span, not the output length


def test_train_mode_without_dropout_equals_eval_mode_after_loading(tmp_path):
    assert train_equals_eval_after_loading("transformer_adaptive_span", tmp_path, *SHORT_SPANS) <= SAME


def _penalty_gradients(coefficient, criterion_cls, bsz, sentence_avg=False, seed=0, loss_scale=1.0,
                       span_flags=SHORT_SPANS):
    """z' gradients after fairseq's normalisation (divide by the sample size), per target token (the penalty acts
    as if added to each token's loss; with --sentence-avg the sample size is sentences), from a real criterion. The
    loss is multiplied by ``loss_scale`` before backward and the gradients divided after, as fp16 and amp training
    do; a scale of 0 is fairseq's ignored (dummy) batch."""
    flags = [*span_flags, "--adaptive-span-loss", str(coefficient), *NO_DROPOUT]
    model, task = build("transformer_adaptive_span", *flags, *(["--sentence-avg"] if sentence_avg else []))
    task.target_dictionary = task.source_dictionary
    src, lengths, prev = random_batch(task, bsz=bsz, tgt_len=5 + bsz, seed=seed)
    target = torch.roll(prev, -1, dims=1)
    prev[0, -2:] = target[0, -2:] = task.target_dictionary.pad()  # right padding, as many pads in both
    sample = {"net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
              "target": target, "ntokens": int(target.ne(task.target_dictionary.pad()).sum()), "nsentences": bsz}
    criterion = (criterion_cls(task, sentence_avg, 0.1) if criterion_cls is LabelSmoothedCrossEntropyCriterion
                 else criterion_cls(task, sentence_avg))
    model.train()
    loss, sample_size, _ = criterion(model, sample)
    (loss * loss_scale).backward()
    tokens_per_sample = sample["ntokens"] / sample_size  # 1, or tokens per sentence with --sentence-avg
    return [span.span_frac.grad / loss_scale / sample_size / tokens_per_sample for span in _spans(model)]


@pytest.mark.parametrize("criterion_cls", [LabelSmoothedCrossEntropyCriterion, CrossEntropyCriterion])
@pytest.mark.parametrize("sentence_avg", [False, True])
def test_span_penalty_gradient_is_independent_of_batch_size(criterion_cls, sentence_avg):
    coefficient, max_span, heads = 0.05, 8, 2
    for bsz in (2, 7):
        with_penalty = _penalty_gradients(coefficient, criterion_cls, bsz, sentence_avg)
        without = _penalty_gradients(0.0, criterion_cls, bsz, sentence_avg)
        for a, b in zip(with_penalty, without):  # d(coefficient * S * mean(z')) / dz' per layer
            assert torch.allclose(a - b, torch.full_like(a, coefficient * max_span / heads), atol=SPAN_PENALTY), (bsz, a - b)


@pytest.mark.parametrize("criterion_cls", [LabelSmoothedCrossEntropyCriterion, CrossEntropyCriterion])
@pytest.mark.parametrize("loss_scale", [128.0, 2.0**15, 100.0])
def test_span_penalty_gradient_survives_fp16_loss_scaling(criterion_cls, loss_scale):
    """fp16 / amp scale the loss before backward and unscale every gradient after: the penalty must be scaled too
    (100: --fp16-init-scale need not be a power of two)."""
    coefficient, max_span, heads = 0.05, 8, 2
    with_penalty = _penalty_gradients(coefficient, criterion_cls, 3, loss_scale=loss_scale)
    without = _penalty_gradients(0.0, criterion_cls, 3, loss_scale=loss_scale)
    for a, b in zip(with_penalty, without):
        assert torch.allclose(a - b, torch.full_like(a, coefficient * max_span / heads), atol=SPAN_PENALTY), (loss_scale, a - b)


def test_span_penalty_reaches_spans_that_cover_the_whole_sentence():
    """Spans past every distance skip the mask (m = 1 everywhere); their penalty gradient must still arrive, and
    their parameters must stay in the graph (distributed training fails on unused parameters)."""
    covering = ["--adaptive-span-max", "64", "--adaptive-span-ramp", "2", "--adaptive-span-init", "1.0"]
    coefficient, max_span, heads = 0.05, 64, 2
    with_penalty = _penalty_gradients(coefficient, CrossEntropyCriterion, 3, span_flags=covering)
    without = _penalty_gradients(0.0, CrossEntropyCriterion, 3, span_flags=covering)
    for a, b in zip(with_penalty, without):
        assert torch.equal(b, torch.zeros_like(b))  # m = 1 on every key: no data gradient
        assert torch.allclose(a, torch.full_like(a, coefficient * max_span / heads), atol=SPAN_PENALTY)


def test_no_span_penalty_on_an_ignored_batch():
    """fairseq trains dummy batches with their loss multiplied by 0: no gradient at all may come out of them."""
    flags = [*SHORT_SPANS, "--adaptive-span-loss", "0.05", *NO_DROPOUT]
    model, task = build("transformer_adaptive_span", *flags)
    task.target_dictionary = task.source_dictionary
    src, lengths, prev = random_batch(task, bsz=3, tgt_len=6)
    sample = {"net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
              "target": torch.roll(prev, -1, dims=1), "ntokens": prev.numel(), "nsentences": 3}
    loss, _, _ = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model.train(), sample)
    (loss * 0.0).backward()
    assert all(torch.equal(span.span_frac.grad, torch.zeros_like(span.span_frac)) for span in _spans(model))


def test_no_penalty_in_eval_and_clamp_after_update():
    model, task = build("transformer_adaptive_span", *SHORT_SPANS)
    spans = _spans(model)
    with torch.no_grad():
        spans[0].span_frac.copy_(torch.tensor([-0.3, 1.4]))
    src, lengths, prev = random_batch(task)
    before = spans[0].span_frac.clone()
    model.train()
    model(src, lengths, prev)  # the forward reads z' clamped and never writes it
    assert torch.equal(spans[0].span_frac, before)
    assert torch.equal(spans[0].spans(), torch.tensor([0.0, 8.0]))
    model.set_num_updates(1)  # what fairseq calls after each update
    assert torch.equal(spans[0].span_frac.data, torch.tensor([0.0, 1.0]))


def _train_copy_lm(coefficient, steps=30, seed=0):
    """A 1-layer LM on sequences whose second half repeats the first (needs a span of 10); returns the largest z'
    of the layer after each step."""
    model, task = build("transformer_lm_adaptive_span", "--adaptive-span-max", "12", "--adaptive-span-ramp", "2",
                        "--adaptive-span-init", "1", "--adaptive-span-loss", str(coefficient), *NO_DROPOUT,
                        seed=seed, base=TINY_LM_FLAGS)
    criterion = CrossEntropyCriterion(task, False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for step in range(steps):
        half = torch.randint(task.target_dictionary.nspecial, len(task.target_dictionary), (16, 10), generator=g)
        tokens = torch.cat([half, half], dim=1)  # (bsz, 20)
        sample = {"net_input": {"src_tokens": tokens[:, :-1]}, "target": tokens[:, 1:].contiguous(), "ntokens": 16 * 19,
                  "nsentences": 16}
        optimizer.zero_grad()
        loss, sample_size, _ = criterion(model, sample)
        loss.backward()
        for p in model.parameters():  # fairseq's gradient normalisation
            if p.grad is not None:
                p.grad /= sample_size
        optimizer.step()
        model.set_num_updates(step + 1)
        history.append(torch.cat([s.span_frac.detach() for s in _spans(model)]).max().item())
    return history


def test_spans_shrink_with_a_large_penalty_and_stay_at_the_maximum_without():
    shrinking = _train_copy_lm(coefficient=0.1)
    assert shrinking[-1] < 0.3 and shrinking[-1] < shrinking[5]  # every head's span shrinks
    kept = _train_copy_lm(coefficient=0.0)
    assert min(kept) >= 0.95  # the copy needs distance 10 of at most 12: the longest head stays at the maximum


@pytest.mark.parametrize("weighting,fails", [("uniform", False), ("per_token", True), ("sequence", True)])
def test_a_loss_that_weighs_tokens_unequally_is_reported(weighting, fails):
    """The span penalty's token-weight probe: a token-weighted or sequence-level loss is detected, not rescaled."""
    from sparse_attn_fairseq.modules.span_training import SpanPenaltyError

    model, task = build("transformer_adaptive_span", *SHORT_SPANS, "--adaptive-span-loss", "2e-6", *NO_DROPOUT)
    model.train()
    src, lengths, prev = random_batch(task, bsz=3, tgt_len=6)
    target = torch.roll(prev, -1, dims=1)
    model.set_span_sample_size(prev, task.target_dictionary.pad())
    lprobs = model.get_normalized_probs(model(src, lengths, prev), log_probs=True)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (bsz, tgt_len)
    weights = {"uniform": torch.ones_like(nll), "per_token": torch.rand_like(nll) + 0.5,
               "sequence": torch.linspace(1.0, 3.0, nll.size(0))[:, None].expand_as(nll)}[weighting]
    loss = (nll * weights * target.ne(task.target_dictionary.pad())).sum()
    if fails:
        with pytest.raises(SpanPenaltyError, match="weighs every target token equally"):
            loss.backward()
    else:
        loss.backward()
