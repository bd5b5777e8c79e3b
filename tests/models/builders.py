"""In-process construction of tiny fairseq models (the same argument parsing as fairseq-train) and the checks every
architecture shares: incremental decoding == full forward with a beam reorder, train mode == eval mode after loading."""

from pathlib import Path

import torch
from fairseq import options
from fairseq.data import Dictionary

REPO = Path(__file__).resolve().parents[2]
USER_DIR = REPO / "sparse_attn_fairseq"

TINY_MT_FLAGS = [
    "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
    "--decoder-attention-heads", "2", "--share-all-embeddings", "--optimizer", "adam", "--lr", "3e-3",
    "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10", "--max-tokens", "1024", "--seed", "1", "--cpu",
    "--num-workers", "0", "--log-format", "simple", "--log-interval", "5", "--no-epoch-checkpoints",
]
NO_DROPOUT = ["--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0"]


class TinyTask:
    """What TransformerModel.build_model reads from a task: the dictionaries."""

    def __init__(self, vocab_size: int = 40):
        self.source_dictionary = self.target_dictionary = Dictionary()
        for i in range(vocab_size):
            self.source_dictionary.add_symbol(f"w{i}")


TINY_LM_FLAGS = [
    "--task", "language_modeling", "--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim",
    "64", "--decoder-attention-heads", "2", "--decoder-input-dim", "32", "--decoder-output-dim", "32", "--seed", "1",
    "--cpu",
]


def parse_args(arch: str, *flags: str, base=TINY_MT_FLAGS):
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["unused-data", "--arch", arch, *base, *flags])


def build(arch: str, *flags: str, task: TinyTask = None, seed: int = 0, base=TINY_MT_FLAGS):
    """(model, task) for ``arch`` with the tiny sizes (``base``: TINY_MT_FLAGS or TINY_LM_FLAGS), built by the model
    class registered for it."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    task = task or TinyTask()
    args = parse_args(arch, *flags, base=base)
    if base is TINY_LM_FLAGS:  # a dataclass model: fairseq-train hands it cfg.model, defaults filled in
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        args = convert_namespace_to_omegaconf(args).model
    torch.manual_seed(seed)
    return ARCH_MODEL_REGISTRY[arch].build_model(args, task), task


def normalizer_flags(name: str, *extra: str):
    """The same normalizer in all three attention types."""
    flags = []
    for kind in ("encoder", "decoder", "encoder-decoder"):
        flags += [f"--{kind}-attention-normalizer", name]
    return [*flags, *extra]


def random_batch(task: TinyTask, bsz: int = 3, src_len: int = 7, tgt_len: int = 6, seed: int = 0, pad_first=True):
    """src_tokens with left padding in one row (fairseq's default), lengths, and prev_output_tokens."""
    g = torch.Generator().manual_seed(seed)
    d = task.source_dictionary
    low, high = d.nspecial, len(d)
    src = torch.randint(low, high, (bsz, src_len), generator=g)
    src[:, -1] = d.eos()
    lengths = torch.full((bsz,), src_len)
    if pad_first and bsz > 1:
        src[1, :2] = d.pad()
        lengths[1] = src_len - 2
    prev = torch.randint(low, high, (bsz, tgt_len), generator=g)
    prev[:, 0] = d.eos()
    return src, lengths, prev


def _log_probs(model, net_output):
    return model.get_normalized_probs(net_output, log_probs=True)


def _stepwise_log_probs(model, encoder_out, prev, reorder_at, new_order):
    """Step-by-step decoding; at step ``reorder_at`` hypotheses are reordered (cache and token history)."""
    state, steps = {}, []
    for t in range(prev.size(1)):
        if t == reorder_at:
            model.decoder.reorder_incremental_state_scripting(state, new_order)
            prev = prev.index_select(0, new_order)
        out = model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
        steps.append(_log_probs(model, out)[:, -1])
    return torch.stack(steps, dim=1), prev, state  # (bsz * beam, tgt_len, vocab)


@torch.no_grad()
def incremental_vs_full(model, task, bsz=2, beam=3, tgt_len=6, reorder_at=3, src_len=7):
    """Max |log p| difference between beam-style incremental decoding (a reorder within each sentence's beams at
    ``reorder_at``) and full forwards, and the final incremental state; the model must be in eval mode."""
    src, lengths, _ = random_batch(task, bsz=bsz, src_len=src_len)
    _, _, prev = random_batch(task, bsz=bsz * beam, tgt_len=tgt_len, seed=1)  # a different prefix per hypothesis
    new_order = torch.cat([torch.randperm(beam, generator=torch.Generator().manual_seed(i)) + i * beam
                           for i in range(bsz)])  # a permutation within each sentence's beams, as beam search makes
    encoder_out = model.encoder(src, src_lengths=lengths)
    encoder_out = model.encoder.reorder_encoder_out(encoder_out, torch.arange(bsz).repeat_interleave(beam))
    model.decoder.set_beam_size(beam)  # cross-attention keys shared by a sentence's beams
    stepwise, reordered, state = _stepwise_log_probs(model, encoder_out, prev, reorder_at, new_order)
    model.decoder.set_beam_size(1)
    full_before = _log_probs(model, model.decoder(prev, encoder_out=encoder_out))
    full_after = _log_probs(model, model.decoder(reordered, encoder_out=encoder_out))
    assert torch.isfinite(stepwise).all()
    diff_before = (stepwise[:, :reorder_at] - full_before[:, :reorder_at]).abs().max()
    diff_after = (stepwise[:, reorder_at:] - full_after[:, reorder_at:]).abs().max()
    return max(diff_before.item(), diff_after.item()), state


def train_equals_eval_after_loading(arch, tmp_path, *flags):
    """Max output difference of a reloaded model (fairseq sets load_to_BT on load) in train vs eval mode."""
    model, task = build(arch, *NO_DROPOUT, *flags)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    loaded, _ = build(arch, *NO_DROPOUT, *flags, task=task, seed=5)
    loaded.load_state_dict(torch.load(tmp_path / "weights.pt"))
    src, lengths, prev = random_batch(task)
    loaded.eval()
    with torch.no_grad():
        eval_out = loaded(src, lengths, prev)[0]
    loaded.train()
    train_out = loaded(src, lengths, prev)[0]
    return (train_out - eval_out).abs().max().item()


def diff_to_stock_transformer(ours, task, train: bool) -> float:
    """Max output difference of ``ours`` and fairseq's ``transformer`` holding the same weights."""
    stock, _ = build("transformer", *NO_DROPOUT, task=task, seed=1)
    stock.load_state_dict(ours.state_dict(), strict=True)
    src, lengths, prev = random_batch(task)
    ours.train(train)
    stock.train(train)
    return (ours(src, lengths, prev)[0] - stock(src, lengths, prev)[0]).abs().max().item()


def lm_incremental_vs_full(model, task, bsz=3, length=20, reorder_at=10, seed=0) -> float:
    """Largest difference between step-by-step incremental log-probabilities of a language model (with a beam-style
    reorder of the batch at ``reorder_at``) and one full forward over the same tokens."""
    generator = torch.Generator().manual_seed(seed)
    dictionary = task.target_dictionary
    src = torch.randint(dictionary.nspecial, len(dictionary), (bsz, length), generator=generator)
    full = model.get_normalized_probs(model(src), log_probs=True)
    state, order, steps = {}, torch.roll(torch.arange(bsz), 1), []
    for t in range(length):
        if t == reorder_at:
            model.decoder.reorder_incremental_state_scripting(state, order)
            src, full, steps = src[order], full[order], [s[order] for s in steps]
        out = model.decoder(src[:, : t + 1], incremental_state=state)
        steps.append(model.get_normalized_probs(out, log_probs=True)[:, -1])
    return (torch.stack(steps, dim=1) - full).abs().max().item()
