"""sentencepiece for the recipes (the pip package has no command-line tools).

    python -m sparse_attn_fairseq.data.spm train --input FILE [FILE ...] --model-prefix PREFIX --vocab-size N
    python -m sparse_attn_fairseq.data.spm encode --model PREFIX.model < raw > pieces
    python -m sparse_attn_fairseq.data.spm encode --model PREFIX.model IN OUT [IN OUT ...]
    python -m sparse_attn_fairseq.data.spm decode --model PREFIX.model < pieces > raw

``train`` learns one model on all the given files (a joint vocabulary when both languages are given), BPE by
default (``--model-type unigram`` for the unigram LM); a vocabulary too large for tiny data is lowered to what the
data allows, with a warning. Encoding writes space-separated pieces, one line per line.
"""

from __future__ import annotations

import argparse
import re
import sys


def train(inputs, prefix: str, vocab_size: int, model_type: str, max_sentences: int) -> None:
    import sentencepiece as spm

    options = dict(input=",".join(inputs), model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
                   character_coverage=1.0, input_sentence_size=max_sentences, shuffle_input_sentence=True,
                   bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, minloglevel=2)
    try:
        spm.SentencePieceTrainer.train(**options)
    except RuntimeError as error:  # "Vocabulary size is too high ... Please set it to a value <= N."
        allowed = re.search(r"<= (\d+)", str(error))
        if not allowed:
            raise
        print(f"warning: --vocab-size {vocab_size} is too large for this data; using {allowed.group(1)}",
              file=sys.stderr)
        spm.SentencePieceTrainer.train(**{**options, "vocab_size": int(allowed.group(1))})


def encode(model: str, files: list, decode: bool = False) -> None:
    """stdin to stdout, or each IN file to its OUT file."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=model)

    def convert(lines):
        for line in lines:
            text = line.rstrip("\n")
            yield (processor.decode_pieces(text.split()) if decode else " ".join(processor.encode(text, out_type=str)))

    if not files:
        for line in convert(sys.stdin):
            print(line)
        return
    if len(files) % 2:
        sys.exit("error: give input and output files in pairs: IN OUT [IN OUT ...]")
    for src, out in zip(files[::2], files[1::2]):
        with open(src, encoding="utf-8") as lines, open(out, "w", encoding="utf-8") as sink:
            sink.writelines(line + "\n" for line in convert(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("train")
    sub.add_argument("--input", nargs="+", required=True)
    sub.add_argument("--model-prefix", required=True)
    sub.add_argument("--vocab-size", type=int, required=True)
    sub.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    sub.add_argument("--max-sentences", type=int, default=10_000_000, help="sentences sampled for training")
    for name in ("encode", "decode"):
        sub = commands.add_parser(name)
        sub.add_argument("--model", required=True)
        sub.add_argument("files", nargs="*", help="IN OUT pairs (default: stdin to stdout)")
    args = parser.parse_args(argv)
    if args.command == "train":
        if args.vocab_size < 8:
            parser.error(f"--vocab-size={args.vocab_size}: must be at least 8")
        train(args.input, args.model_prefix, args.vocab_size, args.model_type, args.max_sentences)
    else:
        encode(args.model, args.files, decode=args.command == "decode")


if __name__ == "__main__":
    main()
