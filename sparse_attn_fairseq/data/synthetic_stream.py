"""Character streams with long-range repeats, to test that a streaming language model uses its memory.

Each line is ``period - 1`` random symbols (letters a-z, ``--symbols`` of them) and the line is repeated ``--repeats``
times before a fresh one is drawn, so with the end-of-line token the stream repeats itself with period ``period``. A
model that sees ``period`` tokens back copies the repeats (all but the first of every group); one limited to
blocks shorter than the period can only guess: log2(symbols) bits per random symbol.

    python -m sparse_attn_fairseq.data.synthetic_stream OUT_DIR [--period 48] [--repeats 4] [--symbols 16]

writes OUT_DIR/{train,valid,test}.txt (space-separated symbols), ready for ``fairseq-preprocess --only-source``.
"""

from __future__ import annotations

import argparse
import random
import string
from pathlib import Path

SPLITS = {"train": 1.0, "valid": 0.1, "test": 0.1}  # tokens relative to --tokens


def lines(rng: random.Random, tokens: int, period: int, repeats: int, symbols: int) -> list[str]:
    """Repeated random lines totalling about ``tokens`` tokens (each line plus its end-of-line is ``period``)."""
    alphabet = string.ascii_lowercase[:symbols]
    out: list[str] = []
    while len(out) * period < tokens:
        line = " ".join(rng.choice(alphabet) for _ in range(period - 1))
        out.extend([line] * repeats)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--period", type=int, default=48, help="tokens per line, its end-of-line included")
    parser.add_argument("--repeats", type=int, default=4, help="times each random line is repeated")
    parser.add_argument("--symbols", type=int, default=16, help="alphabet size, at most 26")
    parser.add_argument("--tokens", type=int, default=40000, help="training tokens (valid and test: a tenth)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not (2 <= args.period and 1 <= args.repeats and 2 <= args.symbols <= 26 and args.tokens >= args.period):
        parser.error("need --period >= 2, --repeats >= 1, 2 <= --symbols <= 26 and --tokens >= --period")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for split, share in SPLITS.items():
        text = lines(rng, int(args.tokens * share), args.period, args.repeats, args.symbols)
        (args.out_dir / f"{split}.txt").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
