"""fairseq-train words/s and fairseq-generate sentences/s of our architectures vs fairseq's transformer.

Commands (about 1 minute per architecture and round on 2 idle CPU cores):
    python bench/bench_fairseq.py transformer_entmax transformer_rela transformer_adaptive_span \
        --layers 6 --dim 512 --heads 8 --updates 10      # the architectures' own size (transformer base)
    python bench/bench_fairseq.py transformer_entmax transformer_rela transformer_adaptive_span  # tiny: 2 layers, d 128
Smoke run (about 1 minute):  python bench/bench_fairseq.py transformer_entmax --quick
Language models (softmax in our module vs transformer_lm, 512 and 2048 tokens per sample, tiny sizes):
    python bench/bench_fairseq.py --lm --updates 20
The tiny model is the stress case for decoding: per step, the attention normaliser's fixed cost weighs most there.

Same data (the synthetic pair), same sizes, same seed, CPU. Runs alternate between the two models for ``--rounds``
rounds; each round gives a ratio architecture / transformer of back-to-back runs, and the median over rounds is reported
(shared machines swing several-fold between minutes: only ratios of adjacent runs mean anything).
Train speed: median ``wps`` of the train_inner log lines. Generate speed: beam 5 on the test set with every hypothesis
forced to exactly ``--gen-len`` tokens (--min-len = --max-len-b, --max-len-a 0), so both models do the same work
whatever their quality; the median of ``--gen-repeats`` runs, sympy imported before the timed loop for every model
(see GENERATE). Targets per architecture are in ``TARGETS``.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "sparse_attn_fairseq"
BIN = Path(sys.executable).parent
BASELINE = "transformer"
# size -> architecture -> (train words/s ratio, generate sentences/s ratio) it should reach; None: no target.
# tiny: 2 + 2 layers, d 128 (the defaults); base: 6 + 6 layers, d 512.
TARGETS = {
    "tiny": {"transformer_entmax": (0.95, 0.9), "transformer_rela": (0.9, 0.9),
             "transformer_adaptive_span": (0.85, None)},
    "base": {"transformer_entmax": (0.95, 0.95), "transformer_rela": (0.9, 0.9),
             "transformer_adaptive_span": (0.85, None)},
}
LM_BASELINE, LM_OURS = "transformer_lm", "transformer_lm_entmax"
LM_TARGET = 0.95  # transformer_lm_entmax with softmax in our attention module, train words/s vs transformer_lm


def run(command, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([str(BIN / command), *map(str, args)], capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"{command} failed:\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def make_data(root: Path, train: int) -> Path:
    run("python", "-m", "sparse_attn_fairseq.data.synthetic_pair", root / "raw", "--train", train, "--valid", 100,
        "--test", 200)
    run("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", root / "raw/train",
        "--validpref", root / "raw/valid", "--testpref", root / "raw/test", "--destdir", root / "bin",
        "--joined-dictionary", "--workers", "1")
    return root / "bin"


def train_wps(data: Path, save_dir: Path, arch: str, args) -> float:
    log = run("fairseq-train", data, "--user-dir", USER_DIR, "--arch", arch, "--encoder-layers", args.layers,
              "--decoder-layers", args.layers, "--encoder-embed-dim", args.dim, "--decoder-embed-dim", args.dim,
              "--encoder-ffn-embed-dim", 4 * args.dim, "--decoder-ffn-embed-dim", 4 * args.dim,
              "--encoder-attention-heads", args.heads, "--decoder-attention-heads", args.heads,
              "--share-all-embeddings", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", 2048, "--max-update",
              args.updates, "--disable-validation", "--no-epoch-checkpoints", "--save-dir", save_dir, "--cpu",
              "--seed", 1, "--log-format", "simple", "--log-interval", 5, "--num-workers", 0)
    values = [float(v) for v in re.findall(r"train_inner .*?wps=([\d.]+)", log)]
    return statistics.median(values[1:] or values)  # the first interval includes warm-up


# fairseq-generate, with sympy imported before the timed loop: torch imports it on first use of some shape checks
# (0.25 s here), which fairseq's attention triggers inside the loop. That one-time cost is not decoding speed.
GENERATE = ("import sys, torch.fx.experimental.symbolic_shapes; from fairseq_cli.generate import cli_main; "
            "sys.argv[0] = 'fairseq-generate'; cli_main()")


def generate_sps(data: Path, checkpoint: Path, args) -> float:
    """Median sentences/s of ``--gen-repeats`` fairseq-generate runs (each a fresh process)."""
    speeds = []
    for _ in range(args.gen_repeats):
        log = run("python", "-c", GENERATE, data, "--user-dir", USER_DIR, "--path", checkpoint, "--gen-subset",
                  "test", "--beam", 5, "--batch-size", 32, "--cpu", "--max-len-a", 0, "--max-len-b", args.gen_len,
                  "--min-len", args.gen_len)
        speeds.append(float(re.search(r"Translated .*\(([\d.]+) sentences/s", log).group(1)))
    return statistics.median(speeds)


def make_lm_data(root: Path) -> Path:
    """The synthetic pair's target side as one monolingual corpus (for --lm)."""
    run("fairseq-preprocess", "--only-source", "--trainpref", root / "raw/train.tgt", "--validpref",
        root / "raw/valid.tgt", "--destdir", root / "lm-bin", "--workers", "1")
    return root / "lm-bin"


def train_lm_wps(data: Path, save_dir: Path, arch: str, tokens_per_sample: int, args) -> float:
    extra = ["--decoder-attention-normalizer", "softmax"] if arch == LM_OURS else []
    log = run("fairseq-train", data, "--user-dir", USER_DIR, "--task", "language_modeling", "--arch", arch, *extra,
              "--decoder-layers", args.layers, "--decoder-embed-dim", args.dim, "--decoder-ffn-embed-dim",
              4 * args.dim, "--decoder-attention-heads", args.heads, "--tokens-per-sample", tokens_per_sample,
              "--sample-break-mode", "none", "--max-tokens", max(4096, tokens_per_sample), "--optimizer", "adam",
              "--lr", "1e-3", "--max-update", args.updates, "--disable-validation", "--no-save", "--save-dir",
              save_dir, "--cpu", "--seed", 1, "--log-format", "simple", "--log-interval", 5, "--num-workers", 0)
    values = [float(v) for v in re.findall(r"train_inner .*?wps=([\d.]+)", log)]
    return statistics.median(values[1:] or values)


def compare_language_models(root: Path, args) -> None:
    """transformer_lm_entmax with softmax (our attention module, fused core) vs fairseq's transformer_lm."""
    data = make_lm_data(root)
    print("| tokens per sample | per-round ratios to transformer_lm | median | target |")
    print("|---|---|---|---|")
    for tokens in args.lm_tokens:
        ratios = []
        for round_index in range(args.rounds):
            order = [LM_BASELINE, LM_OURS] if round_index % 2 == 0 else [LM_OURS, LM_BASELINE]
            wps = {arch: train_lm_wps(data, root / f"lm-{arch}", arch, tokens, args) for arch in order}
            ratios.append(wps[LM_OURS] / wps[LM_BASELINE])
        ratio = statistics.median(ratios)
        print(f"| {tokens} | {', '.join(f'{r:.2f}' for r in ratios)} | {ratio:.2f}x | {LM_TARGET}x "
              f"({'met' if ratio >= LM_TARGET else 'MISSED'}) |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", help="architectures to compare with fairseq's transformer")
    parser.add_argument("--lm", action="store_true", help="also: transformer_lm_entmax with softmax vs transformer_lm")
    parser.add_argument("--lm-tokens", type=lambda v: [int(t) for t in v.split(",")], default=[512, 2048],
                        help="tokens per sample of the LM comparison (default 512,2048)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--gen-len", type=int, default=20)
    parser.add_argument("--gen-repeats", type=int, default=3, help="fairseq-generate runs per round (median)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.layers, args.dim, args.heads, args.updates, args.gen_repeats = 1, 1, 32, 2, 12, 1
    torch_threads = os.environ.get("OMP_NUM_THREADS", "default")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(root, 600 if args.quick else 3000)
        if args.lm:
            compare_language_models(root, args)
        if not args.archs:
            return
        models = [BASELINE, *args.archs]
        speeds = {name: {"train": [], "generate": []} for name in models}
        for round_index in range(args.rounds):
            order = models if round_index % 2 == 0 else models[::-1]
            for name in order:
                save_dir = root / f"{name}-{round_index}"
                speeds[name]["train"].append(train_wps(data, save_dir, name, args))
                speeds[name]["generate"].append(generate_sps(data, save_dir / "checkpoint_last.pt", args))
                print(f"round {round_index} {name:28s} train {speeds[name]['train'][-1]:8.1f} wps   "
                      f"generate {speeds[name]['generate'][-1]:6.2f} sentences/s", flush=True)
    print(f"\nsizes: layers={args.layers} dim={args.dim} heads={args.heads}; OMP_NUM_THREADS={torch_threads}")
    print("| architecture | metric | per-round ratios to transformer | median | target |")
    print("|---|---|---|---|---|")
    for arch in args.archs:
        for index, (metric, unit) in enumerate((("train", "words/s"), ("generate", "sentences/s"))):
            ratios = [ours / base for ours, base in zip(speeds[arch][metric], speeds[BASELINE][metric])]
            ratio = statistics.median(ratios)
            size = "tiny" if (args.layers, args.dim) == (2, 128) else "base" if (args.layers, args.dim) == (6, 512) \
                else None
            target = TARGETS.get(size, {}).get(arch, (None, None))[index]
            verdict = "-" if target is None else f"{target}x ({'met' if ratio >= target else 'MISSED'})"
            print(f"| {arch} | {metric} {unit} | {', '.join(f'{r:.2f}' for r in ratios)} | {ratio:.2f}x | {verdict} |")


if __name__ == "__main__":
    main()
