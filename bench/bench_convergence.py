"""Convergence at equal budget: validation loss curves, final BLEU and updates-to-baseline of sparse attention models
against fairseq's transformer, same data, sizes, seeds and number of updates.

Commands (CPU; about 1 minute per run on one core, ``--jobs`` runs at a time, one thread each):
    python bench/bench_convergence.py                                   # the README table: 2 tasks x 3 seeds
    python bench/bench_convergence.py --tasks reverse --seeds 1 \\
        --variant "rela lr 1e-3=transformer_rela --lr 1e-3"            # a candidate: NAME=ARCH [extra train flags]
    python bench/bench_convergence.py --quick                           # smoke run (about 1 minute)

Tasks (sparse_attn_fairseq.data.synthetic_pair): ``svo``, the demo pair (local reordering, one-to-many, a dropped
article); ``reverse``, 10-30 word sentences translated word by word in reverse order (long reordering).
Every run trains with the same flags (``model_flags``; 2+2 layers, d 64 by default) and validates every
``--eval-every`` updates. Single validations of these small models jump by up to 0.5 bits from one to the next, so each
curve is smoothed by a trailing mean over ``SMOOTH`` validations before it is compared. Reported per model, as the
median over seeds:
    - validation loss (fairseq's label-smoothed loss, base 2, smoothed) at fixed update counts;
    - BLEU of checkpoint_best.pt (fairseq's lowest validation loss, what a user translates with) on the test split
      (beam 5, sacreBLEU), and its difference to transformer's, same seed;
    - updates to reach transformer's final (smoothed) validation loss, same seed, as a ratio to the budget, linearly
      interpolated between validations; ``inf`` when the run never reaches it.
Writes ``results.json`` (every curve), ``results.md`` (the tables) and ``curves.png`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "sparse_attn_fairseq"
BIN = Path(sys.executable).parent
BASELINE = "transformer"
TASK_SIZES = {"svo": (4000, 300, 300), "reverse": (4000, 300, 300)}  # train, valid, test pairs
SMOOTH = 3  # validations in the trailing mean
TASK_UPDATES = {"svo": 600, "reverse": 1200}  # the budget: svo has flattened by 400 updates, reverse needs longer


def model_flags(dim: int, layers: int, heads: int) -> list[str]:
    """The training recipe shared by every model (the demo's, scaled by ``dim``)."""
    return [
        "--task", "translation", "--share-all-embeddings",
        "--encoder-layers", str(layers), "--decoder-layers", str(layers),
        "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
        "--encoder-ffn-embed-dim", str(4 * dim), "--decoder-ffn-embed-dim", str(4 * dim),
        "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads),
        "--dropout", "0.1", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "2e-3",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--clip-norm", "1.0",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "2048",
        "--cpu", "--num-workers", "0", "--log-format", "simple", "--log-interval", "50",
        "--no-epoch-checkpoints",
    ]


@dataclass(frozen=True)
class Model:
    """A model to compare: a name, its architecture and extra fairseq-train flags."""

    name: str
    arch: str
    flags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Model":
        """``NAME=ARCH [flags...]`` or a bare architecture name."""
        name, _, spec = text.partition("=") if "=" in text else (text, "", text)
        words = shlex.split(spec)
        if not words:
            raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=ARCH [fairseq-train flags]")
        return cls(name.strip(), words[0], tuple(words[1:]))


# The package's defaults, and the settings they replaced (the papers' and the authors' code's), for comparison.
DEFAULT_MODELS = (
    Model("transformer", "transformer"),
    Model("transformer_entmax", "transformer_entmax"),
    Model("transformer_rela", "transformer_rela"),
    Model("entmax, alpha lr x1 (paper)", "transformer_entmax", ("--entmax-alpha-lr-scale", "1")),
    Model("rela, gate init ones", "transformer_rela", ("--rela-gate-init", "ones")),
)


@dataclass
class Run:
    task: str
    model: str
    seed: int
    curve: list[tuple[int, float]] = field(default_factory=list)  # (num_updates, valid loss)
    bleu: float = float("nan")
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)  # the architecture and extra flags it was trained with
    stats: dict[str, float] = field(default_factory=dict)  # alpha_*, zeros_*, null_* of the last validation


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(command: str, *args, log: Path | None = None) -> str:
    result = subprocess.run([str(BIN / command), *map(str, args)], capture_output=True, text=True, env=env())
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    if result.returncode:
        sys.exit(f"{command} failed ({log or 'no log'}):\n{result.stderr[-3000:]}")
    return result.stdout


def make_task(root: Path, task: str, sizes: tuple[int, int, int]) -> Path:
    """Generate and binarise one synthetic task (skipped when already there)."""
    raw, data_bin = root / task / "raw", root / task / "bin"
    if not (data_bin / "test.src-tgt.tgt.bin").exists():
        train, valid, test = sizes
        run("python", "-m", "sparse_attn_fairseq.data.synthetic_pair", raw, "--task", task, "--train", train,
            "--valid", valid, "--test", test)
        run("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", raw / "train",
            "--validpref", raw / "valid", "--testpref", raw / "test", "--destdir", data_bin, "--joined-dictionary",
            "--workers", "1", log=root / task / "preprocess.log")
    return data_bin


VALID_LINE = re.compile(r"valid on 'valid' subset \| loss ([\d.]+) .*?\| num_updates (\d+)")


STAT = re.compile(r"\| ((?:alpha|zeros|null)_\w+) ([\d.]+)")


def parse_stats(log: str) -> dict[str, float]:
    """The sparsity figures (alpha_*, zeros_*, null_*) of the last validation line of a fairseq-train log."""
    lines = [line for line in log.splitlines() if "valid on 'valid' subset" in line]
    return {key: float(value) for key, value in STAT.findall(lines[-1])} if lines else {}


def parse_curve(log: str) -> list[tuple[int, float]]:
    """(num_updates, valid loss) of every validation in a fairseq-train log."""
    return [(int(m.group(2)), float(m.group(1))) for m in VALID_LINE.finditer(log)]


def bleu_of(data_bin: Path, checkpoint: Path, reference: Path, log: Path) -> float:
    import sacrebleu

    out = run("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--path", checkpoint, "--gen-subset", "test",
              "--beam", "5", "--batch-size", "128", "--cpu", log=log)
    hyps = sorted((int(line.split("\t")[0][2:]), line.split("\t")[2]) for line in out.splitlines()
                  if line.startswith("H-"))
    refs = reference.read_text().splitlines()
    if len(hyps) != len(refs):
        sys.exit(f"fairseq-generate returned {len(hyps)} hypotheses for {len(refs)} references ({log})")
    return sacrebleu.corpus_bleu([h for _, h in hyps], [refs]).score


def train_and_score(root: Path, task: str, model: Model, seed: int, args) -> Run:
    """One fairseq-train run and its test BLEU (reuses a finished run's results.json entry if present)."""
    out = root / "runs" / task / model.name.replace(" ", "_") / f"seed{seed}"
    done = out / "run.json"
    command = [model.arch, *model.flags]
    if done.exists() and not args.force:
        cached = Run(**json.loads(done.read_text()))
        if cached.command == command:
            cached.stats = cached.stats or parse_stats((out / "train.log").read_text())
            return cached
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data_bin = root / task / "bin"
    flags = model_flags(args.dim, args.layers, args.heads)
    log = run("fairseq-train", data_bin, "--user-dir", USER_DIR, "--arch", model.arch, *flags,
              "--max-update", budget(task, args), "--validate-interval-updates", args.eval_every,
              "--validate-interval", 10**6, "--seed", seed,
              "--save-dir", out, *model.flags, log=out / "train.log")
    result = Run(task, model.name, seed, parse_curve(log), command=command, stats=parse_stats(log))
    result.bleu = bleu_of(data_bin, out / "checkpoint_best.pt", root / task / "raw" / "test.tgt", out / "generate.log")
    result.seconds = time.time() - start
    for checkpoint in out.glob("*.pt"):
        checkpoint.unlink()  # curves and scores are kept, weights are not
    done.write_text(json.dumps(asdict(result)))
    return result


def budget(task: str, args) -> int:
    return args.updates or TASK_UPDATES[task]


def smooth(curve: list[tuple[int, float]], window: int = SMOOTH) -> list[tuple[int, float]]:
    """Trailing mean of the losses over ``window`` validations (fewer at the start)."""
    losses = [loss for _, loss in curve]
    return [(u, statistics.fmean(losses[max(0, i + 1 - window): i + 1])) for i, (u, _) in enumerate(curve)]


def updates_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    """First update count at which the (linearly interpolated) curve reaches ``target``; inf if never."""
    previous = None
    for updates, loss in curve:
        if loss <= target:
            if previous is None or previous[1] == loss:
                return float(updates)
            (u0, l0) = previous
            return u0 + (updates - u0) * (l0 - target) / (l0 - loss)
        previous = (updates, loss)
    return math.inf


def summarise(runs: list[Run], models: list[Model], tasks: list[str], args) -> dict:
    """Per task and model: median over seeds of BLEU, BLEU difference, update ratio, and the median curve."""
    by_key = {(r.task, r.model, r.seed): r for r in runs}
    curves = {key: smooth(r.curve) for key, r in by_key.items()}
    summary: dict = {}
    for task in tasks:
        for model in models:
            rows = [r for r in runs if r.task == task and r.model == model.name]
            diffs, ratios = [], []
            for r in rows:
                base = by_key.get((task, BASELINE, r.seed))
                if base is None or not base.curve:
                    continue
                diffs.append(r.bleu - base.bleu)
                target = curves[task, BASELINE, r.seed][-1][1]
                ratios.append(updates_to_reach(curves[task, r.model, r.seed], target) / budget(task, args))
            smoothed = [dict(curves[task, r.model, r.seed]) for r in rows]
            points = sorted({u for c in smoothed for u in c})
            curve = [(u, statistics.median(c[u] for c in smoothed if u in c)) for u in points]
            summary.setdefault(task, {})[model.name] = {
                "arch": model.arch, "flags": list(model.flags), "seeds": sorted(r.seed for r in rows),
                "bleu": statistics.median(r.bleu for r in rows) if rows else math.nan,
                "bleu_diff": statistics.median(diffs) if diffs else math.nan,
                "update_ratio": statistics.median(ratios) if ratios else math.nan,
                "final_loss": curve[-1][1] if curve else math.nan, "median_curve": curve,
                "minutes": statistics.median(r.seconds for r in rows) / 60 if rows else math.nan,
                "stats": {key: statistics.median(r.stats[key] for r in rows if key in r.stats)
                          for key in sorted({k for r in rows for k in r.stats})},
            }
    return summary


def markdown(summary: dict) -> str:
    lines = []
    for task, models in summary.items():
        points = [u for u, _ in next(iter(models.values()))["median_curve"]]
        checkpoints = [points[len(points) // 4], points[len(points) // 2], points[-1]] if points else []
        lines += [f"### task `{task}`", "",
                  "| model | BLEU | vs transformer | updates to its final loss | "
                  + " | ".join(f"loss @{u}" for u in checkpoints) + " | zeros enc/dec/encdec | mean alpha | min/run |",
                  "|---|---:|---:|---:|" + "---:|" * len(checkpoints) + "---|---|---:|"]
        for name, s in models.items():
            curve = dict(s["median_curve"])
            losses = " | ".join(f"{curve[u]:.3f}" if u in curve else "" for u in checkpoints)
            ratio = "not reached" if math.isinf(s["update_ratio"]) else f"{s['update_ratio']:.2f}x"
            lines.append(f"| {name} | {s['bleu']:.2f} | {s['bleu_diff']:+.2f} | {ratio} | {losses} | "
                         f"{_per_type(s['stats'], 'zeros', '{:.0%}')} | {_per_type(s['stats'], 'alpha', '{:.2f}')} | "
                         f"{s['minutes']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def _per_type(stats: dict[str, float], kind: str, form: str) -> str:
    values = [stats.get(f"{kind}_{key}") for key in ("enc", "dec", "encdec")]
    return "/".join(form.format(v) for v in values) if any(v is not None for v in values) else ""


def plot(summary: dict, runs: list[Run], path: Path) -> bool:
    """Validation loss against updates, one panel per task: each seed thin (raw), the smoothed median bold."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves.png (pip install matplotlib)")
        return False
    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4.2), squeeze=False)
    for ax, (task, models) in zip(axes[0], summary.items()):
        for index, (name, s) in enumerate(models.items()):
            color = f"C{index}"
            for r in runs:
                if r.task == task and r.model == name and r.curve:
                    ax.plot(*zip(*r.curve), color=color, alpha=0.25, linewidth=0.8)
            if s["median_curve"]:
                ax.plot(*zip(*s["median_curve"]), color=color, linewidth=2,
                        label=f"{name} (BLEU {s['bleu']:.1f})")
        seeds = ", ".join(map(str, next(iter(models.values()))["seeds"]))
        ax.set_title(f"task {task}: smoothed median of seeds {seeds}")
        ax.set_xlabel("updates")
        ax.set_ylabel("validation loss (label-smoothed, bits)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASK_SIZES), choices=list(TASK_SIZES))
    parser.add_argument("--models", nargs="+", help="architectures with their default flags (default: DEFAULT_MODELS)")
    parser.add_argument("--variant", action="append", default=[], type=Model.parse,
                        help='extra model "NAME=ARCH [fairseq-train flags]" (repeatable)')
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--updates", type=int, help="updates per run (default per task: TASK_UPDATES)")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "work" / "convergence")
    parser.add_argument("--force", action="store_true", help="re-run runs whose results are already there")
    parser.add_argument("--quick", action="store_true", help="smoke run: one task, one seed, 60 updates, tiny data")
    args = parser.parse_args(argv)
    sizes = dict(TASK_SIZES)
    if args.quick:
        args.tasks, args.seeds, args.updates, args.eval_every, args.dim = args.tasks[:1], [1], 60, 20, 32
        sizes = {task: (300, 40, 40) for task in sizes}
        args.models = args.models or [m.name for m in DEFAULT_MODELS[1:3]]
        args.out_dir = args.out_dir.with_name(args.out_dir.name + "_quick")
    models = [Model(name, name) for name in dict.fromkeys([BASELINE, *args.models])] if args.models else list(
        DEFAULT_MODELS)
    models += args.variant
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        make_task(args.out_dir, task, sizes[task])
    jobs = [(task, model, seed) for seed in args.seeds for task in args.tasks for model in models]
    runs: list[Run] = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(train_and_score, args.out_dir, t, m, s, args): (t, m.name, s) for t, m, s in jobs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            result = future.result()
            runs.append(result)
            final = result.curve[-1][1] if result.curve else math.nan
            print(f"[{done}/{len(jobs)}] {result.task} {result.model} seed {result.seed}: valid loss {final:.3f}, "
                  f"BLEU {result.bleu:.2f} ({result.seconds / 60:.1f} min)", flush=True)
    summary = summarise(runs, models, args.tasks, args)
    table = markdown(summary)
    (args.out_dir / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                          "summary": summary, "runs": [asdict(r) for r in runs]},
                                                         indent=1))
    (args.out_dir / "results.md").write_text(table)
    print(table)
    if plot(summary, runs, args.out_dir / "curves.png"):
        print(f"curves: {args.out_dir / 'curves.png'}")


if __name__ == "__main__":
    main()
