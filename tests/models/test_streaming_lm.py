"""The streaming adaptive-span LM in process: blocks with memory against one forward over the whole sequence,
trimmed against untrimmed memory, train against eval mode, incremental decoding against the full forward, and the
memory's separation per split. Float64, so differences are the algorithm's, not rounding."""

import pytest
import torch

from sparse_attn_fairseq.modules.stream_memory import StreamPosition
from tests.models.builders import NO_DROPOUT, TINY_LM_FLAGS, build
from tests.tolerances import STREAMING, max_err

BLOCK = 8
STREAMING_FLAGS = ["--adaptive-span-positions", "relative", "--adaptive-span-ramp", "4", *NO_DROPOUT]


def streaming_model(*flags, span_max=16, init=0.5, seed=0):
    model, task = build("transformer_lm_adaptive_span", *STREAMING_FLAGS, "--adaptive-span-max", str(span_max),
                        "--adaptive-span-init", str(init), "--decoder-layers", "2", *flags, base=TINY_LM_FLAGS,
                        seed=seed)
    return model.double().eval(), task


def tokens(task, bsz=2, length=4 * BLOCK, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(task.target_dictionary.nspecial, len(task.target_dictionary), (bsz, length),
                         generator=generator)


def log_probs(model, src, **kwargs):
    return model.get_normalized_probs(model(src, **kwargs), log_probs=True)


def blockwise(model, src, group="train", block=BLOCK):
    outs = [log_probs(model, src[:, i: i + block], stream=StreamPosition(group, i // block))
            for i in range(0, src.size(1), block)]
    return torch.cat(outs, dim=1)


NORMALIZERS = ["softmax", "entmax_alpha", "sparsemax"]


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_blocks_with_memory_equal_one_forward_over_the_whole_sequence(normalizer):
    model, task = streaming_model("--decoder-attention-normalizer", normalizer)
    src = tokens(task)
    assert max_err(blockwise(model, src), log_probs(model, src)) <= STREAMING


def test_relative_positions_replace_absolute_ones_and_are_shared():
    model, _ = streaming_model()
    assert model.decoder.embed_positions is None
    attentions = model.span_attentions()
    assert len(attentions) == 2 and all(a.key_positions is model.decoder.key_positions for a in attentions)
    names = [name for name, _ in model.named_parameters() if "key_positions" in name]
    assert names == ["decoder.key_positions.weight"]  # one table, saved once


@pytest.mark.parametrize("dynamic", [False, True])
def test_trimmed_memory_equals_untrimmed_memory(dynamic):
    """Spans of ~13 tokens under S = 256: the trimmed memory holds 64 keys, the full one up to 260."""
    flags = ["--adaptive-span-dynamic"] if dynamic else []
    trimmed, task = streaming_model(*flags, span_max=256, init=0.05)
    full, _ = streaming_model(*flags, "--adaptive-span-memory", "full", span_max=256, init=0.05)
    src = tokens(task, length=16 * BLOCK)
    out_trimmed, out_full = blockwise(trimmed, src), blockwise(full, src)
    assert max_err(out_trimmed, out_full) <= STREAMING
    assert max_err(out_full, log_probs(full, src)) <= STREAMING
    assert set(full.stream_memory.tokens("train").values()) == {16 * BLOCK}
    if not dynamic:  # a dynamic span may reach S: its memory cannot be trimmed
        assert set(trimmed.stream_memory.tokens("train").values()) == {64}


def test_train_mode_equals_eval_mode_without_dropout():
    model, task = streaming_model()
    src = tokens(task)
    evaluated = blockwise(model, src)
    model.train()
    trained = blockwise(model, src)
    assert max_err(trained, evaluated) <= STREAMING


def test_incremental_decoding_equals_the_full_forward_with_a_beam_reorder():
    model, task = streaming_model(span_max=8, init=0.5)
    src = tokens(task, bsz=3, length=20)
    full = log_probs(model, src)
    state, order = {}, torch.tensor([2, 0, 1])
    steps, current = [], src
    for t in range(src.size(1)):
        if t == 10:  # the beam search reorders hypotheses: caches must follow
            model.decoder.reorder_incremental_state_scripting(state, order)
            current, full = current[order], full[order]
            steps = [s[order] for s in steps]
        out = model.decoder(current[:, : t + 1], incremental_state=state)
        steps.append(model.get_normalized_probs(out, log_probs=True)[:, -1])
    assert max_err(torch.stack(steps, dim=1), full) <= STREAMING


def test_memory_is_kept_per_split_and_reset_where_streams_start():
    model, task = streaming_model()
    train_src, valid_src = tokens(task, seed=1), tokens(task, seed=2)
    blockwise(model, train_src, "train")
    blockwise(model, valid_src[:, :BLOCK], "valid")
    fresh, _ = streaming_model()
    blockwise(fresh, valid_src[:, :BLOCK], "valid")
    for layer in range(2):  # the valid memory was built from valid tokens only
        ours, alone = model.stream_memory.cached("valid", layer), fresh.stream_memory.cached("valid", layer)
        assert torch.equal(ours[0], alone[0]) and torch.equal(ours[1], alone[1])
    # block 0 of "train" again: a new pass over the streams starts without memory
    again = log_probs(model, train_src[:, :BLOCK], stream=StreamPosition("train", 0))
    assert max_err(again, log_probs(model, train_src[:, :BLOCK])) <= STREAMING
    # a block out of order (a resumed run) also starts without memory
    skipped = log_probs(model, train_src[:, 2 * BLOCK: 3 * BLOCK], stream=StreamPosition("train", 2))
    assert max_err(skipped, log_probs(model, train_src[:, 2 * BLOCK: 3 * BLOCK])) <= STREAMING


def test_checkpoints_hold_no_memory(tmp_path):
    model, task = streaming_model()
    blockwise(model, tokens(task))
    state = model.state_dict()
    assert not [name for name in state if "memory" in name]
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers())


@pytest.mark.parametrize("normalizer", ["rela", "entmax15"])
def test_every_normalizer_composes_with_span_and_memory(normalizer):
    """One span attention module (ReLA with its output norm; entmax): blocks with memory equal one full pass."""
    from sparse_attn_fairseq.layers.key_positions import KeyPositions
    from sparse_attn_fairseq.modules.stream_memory import StreamMemory
    from sparse_attn_fairseq.modules.transformer_layers import build_sparse_attention
    from sparse_attn_fairseq.options import NormalizerSpec, SpanOptions

    torch.manual_seed(0)
    spec = NormalizerSpec(normalizer, output_norm=(("variant", "gated"), ("per_head", False), ("gate_init", "glorot"))
                          if normalizer == "rela" else None)
    attention = build_sparse_attention(16, 2, spec, span=SpanOptions(12, 3, 0.5, 0.0, False), self_attention=True,
                                       causal=True).double().eval()
    attention.use_key_positions(KeyPositions(15, 8).double())
    x = torch.randn(4 * BLOCK, 2, 16, dtype=torch.float64)
    full, _ = attention(x, x, x, need_weights=False)
    memory, outs = StreamMemory(), []
    for b in range(4):
        with memory.attached([attention], StreamPosition("train", b), 2):
            block = x[b * BLOCK: (b + 1) * BLOCK]
            outs.append(attention(block, block, block, need_weights=False)[0])
    assert max_err(torch.cat(outs), full) <= STREAMING
