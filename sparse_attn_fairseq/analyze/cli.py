"""sparse-attn-analyze: what every head of one or more Transformer checkpoints learned, side by side.

    sparse-attn-analyze DATA_DIR --path CKPT [--path CKPT ...] --out-dir DIR [--gen-subset test]
        [--gold-alignments FILE [--gold-format pharaoh|talp] [--gold-encoding latin-1]] [--max-sentences N] [--cpu]

Teacher-forced passes over the subset (a progress bar per model); writes ``analysis.json`` (schema: SCHEMA below),
``report.md``, PNG plots (with matplotlib) and ``report.html``, one self-contained page. Bad input (a missing or
unsupported checkpoint, a dictionary that does not match it, a malformed alignment file, an empty subset) ends with
one line naming what is wrong and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from sparse_attn_fairseq.analyze.alignment import FORMATS, PIECE_STYLES, AlignmentFileError, aer, read_gold, word_ids
from sparse_attn_fairseq.analyze.html import write_html
from sparse_attn_fairseq.analyze.plots import attention_maps, write_plots
from sparse_attn_fairseq.analyze.collect import (
    ATTENTION_TYPES, Collection, attention_modules, collect, detect_piece_style, head_parameters,
)

SCHEMA = """analysis.json: {"schema": 1, "subset": str, "models": [model]}
model: {"path": str, "arch": str, "sentences": int,
        "attention": {"encoder" | "decoder" | "encoder_decoder": [layer]},
        "aer": {"normal" | "shifted": [aer_layer]} (only with --gold-alignments)}
layer: {"layer": int, "js": float | null, "zero_fraction": float, "mean_support": float, "relative_support": float,
        "null_rate": float, "heads": [head]}   (layer figures: mean over heads; js: mean over queries)
head: {"zero_fraction", "mean_support", "relative_support", "null_rate": float, "alpha"?: float, "span"?: float,
       "span_quantiles"?: [p10, p50, p90]}   (span: tokens, learned per head; dynamic: mean over tokens, and quantiles)
aer_layer: {"layer": int, "head_average": float, "best_head": int, "best_head_aer": float, "heads": [float]}"""


class AnalysisError(Exception):
    """Bad input: the message names the file (and line) and what is wrong."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sparse-attn-analyze", description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="fairseq-preprocess output folder (dictionaries and the subset)")
    parser.add_argument("--path", type=Path, action="append", required=True, help="checkpoint (repeat to compare)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--gen-subset", default="test")
    parser.add_argument("--gold-alignments", type=Path, help="gold word alignments, one line per sentence")
    parser.add_argument("--gold-format", choices=FORMATS, default="pharaoh")
    parser.add_argument("--gold-encoding", default="utf-8")
    parser.add_argument("--piece-style", choices=("auto", *PIECE_STYLES), default="auto",
                        help="how subword pieces form words (auto: from the dictionary's markers)")
    parser.add_argument("--max-sentences", type=_positive, help="analyse the first N sentences of the subset")
    parser.add_argument("--sentences", default="0",
                        help="ids of the sentences whose attention maps are drawn (I,J,...)")
    parser.add_argument("--batch-size", type=_positive, default=32)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is available")
    parser.add_argument("--scores", type=Path, help="a TSV of checkpoint path, BLEU and training words/s per line, "
                                                     "shown beside each model's summary (the demo writes one)")
    return parser.parse_args(argv)


def load(path: Path, data: Path):
    """(model, architecture name, task) of a Transformer checkpoint; AnalysisError for what cannot be analysed."""
    from fairseq import checkpoint_utils

    if not path.is_file():
        raise AnalysisError(f"{path}: no such checkpoint")
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)],
                                                                          arg_overrides={"data": str(data)})
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        lines = str(error).splitlines()
        reason = next((line.strip() for line in lines if "size mismatch" in line), lines[0] if lines else repr(error))
        if "size mismatch" in reason:
            reason = f"the dictionaries in {data} do not match the checkpoint's ({reason})"
        raise AnalysisError(f"{path}: cannot be loaded with the data in {data}: {reason}") from None
    model = models[0]
    if not any(hasattr(module, "num_heads") for _, _, module in attention_modules(model)):
        raise AnalysisError(f"{path}: {type(model).__name__} has no Transformer attention layers; this tool analyses "
                            "Transformer translation and language models")
    arch = getattr(cfg.model, "arch", None) or getattr(cfg.model, "_name", type(model).__name__)
    return model, arch, task


def batches(task, data: Path, subset: str, max_sentences: int | None, batch_size: int, path: Path):
    """The subset's first ``max_sentences`` sentences as fairseq samples, with their count and the dataset."""
    binaries = list(data.glob(f"{subset}.*bin")) + list(data.glob(f"{subset}.bin"))
    if binaries and all(b.stat().st_size == 0 for b in binaries):  # fairseq cannot even open an empty one
        raise AnalysisError(f"subset {subset!r} of {data} is empty ({binaries[0].name} has no sentences)")
    try:
        task.load_dataset(subset)
    except (FileNotFoundError, ValueError) as error:
        raise AnalysisError(f"{path}: subset {subset!r} of {data}: {error}") from None
    dataset = task.dataset(subset)
    indices = list(range(len(dataset) if max_sentences is None else min(max_sentences, len(dataset))))
    if not indices:
        raise AnalysisError(f"subset {subset!r} of {data} is empty")
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    return [dataset.collater([dataset[i] for i in chunk]) for chunk in chunks], len(indices), dataset


def model_report(path: Path, model, arch: str, collection: Collection, golds) -> dict:
    params = {(t, i): head_parameters(m) for t, i, m in attention_modules(model)}
    attention: dict = {}
    order = list(ATTENTION_TYPES)
    for (attention_type, layer), stats in sorted(collection.stats.items(),
                                                 key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        s = stats.sums
        heads = [{"zero_fraction": float(s.zero_fraction[h]), "mean_support": float(s.mean_support[h]),
                  "relative_support": float(s.mean_relative_support[h]), "null_rate": float(s.null_rate[h]),
                  **{k: v[h] for k, v in params[attention_type, layer].items()},
                  **span_distribution(collection, attention_type, layer, h)}
                 for h in range(len(s.queries))]
        attention.setdefault(attention_type, []).append({
            "layer": layer, "js": stats.js, "heads": heads,
            **{k: sum(head[k] for head in heads) / len(heads)
               for k in ("zero_fraction", "mean_support", "relative_support", "null_rate")}})
    report = {"path": str(path), "arch": arch,
              "sentences": collection.sentences, "attention": attention}
    if golds is not None:
        report["aer"] = alignment_errors(collection, golds)
    return report


def span_distribution(collection: Collection, attention_type: str, layer: int, head: int) -> dict:
    """A dynamic span's distribution over the real tokens for one head: mean and 10/50/90th percentiles, in tokens."""
    chunks = collection.token_spans.get((attention_type, layer))
    if not chunks:
        return {}
    values = torch.cat([chunk[head] for chunk in chunks]).double()
    quantiles = torch.quantile(values, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {"span": float(values.mean()), "span_quantiles": [float(q) for q in quantiles]}


def alignment_errors(collection: Collection, golds) -> dict:
    result: dict = {}
    for mode in ("normal", "shifted"):
        layers = sorted({layer for m, layer, _ in collection.links if m == mode})
        for layer in layers:
            heads = sorted(h for m, i, h in collection.links if m == mode and i == layer and h >= 0)
            scores = {h: _aer(collection.links[mode, layer, h], golds) for h in [-1, *heads]}
            best = min(heads, key=lambda h: scores[h])
            result.setdefault(mode, []).append({"layer": layer, "head_average": scores[-1], "best_head": best,
                                                "best_head_aer": scores[best], "heads": [scores[h] for h in heads]})
    return result


def _aer(links_by_sentence: dict, golds) -> float:
    ids = sorted(links_by_sentence)
    return aer([links_by_sentence[i] for i in ids], [golds[i] for i in ids])


def summary(reports: list[dict], scores: dict[str, tuple[str, str]]) -> str:
    """One line per model: BLEU and words/s (from --scores), best cross-attention AER (normal, head average or best
    head, over layers), and means over every layer and head of zeros, JS, alpha, span and null rows."""
    lines = [f"{'model':<28} {'BLEU':>6} {'AER':>6} {'zeros':>6} {'JS':>6} {'alpha':>6} {'span':>6} {'null':>6} "
             f"{'train wps':>9}"]
    for report in reports:
        layers = [layer for ls in report["attention"].values() for layer in ls]
        heads = [head for layer in layers for head in layer["heads"]]

        def mean(values, form="{:.2f}"):
            values = [v for v in values if v is not None]
            return form.format(sum(values) / len(values)) if values else "-"

        aer_cell = "-"
        if "aer" in report:
            aer_cell = f"{min(min(x['head_average'], x['best_head_aer']) for x in report['aer']['normal']):.3f}"
        bleu, wps = scores.get(report["path"], ("-", "-"))
        zeros = mean([layer["zero_fraction"] for layer in layers], "{:.0%}")
        lines.append(f"{report['arch']:<28} {bleu:>6} {aer_cell:>6} {zeros:>6} "
                     f"{mean([l['js'] for l in layers], '{:.3f}'):>6} {mean([h.get('alpha') for h in heads]):>6} "
                     f"{mean([h.get('span') for h in heads], '{:.1f}'):>6} "
                     f"{mean([l['null_rate'] for l in layers], '{:.0%}'):>6} {wps:>9}")
    return "\n".join(lines)


def read_scores(path: Path | None) -> dict[str, tuple[str, str]]:
    if path is None:
        return {}
    if not path.is_file():
        raise AnalysisError(f"{path}: no such scores file")
    scores = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 3:
            raise AnalysisError(f"{path}, line {number}: expected checkpoint, BLEU and words/s separated by tabs")
        scores[fields[0]] = (fields[1], fields[2])
    return scores


def markdown(reports: list[dict]) -> str:
    lines = ["# What every head learned", "",
             "| model | attention | layer | zeros | support (keys) | relative support | null rows | JS | mean alpha "
             "| mean span | AER normal / shifted (best head) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for report in reports:
        for attention_type, layers in report["attention"].items():
            for layer in layers:
                lines.append(_row(report, attention_type, layer))
    return "\n".join(lines) + "\n"


def _row(report: dict, attention_type: str, layer: dict) -> str:
    def mean(key):
        values = [h[key] for h in layer["heads"] if key in h]
        return f"{sum(values) / len(values):.2f}" if values else ""

    aer_cell = ""
    if attention_type == "encoder_decoder" and "aer" in report:
        cells = [next(x for x in report["aer"][mode] if x["layer"] == layer["layer"]) for mode in ("normal", "shifted")]
        aer_cell = " / ".join(f"{c['head_average']:.3f} ({c['best_head_aer']:.3f})" for c in cells)
    js = "" if layer["js"] is None else f"{layer['js']:.3f}"
    return (f"| {Path(report['path']).parent.name}/{Path(report['path']).name} ({report['arch']}) | {attention_type} "
            f"| {layer['layer']} | {layer['zero_fraction']:.1%} | {layer['mean_support']:.1f} "
            f"| {layer['relative_support']:.1%} | {layer['null_rate']:.1%} | {js} | {mean('alpha')} | {mean('span')} "
            f"| {aer_cell} |")


def run(args: argparse.Namespace) -> list[dict]:
    from tqdm import tqdm

    import sparse_attn_fairseq  # noqa: F401  (registers this package's architectures)

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    try:
        chosen = frozenset(int(i) for i in args.sentences.split(",") if i.strip())
    except ValueError:
        raise AnalysisError(f"--sentences {args.sentences!r}: expected sentence ids like 0,5,12") from None
    reports, maps = [], []
    for path in args.path:
        model, arch, task = load(path, args.data)
        samples, count, dataset = batches(task, args.data, args.gen_subset, args.max_sentences, args.batch_size, path)
        golds = None
        if args.gold_alignments is not None and getattr(model, "encoder", None) is None:
            raise AnalysisError(f"{path}: --gold-alignments needs a translation model (this is a language model)")
        if args.gold_alignments is not None:
            golds = read_gold(args.gold_alignments, args.gold_format, args.gold_encoding,
                              word_lengths(dataset, task, args.piece_style))
        model = model.to(device).float()
        samples = [_to(sample, device) for sample in samples]
        with tqdm(total=count, desc=f"analysing {path.name}", unit="sentence", file=sys.stderr) as bar:
            collection = collect(model, samples, task.source_dictionary, task.target_dictionary, args.piece_style,
                                 progress=bar.update, map_sentences=chosen)
        reports.append(model_report(path, model, arch, collection, golds))
        maps.append(collection.maps)
    return reports, maps


def word_lengths(dataset, task, style: str) -> list[tuple[int, int]]:
    """(source words, target words) of every sentence of the subset, eos left out."""
    lengths = []
    for i in range(len(dataset)):
        item = dataset[i]
        pieces = [[task.source_dictionary[int(t)] for t in item["source"][:-1]],
                  [task.target_dictionary[int(t)] for t in item["target"][:-1]]]
        sentence_style = detect_piece_style(pieces[0] + pieces[1]) if style == "auto" else style
        lengths.append(tuple(max(word_ids(p, sentence_style), default=-1) + 1 for p in pieces))
    return lengths


def _to(sample, device):
    from fairseq import utils

    return utils.move_to_cuda(sample) if device == "cuda" else sample


def main(argv=None) -> int:
    args = parse_args(argv)
    # the terminal shows the progress bars and the result: no library's INFO lines (fairseq's, or matplotlib's
    # "generated new fontManager" on a machine without its font cache)
    for name in ("fairseq", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        scores = read_scores(args.scores)
        reports, maps = run(args)
    except (AnalysisError, AlignmentFileError) as error:
        print(f"sparse-attn-analyze: error: {error}", file=sys.stderr)
        return 2
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps({"schema": 1, "subset": args.gen_subset, "models": reports},
                                                  indent=1))
    report_md = markdown(reports)
    (out / "report.md").write_text(report_md)
    plots = write_plots(reports, out, [])
    if plots:
        plots += [p for i, m in enumerate(maps) if (p := attention_maps(m, out / f"attention_maps_{i}.png"))]
    note = "" if plots else "no plots: matplotlib is not installed (pip install 'sparse_attn_fairseq[plots]')"
    write_html(out / "report.html", report_md, plots, note)
    print(summary(reports, scores))
    print(f"wrote {out / 'analysis.json'}, report.md, report.html and {len(plots)} plots to {out}")
    if note:
        print(note)
    return 0
