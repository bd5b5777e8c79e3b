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


def parse_args(arch: str, *flags: str):
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["unused-data", "--arch", arch, *TINY_MT_FLAGS, *flags])


def build(arch: str, *flags: str, task: TinyTask = None, seed: int = 0):
    """(model, task) for ``arch`` with the tiny sizes, built by the model class registered for it."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    task = task or TinyTask()
    args = parse_args(arch, *flags)
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


def log_probs(model, net_output):
    return model.get_normalized_probs(net_output, log_probs=True)


def _incremental_log_probs(model, encoder_out, prev, reorder_at, new_order):
    """Step-by-step decoding; at step ``reorder_at`` hypotheses are reordered (cache and token history)."""
    state = {}
    steps = []
    for t in range(prev.size(1)):
        if t == reorder_at:
            model.decoder.reorder_incremental_state_scripting(state, new_order)
            prev = prev.index_select(0, new_order)
        out = model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
        steps.append(log_probs(model, out)[:, -1])
    return torch.stack(steps, dim=1), prev  # (bsz * beam, tgt_len, vocab)


def incremental_vs_full(model, task, bsz=2, beam=3, tgt_len=6, reorder_at=3):
    """(stepwise log-probs, max abs difference to full forwards) for beam decoding with a within-beam reorder."""
    model.eval()
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
        full_before = log_probs(model, model.decoder(prev, encoder_out=encoder_out))
        full_after = log_probs(model, model.decoder(reordered, encoder_out=encoder_out))
    diff_before = (stepwise[:, :reorder_at] - full_before[:, :reorder_at]).abs().max()
    diff_after = (stepwise[:, reorder_at:] - full_after[:, reorder_at:]).abs().max()
    return stepwise, max(diff_before.item(), diff_after.item())


def train_vs_eval_after_loading(arch, tmp_path, *flags):
    """Max abs difference of train-mode (dropout 0) and eval-mode outputs of a model loaded from a saved state."""
    model, task = build(arch, *flags, *NO_DROPOUT)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    loaded, _ = build(arch, *flags, *NO_DROPOUT, task=task, seed=5)
    loaded.load_state_dict(torch.load(tmp_path / "weights.pt"))  # sets fairseq's load_to_BT on encoder layers
    src, lengths, prev = random_batch(task)
    loaded.eval()
    with torch.no_grad():
        eval_out = loaded(src, lengths, prev)[0]
    loaded.train()
    train_out = loaded(src, lengths, prev)[0]
    return (train_out - eval_out).abs().max().item()
