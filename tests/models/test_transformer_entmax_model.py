"""transformer_entmax in-process: softmax == stock fairseq, incremental == full (with beams), train == eval, alpha."""

import pytest
import torch
from fairseq.models.transformer import TransformerModel

from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention
from sparse_attn_fairseq.options import ENTMAX_NORMALIZERS
from tests.models.builders import (
    diff_to_stock_transformer,
    NO_DROPOUT, build, incremental_vs_full, normalizer_flags, random_batch, train_equals_eval_after_loading,
)
from tests.tolerances import STOCK

# Tolerances of this file (max abs difference).
INCREMENTAL_LOGPROBS = 1e-4


@pytest.mark.parametrize("train", [False, True])
def test_softmax_everywhere_reproduces_stock_transformer(train):
    ours, task = build("transformer_entmax", *normalizer_flags("softmax"), *NO_DROPOUT)
    assert diff_to_stock_transformer(ours, task, train) <= STOCK


def test_every_attention_is_sparse_multihead_attention():
    model, _ = build("transformer_entmax")
    attentions = [m for m in model.modules() if isinstance(m, SparseMultiheadAttention)]
    assert len(attentions) == 3  # 1 encoder self, 1 decoder self, 1 encoder-decoder
    assert {a.stats_key for a in attentions} == {"enc", "dec", "encdec"}
    assert not any(type(m).__name__ == "MultiheadAttention" for m in model.modules())


@pytest.mark.parametrize("normalizer", ENTMAX_NORMALIZERS)
def test_incremental_decoding_matches_full_forward_with_beam_reorder(normalizer):
    model, task = build("transformer_entmax", *normalizer_flags(normalizer, "--entmax-alpha-init", "random"))
    assert incremental_vs_full(model.eval(), task)[0] <= INCREMENTAL_LOGPROBS


def test_train_mode_without_dropout_equals_eval_mode_after_loading(tmp_path):
    assert train_equals_eval_after_loading("transformer_entmax", tmp_path) <= STOCK


def _alphas(model):
    return {name: module.alpha() for name, module in model.named_modules() if hasattr(module, "a")}


def test_gradients_reach_every_alpha_and_training_keeps_alpha_in_clamp_range():
    low, high = 1.2, 1.6
    model, task = build("transformer_entmax", "--entmax-alpha-init", "1.4", "--entmax-alpha-min", str(low),
                        "--entmax-alpha-max", str(high), *NO_DROPOUT)
    raw = {name: p for name, p in model.named_parameters() if name.endswith("normalizer.a")}
    assert len(raw) == 3
    src, lengths, prev = random_batch(task)
    target = torch.roll(prev, -1, dims=1)
    before = {name: a.detach().clone() for name, a in _alphas(model).items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.3)
    for step in range(15):
        optimizer.zero_grad()
        lprobs = model.get_normalized_probs(model(src, lengths, prev), log_probs=True)
        loss = torch.nn.functional.nll_loss(lprobs.flatten(0, 1), target.flatten())
        loss.backward()
        if step == 0:  # later, heads pushed onto a clamp bound get zero gradient, by design
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in raw.values())
        optimizer.step()
        for alpha in _alphas(model).values():
            assert ((alpha >= low) & (alpha <= high)).all()
    after = _alphas(model)
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_stock_transformer_class_is_parent():
    assert issubclass(type(build("transformer_entmax")[0]), TransformerModel)


def test_no_attention_stats_attaches_no_observer_and_the_kernel_flag_reaches_every_normalizer():
    model, _ = build("transformer_entmax", "--no-attention-stats", "--attention-kernel", "reference")
    attentions = [m for m in model.modules() if isinstance(m, SparseMultiheadAttention)]
    assert attentions and all(not a.observers for a in attentions)
    assert all(a.normalizer.kernel == "reference" for a in attentions)
