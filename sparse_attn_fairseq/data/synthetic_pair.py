"""A deterministic synthetic language pair with gold word alignments, for demos and tests.

Source sentences follow an English-like SVO grammar; the target language differs the way real
pairs do, so attention has something to learn:

* a word-level lexicon (every source word has one target word),
* local reordering: adjectives follow their noun, the object precedes the verb (SOV), and
  prepositions become postpositions,
* one-to-many: a verb becomes a stem plus a tense particle,
* dropped words: the definite article has no translation.

Gold alignments are written in Pharaoh format (``i-j``: source index i, target index j, 0-based).

``--task reverse`` is the harder pair of the convergence benchmark: long sentences (10-30 words drawn from the whole
lexicon) whose translation is the word-by-word translation in reverse order, so every target word aligns far away.

Usage: python -m sparse_attn_fairseq.data.synthetic_pair OUT_DIR [--task svo|reverse] [--train N --valid N --test N]
"""

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

Token = Tuple[str, List[str]]  # a source word and its target words
Alignment = List[Tuple[int, int]]

WORD_CLASS_SIZES = {"noun": 80, "adj": 30, "verb": 40, "adv": 10, "det": 3, "prep": 8}
TENSE_PARTICLES = ("ka", "zu", "mi")
SPLIT_SEEDS = {"train": 1, "valid": 2, "test": 3}


@dataclass(frozen=True)
class Lexicon:
    """Source words per class and their target translations."""

    source: Dict[str, List[str]]
    target: Dict[str, List[str]]

    @classmethod
    def build(cls, seed: int = 0) -> "Lexicon":
        rng = random.Random(seed)
        source_words = _pseudo_words(rng, "ptkbdg", "aeiou", sum(WORD_CLASS_SIZES.values()))
        target_words = _pseudo_words(rng, "lmnrsvwz", "aoiy", sum(WORD_CLASS_SIZES.values()))
        source, target, start = {}, {}, 0
        for word_class, size in WORD_CLASS_SIZES.items():
            source[word_class] = source_words[start:start + size]
            target[word_class] = target_words[start:start + size]
            start += size
        return cls(source, target)

    def translate(self, word_class: str, index: int) -> Token:
        """A source word and its target words (empty for the dropped article)."""
        source = self.source[word_class][index]
        if word_class == "det" and index == 0:
            return source, []
        target = [self.target[word_class][index]]
        if word_class == "verb":
            target.append(TENSE_PARTICLES[index % len(TENSE_PARTICLES)])
        return source, target


def _pseudo_words(rng: random.Random, consonants: str, vowels: str, count: int) -> List[str]:
    words: List[str] = []
    seen = set(TENSE_PARTICLES)
    while len(words) < count:
        syllables = rng.randint(2, 3)
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class SentenceGenerator:
    """Samples source sentences and produces their translation and gold alignment."""

    def __init__(self, lexicon: Lexicon, rng: random.Random):
        self.lexicon, self.rng = lexicon, rng

    def _word(self, word_class: str) -> Token:
        return self.lexicon.translate(word_class, self.rng.randrange(WORD_CLASS_SIZES[word_class]))

    def noun_phrase(self) -> Tuple[List[Token], List[Token]]:
        """(source order DET ADJ* NOUN, target order DET NOUN ADJ*)."""
        det, noun = self._word("det"), self._word("noun")
        adjectives = [self._word("adj") for _ in range(self.rng.choice((0, 0, 1, 1, 2)))]
        return [det, *adjectives, noun], [det, noun, *adjectives]

    def sentence(self) -> Tuple[List[Token], List[Token]]:
        """(source tokens in source order, the same tokens in target order)."""
        subject_src, subject_tgt = self.noun_phrase()
        object_src, object_tgt = self.noun_phrase()
        verb_group = [self._word("adv")] if self.rng.random() < 0.3 else []
        verb_group.append(self._word("verb"))
        source = subject_src + verb_group + object_src
        target = subject_tgt + object_tgt + verb_group
        if self.rng.random() < 0.5:
            prep = self._word("prep")
            pp_src, pp_tgt = self.noun_phrase()
            source += [prep] + pp_src
            target += pp_tgt + [prep]
        return source, target


class ReverseGenerator(SentenceGenerator):
    """Long sentences of random words whose target is their translation in reverse order (long reordering)."""

    LENGTHS = (10, 30)

    def sentence(self) -> Tuple[List[Token], List[Token]]:
        classes = list(WORD_CLASS_SIZES)
        source = [self._word(self.rng.choice(classes)) for _ in range(self.rng.randint(*self.LENGTHS))]
        return source, source[::-1]


GENERATORS = {"svo": SentenceGenerator, "reverse": ReverseGenerator}


def render(source: List[Token], target_order: List[Token]) -> Tuple[str, str, Alignment]:
    """Source text, target text and alignment, following token identity between the two orders."""
    position = {id(token): i for i, token in enumerate(source)}
    target_words: List[str] = []
    alignment: Alignment = []
    for token in target_order:
        for word in token[1]:
            alignment.append((position[id(token)], len(target_words)))
            target_words.append(word)
    return " ".join(t[0] for t in source), " ".join(target_words), sorted(alignment)


def generate_split(lexicon: Lexicon, size: int, seed: int, task: str = "svo") -> List[Tuple[str, str, Alignment]]:
    """``size`` distinct-seeded sentence pairs with alignments, from the grammar ``task`` (see GENERATORS)."""
    generator = GENERATORS[task](lexicon, random.Random(seed))
    return [render(*generator.sentence()) for _ in range(size)]


def write_corpus(out_dir: Path, sizes: Dict[str, int], src: str = "src", tgt: str = "tgt", task: str = "svo") -> None:
    """Write {split}.{src,tgt} and {split}.align for each split in ``sizes``."""
    if any(n < 1 for n in sizes.values()):
        raise ValueError(f"split sizes must be positive, got {sizes}")
    if task not in GENERATORS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(GENERATORS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    lexicon = Lexicon.build()
    for split, size in sizes.items():
        pairs = generate_split(lexicon, size, SPLIT_SEEDS[split], task)
        for suffix, column in ((src, 0), (tgt, 1)):
            (out_dir / f"{split}.{suffix}").write_text("".join(p[column] + "\n" for p in pairs))
        lines = (" ".join(f"{i}-{j}" for i, j in p[2]) + "\n" for p in pairs)
        (out_dir / f"{split}.align").write_text("".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--task", choices=sorted(GENERATORS), default="svo", help="the grammar (default svo)")
    for split, default in (("train", 4000), ("valid", 300), ("test", 300)):
        parser.add_argument(f"--{split}", type=int, default=default, help=f"{split} pairs")
    args = parser.parse_args(argv)
    sizes = {"train": args.train, "valid": args.valid, "test": args.test}
    for split, size in sizes.items():
        if size < 1:
            parser.error(f"--{split} must be a positive number of pairs, got {size}")
    write_corpus(args.out_dir, sizes, task=args.task)
    print(f"wrote {sizes} pairs to {args.out_dir}")


if __name__ == "__main__":
    main()
