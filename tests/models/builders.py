"""In-process construction of tiny fairseq models (the same argument parsing as fairseq-train)."""

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
