"""transformer_entmax in-process: softmax == stock fairseq, incremental == full (with beams), train == eval, alpha."""

import pytest
import torch
from fairseq.models.transformer import TransformerModel

from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention
from sparse_attn_fairseq.options import ENTMAX_NORMALIZERS
from tests.models.builders import NO_DROPOUT, build, normalizer_flags, random_batch

# Tolerances of this file (max abs difference).
SAME_AS_STOCK = 1e-5
INCREMENTAL_LOGPROBS = 1e-4


def _log_probs(model, net_output):
    return model.get_normalized_probs(net_output, log_probs=True)


@pytest.mark.parametrize("train", [False, True])
def test_softmax_everywhere_reproduces_stock_transformer(train):
    ours, task = build("transformer_entmax", *normalizer_flags("softmax"), *NO_DROPOUT)
    stock, _ = build("transformer", *NO_DROPOUT, task=task, seed=1)
    stock.load_state_dict(ours.state_dict(), strict=True)
    src, lengths, prev = random_batch(task)
    ours.train(train)
    stock.train(train)
    diff = (ours(src, lengths, prev)[0] - stock(src, lengths, prev)[0]).abs().max().item()
    assert diff <= SAME_AS_STOCK


def test_every_attention_is_sparse_multihead_attention():
    model, _ = build("transformer_entmax")
    attentions = [m for m in model.modules() if isinstance(m, SparseMultiheadAttention)]
    assert len(attentions) == 3  # 1 encoder self, 1 decoder self, 1 encoder-decoder
    assert {a.stats_key for a in attentions} == {"enc", "dec", "encdec"}
    assert not any(type(m).__name__ == "MultiheadAttention" for m in model.modules())


def _incremental_log_probs(model, encoder_out, prev, reorder_at, new_order):
    """Step-by-step decoding; at step ``reorder_at`` hypotheses are reordered (cache and token history)."""
    state = {}
    steps = []
    for t in range(prev.size(1)):
        if t == reorder_at:
            model.decoder.reorder_incremental_state_scripting(state, new_order)
            prev = prev.index_select(0, new_order)
        out = model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
        steps.append(_log_probs(model, out)[:, -1])
    return torch.stack(steps, dim=1), prev  # (bsz * beam, tgt_len, vocab)


@pytest.mark.parametrize("normalizer", ENTMAX_NORMALIZERS)
def test_incremental_decoding_matches_full_forward_with_beam_reorder(normalizer):
    model, task = build("transformer_entmax", *normalizer_flags(normalizer, "--entmax-alpha-init", "random"))
    model.eval()
    bsz, beam, tgt_len, reorder_at = 2, 3, 6, 3
    src, lengths, _ = random_batch(task, bsz=bsz)
    _, _, prev = random_batch(task, bsz=bsz * beam, tgt_len=tgt_len, seed=1)  # a different prefix per hypothesis
    # a permutation within each sentence's beams, as beam search makes
    new_order = torch.cat([torch.randperm(beam, generator=torch.Generator().manual_seed(i)) + i * beam
                           for i in range(bsz)])
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths=lengths)
        encoder_out = model.encoder.reorder_encoder_out(encoder_out, torch.arange(bsz).repeat_interleave(beam))
        model.decoder.set_beam_size(beam)  # cross-attention keys shared by a sentence's beams
        stepwise, reordered = _incremental_log_probs(model, encoder_out, prev, reorder_at, new_order)
        model.decoder.set_beam_size(1)
        full_before = _log_probs(model, model.decoder(prev, encoder_out=encoder_out))
        full_after = _log_probs(model, model.decoder(reordered, encoder_out=encoder_out))
    diff_before = (stepwise[:, :reorder_at] - full_before[:, :reorder_at]).abs().max()
    diff_after = (stepwise[:, reorder_at:] - full_after[:, reorder_at:]).abs().max()
    assert torch.isfinite(stepwise).all()
    assert max(diff_before.item(), diff_after.item()) <= INCREMENTAL_LOGPROBS


def test_train_mode_without_dropout_equals_eval_mode_after_loading(tmp_path):
    model, task = build("transformer_entmax", *NO_DROPOUT)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    loaded, _ = build("transformer_entmax", *NO_DROPOUT, task=task, seed=5)
    loaded.load_state_dict(torch.load(tmp_path / "weights.pt"))  # sets fairseq's load_to_BT on encoder layers
    src, lengths, prev = random_batch(task)
    loaded.eval()
    with torch.no_grad():
        eval_out = loaded(src, lengths, prev)[0]
    loaded.train()
    train_out = loaded(src, lengths, prev)[0]
    assert (train_out - eval_out).abs().max().item() <= SAME_AS_STOCK


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
        lprobs = _log_probs(model, model(src, lengths, prev))
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
