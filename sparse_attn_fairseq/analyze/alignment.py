"""Word alignments: gold files, subword-to-word mapping, alignments read off attention, and AER.

AER (Och & Ney 2003): 1 - (|A n S| + |A n P|) / (|A| + |S|) with hypothesis links A, sure links S and possible links P
(S a subset of P), sums over the corpus. Links are (source word, target word) pairs, 0-based.

Gold formats:
- ``pharaoh``: ``i-j`` per link, 0-based, every link sure (fairseq's and fast_align's format);
- ``talp``: the RWTH German-English gold set's style, 1-based, ``i-j`` a sure link and ``ipj`` a possible one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

Link = tuple[int, int]
FORMATS = ("pharaoh", "talp")
PIECE_STYLES = ("sentencepiece", "subword-nmt", "none")  # none: every token is a word
_LINK = {"pharaoh": re.compile(r"^(\d+)-(\d+)$"), "talp": re.compile(r"^(\d+)([-p])(\d+)$")}


class AlignmentFileError(ValueError):
    """A gold alignment file that cannot be used; the message names the file and the line."""


@dataclass
class GoldAlignment:
    """One sentence's gold links; ``possible`` includes ``sure``."""

    sure: set[Link] = field(default_factory=set)
    possible: set[Link] = field(default_factory=set)


def parse_links(line: str, fmt: str = "pharaoh") -> GoldAlignment:
    """One line of a gold file -> 0-based sure and possible links. Raises ValueError naming a malformed link."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown alignment format {fmt!r}; choose one of {', '.join(FORMATS)}")
    gold = GoldAlignment()
    for token in line.split():
        match = _LINK[fmt].match(token)
        if match is None:
            raise ValueError(f"malformed link {token!r} (expected {'i-j' if fmt == 'pharaoh' else 'i-j or ipj'})")
        if fmt == "pharaoh":
            link, sure = (int(match.group(1)), int(match.group(2))), True
        else:
            link, sure = (int(match.group(1)) - 1, int(match.group(3)) - 1), match.group(2) == "-"
            if min(link) < 0:
                raise ValueError(f"link {token!r} is not 1-based")
        gold.possible.add(link)
        if sure:
            gold.sure.add(link)
    return gold


def read_gold(path: Path, fmt: str = "pharaoh", encoding: str = "utf-8",
              lengths: Sequence[tuple[int, int]] | None = None) -> list[GoldAlignment]:
    """A gold file, one line per sentence. With ``lengths`` ((source words, target words) per sentence) the line count
    and every index are checked. Raises AlignmentFileError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise AlignmentFileError(f"{path}: no such alignment file")
    try:
        lines = path.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError as error:
        raise AlignmentFileError(f"{path}: not {encoding} text ({error.reason} at byte {error.start})") from None
    if lengths is not None and len(lines) != len(lengths):
        raise AlignmentFileError(f"{path}: {len(lines)} lines for {len(lengths)} sentences")
    golds = []
    for number, line in enumerate(lines, 1):
        try:
            gold = parse_links(line, fmt)
        except ValueError as error:
            raise AlignmentFileError(f"{path}, line {number}: {error}") from None
        if lengths is not None:
            source_words, target_words = lengths[number - 1]
            bad = sorted(link for link in gold.possible if link[0] >= source_words or link[1] >= target_words)
            if bad:
                raise AlignmentFileError(
                    f"{path}, line {number}: link {bad[0][0]}-{bad[0][1]} (0-based) is out of range for "
                    f"{source_words} source and {target_words} target words")
        golds.append(gold)
    return golds


def word_ids(pieces: Sequence[str], style: str = "sentencepiece") -> list[int]:
    """The word index of each subword piece. sentencepiece: a piece starting with U+2581 starts a word;
    subword-nmt: a piece ending in ``@@`` continues into the next one; none: every piece is a word."""
    if style not in PIECE_STYLES:
        raise ValueError(f"unknown piece style {style!r}; choose one of {', '.join(PIECE_STYLES)}")
    if style == "none":
        return list(range(len(pieces)))
    ids, word = [], -1
    for index, piece in enumerate(pieces):
        if style == "sentencepiece":
            word += 1 if piece.startswith("\u2581") or index == 0 else 0
        else:
            word += 1 if index == 0 or not pieces[index - 1].endswith("@@") else 0
        ids.append(word)
    return ids


def word_alignment(attention: torch.Tensor, source_words: Sequence[int], target_words: Sequence[int]) -> set[Link]:
    """Links (source word, target word): each target word to the source word its attention favours most.

    attention: (target pieces, source pieces). A word's weight on a source word is the sum over that word's source
    pieces, averaged over its target pieces. A target word whose row is all zero (ReLA's null attention) gets no link.
    """
    attention = attention.double()
    src = torch.as_tensor(source_words)
    tgt = torch.as_tensor(target_words)
    n_src, n_tgt = int(src.max()) + 1, int(tgt.max()) + 1
    by_source = torch.zeros(attention.size(0), n_src, dtype=torch.float64).index_add_(1, src, attention)
    by_word = torch.zeros(n_tgt, n_src, dtype=torch.float64).index_add_(0, tgt, by_source)
    best = by_word.argmax(-1)
    return {(int(best[j]), j) for j in range(n_tgt) if by_word[j].max() > 0}


def aer(hypotheses: Sequence[set[Link]], golds: Sequence[GoldAlignment]) -> float:
    """Corpus AER of hypothesis links against gold links (see the module docstring).

    Raises:
        ValueError: different numbers of sentences, or no link at all in either (AER is 0/0).
    """
    if len(hypotheses) != len(golds):
        raise ValueError(f"{len(hypotheses)} hypothesis alignments for {len(golds)} gold ones")
    a = sum(len(h) for h in hypotheses)
    s = sum(len(g.sure) for g in golds)
    if a + s == 0:
        raise ValueError("AER is undefined: neither the hypotheses nor the gold sure links have a link")
    agree = sum(len(h & g.sure) + len(h & g.possible) for h, g in zip(hypotheses, golds))
    return 1.0 - agree / (a + s)
