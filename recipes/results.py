"""Write one trained model's row into the recipes' results table (results.md), beside the paper's number.

    python recipes/results.py RESULTS translation DATASET ARCH SETUP SIZE SACREBLEU TOKENISED_BLEU AER SIGNATURE
    python recipes/results.py RESULTS lm DATASET PRESET SIZE VALID_BPC TEST_BPC

A row for the same model (kind, data set, model, setting, size) is replaced; the table stays sorted.
"""

import re
import sys
from pathlib import Path

# (data set, model) -> what the papers report (SPEC: entmax paper tokenised BLEU; ReLA paper sacreBLEU and AER;
# adaptive-span paper dev / test bpc).
PAPERS = {
    ("iwslt17_de_en", "transformer"): "tok 29.79 (entmax paper)",
    ("iwslt17_de_en", "entmax15"): "tok 29.83 (entmax paper)",
    ("iwslt17_de_en", "entmax"): "tok 29.90 (entmax paper)",
    ("iwslt17_de_en", "rela"): "AER 0.41, best head (ReLA paper)",
    ("wmt16_ro_en", "transformer"): "tok 32.70 (entmax paper); 32.7 (ReLA paper)",
    ("wmt16_ro_en", "entmax15"): "tok 33.10 (entmax paper); 33.2 (ReLA paper)",
    ("wmt16_ro_en", "entmax"): "tok 32.89 (entmax paper)",
    ("wmt16_ro_en", "sparsemax"): "33.5 (ReLA paper)",
    ("wmt16_ro_en", "rela"): "32.9 (ReLA paper)",
    ("wmt14_en_de", "transformer"): "tok 26.02 (entmax paper)",
    ("wmt14_en_de", "entmax15"): "tok 25.89 (entmax paper)",
    ("wmt14_en_de", "entmax"): "tok 26.93 (entmax paper)",
    ("enwik8", "small"): "dev 1.04 / test 1.02 bpc",
    ("enwik8", "large"): "dev 1.00 / test 0.98 bpc",
    ("text8", "small"): "dev 1.05 / test 1.11 bpc",
    ("text8", "large"): "dev 1.01 / test 1.07 bpc",
}
HEADER = ["| kind | data set | model | setting | size | ours | paper | notes |", "|---|---|---|---|---|---|---|---|"]


def row(argv):
    kind, dataset = argv[0], argv[1]
    if kind == "translation":
        arch, setup, size, bleu, tok, aer, signature = argv[2:9]
        ours = f"sacreBLEU {bleu}, tok {tok}, AER {aer}"
        signature = signature.split(" = ")[0].strip().replace("|", "\\|")  # sacreBLEU's signature, pipes escaped
        return [kind, dataset, arch, setup, size, ours, PAPERS.get((dataset, arch), "-"), signature]
    if kind == "lm":
        preset, size, valid, test = argv[2:6]
        return [kind, dataset, preset, "adaptive span", size, f"dev {valid} / test {test} bpc",
                PAPERS.get((dataset, preset), "-"), "fairseq-eval-lm, truncated_bptt_lm"]
    sys.exit(f"unknown kind {kind!r}: translation or lm")


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    path, cells = Path(argv[0]), row(argv[1:])
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines()[2:]:
            parts = [p.strip() for p in re.split(r"(?<!\\)\|", line.strip()[1:-1])]  # cells may hold escaped \|
            if len(parts) == len(HEADER[0].strip("|").split("|")):
                rows[tuple(parts[:5])] = parts
    rows[tuple(cells[:5])] = cells
    lines = HEADER + ["| " + " | ".join(r) + " |" for _, r in sorted(rows.items())]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
