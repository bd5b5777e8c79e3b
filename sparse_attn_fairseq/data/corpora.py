"""Text extraction and cleaning for the recipes' real data sets (recipes/prepare_*.sh).

    python -m sparse_attn_fairseq.data.corpora COMMAND ...

Commands:
    iwslt-train IN OUT            IWSLT train.tags file: drop the tag lines (<url>, <talkid>, ...), strip the rest
    segments OUT IN [IN ...]      IWSLT .xml or WMT .sgm files: the text of every <seg ...>...</seg>, in order
    clean SRC TGT OUT_SRC OUT_TGT [--max-len 250] [--ratio 1.5]
                                  drop empty pairs, pairs with a side over --max-len words, and pairs whose word
                                  counts differ by more than --ratio (after 10 words), as Moses clean-corpus-n
    enwik8 ZIP OUT_DIR            the paper's split: the first 90M bytes train, then 5M valid, 5M test; every byte
                                  is a token (its number), a newline byte ends a line (fairseq's end-of-line token)
    text8 ZIP OUT_DIR             the same split in characters; a space is the token "_", and one space in about
                                  every 1000 characters is a line end instead, so the token count is unchanged
    rwth DIR OUT_PREFIX           RWTH De-En gold alignments (latin-1): OUT_PREFIX.{de,en,talp} in UTF-8

Every command checks its input and exits with a message naming the file and line at fault.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import zipfile
from pathlib import Path

SEGMENT = re.compile(r"<seg[^>]*>(.*?)</seg>", re.IGNORECASE)
CHAR_SPLITS = (("train", 90_000_000), ("valid", 5_000_000), ("test", 5_000_000))  # the last 10M: valid + test
TEXT8_LINE = 1000  # characters per line of the text8 files (a space becomes the line end)


def fail(message: str) -> None:
    sys.exit(f"error: {message}")


def iwslt_train(src: Path, out: Path) -> None:
    lines = [line.strip() for line in src.read_text(encoding="utf-8").splitlines()]
    kept = [line for line in lines if line and not line.startswith("<")]
    if not kept:
        fail(f"{src}: no text lines (only tags or nothing)")
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")


def segments(out: Path, sources: list[Path]) -> None:
    found = []
    for src in sources:
        texts = [html.unescape(text.strip()) for text in SEGMENT.findall(src.read_text(encoding="utf-8"))]
        if not texts:
            fail(f"{src}: no <seg> elements")
        found.extend(texts)
    out.write_text("\n".join(found) + "\n", encoding="utf-8")


def clean(src: Path, tgt: Path, out_src: Path, out_tgt: Path, max_len: int, ratio: float) -> None:
    source = src.read_text(encoding="utf-8").splitlines()
    target = tgt.read_text(encoding="utf-8").splitlines()
    if len(source) != len(target):
        fail(f"{src} has {len(source)} lines, {tgt} has {len(target)}: not a parallel corpus")
    kept = []
    for s, t in zip(source, target):
        ns, nt = len(s.split()), len(t.split())
        if 0 < ns <= max_len and 0 < nt <= max_len and (max(ns, nt) <= 10 or max(ns, nt) <= ratio * min(ns, nt)):
            kept.append((s.strip(), t.strip()))
    if not kept:
        fail(f"{src}, {tgt}: no pair survives cleaning")
    out_src.write_text("".join(s + "\n" for s, _ in kept), encoding="utf-8")
    out_tgt.write_text("".join(t + "\n" for _, t in kept), encoding="utf-8")
    print(f"kept {len(kept)} of {len(source)} pairs")


def _read_single_member(archive: Path) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        if len(names) != 1:
            fail(f"{archive}: expected one file inside, found {names}")
        return zf.read(names[0])


def _split_points(total: int) -> list[tuple[str, int, int]]:
    """(split, start, end): valid and test are the last 10M units; train is everything before (scaled down for
    inputs shorter than the real 100M, keeping the 90:5:5 proportions)."""
    full = sum(size for _, size in CHAR_SPLITS)
    sizes = [size if total >= full else total * size // full for _, size in CHAR_SPLITS]
    test_start = total - sizes[2]
    valid_start = test_start - sizes[1]
    return [("train", 0, valid_start), ("valid", valid_start, test_start), ("test", test_start, total)]


def enwik8(archive: Path, out_dir: Path) -> None:
    data = _read_single_member(archive)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, start, end in _split_points(len(data)):
        lines = data[start:end].split(b"\n")
        if len(lines) > 1 and not lines[-1]:
            lines.pop()  # the part ended with a newline: its end-of-line token is the last line's
        text = "\n".join(" ".join(str(byte) for byte in line) for line in lines)
        (out_dir / f"{split}.txt").write_text(text + "\n", encoding="ascii")


def text8(archive: Path, out_dir: Path) -> None:
    data = _read_single_member(archive).decode("ascii")
    if "\n" in data.strip():
        fail(f"{archive}: text8 is one line of lowercase words, found line breaks")
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, start, end in _split_points(len(data)):
        part, lines, line = data[start:end], [], []
        for char in part:
            if char == " " and len(line) >= TEXT8_LINE:
                lines.append(" ".join(line))
                line = []
            else:
                line.append("_" if char == " " else char)
        lines.append(" ".join(line))
        (out_dir / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="ascii")


def rwth(folder: Path, prefix: Path) -> None:
    """The RWTH archive holds the German and English sentences and their alignments, one per line, in latin-1."""
    names = {"de": None, "en": None, "talp": None}
    for path in sorted(folder.rglob("*")):
        lower = path.name.lower()
        if path.is_file():
            if lower.endswith((".de", "de.txt")) or lower == "de":
                names["de"] = path
            elif lower.endswith((".en", "en.txt")) or lower == "en":
                names["en"] = path
            elif "align" in lower or lower.endswith(".talp"):
                names["talp"] = path
    missing = [k for k, v in names.items() if v is None]
    if missing:
        fail(f"{folder}: no {', '.join(missing)} file found (expected German, English and alignment files)")
    texts = {k: v.read_text(encoding="latin-1").splitlines() for k, v in names.items()}
    if len({len(lines) for lines in texts.values()}) != 1:
        fail(f"{folder}: the files have {', '.join(f'{k} {len(v)}' for k, v in texts.items())} lines")
    for key, lines in texts.items():
        Path(f"{prefix}.{key}").write_text("\n".join(line.strip() for line in lines) + "\n", encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("segments")
    sub.add_argument("out", type=Path)
    sub.add_argument("sources", type=Path, nargs="+")
    for name, args in (("iwslt-train", ("src", "out")), ("enwik8", ("archive", "out")),
                       ("text8", ("archive", "out")), ("rwth", ("folder", "prefix"))):
        sub = commands.add_parser(name)
        for arg in args:
            sub.add_argument(arg, type=Path)
    sub = commands.add_parser("clean")
    for arg in ("src", "tgt", "out_src", "out_tgt"):
        sub.add_argument(arg, type=Path)
    sub.add_argument("--max-len", type=int, default=250)
    sub.add_argument("--ratio", type=float, default=1.5)
    a = parser.parse_args(argv)
    inputs = [getattr(a, name) for name in ("src", "tgt", "archive", "folder") if hasattr(a, name)]
    for path in inputs + list(getattr(a, "sources", [])):
        if not path.exists():
            fail(f"{path}: no such file or folder")
    if a.command == "iwslt-train":
        iwslt_train(a.src, a.out)
    elif a.command == "segments":
        segments(a.out, a.sources)
    elif a.command == "clean":
        clean(a.src, a.tgt, a.out_src, a.out_tgt, a.max_len, a.ratio)
    elif a.command == "enwik8":
        enwik8(a.archive, a.out)
    elif a.command == "text8":
        text8(a.archive, a.out)
    else:
        rwth(a.folder, a.prefix)


if __name__ == "__main__":
    main()
