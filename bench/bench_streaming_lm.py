"""Streaming character LM: fairseq-train words/s and peak memory of the adaptive-span model with its trimmed memory,
against (a) the same model with its memory held at the full S tokens (what a Transformer-XL with that context costs)
and (b) fairseq's transformer_lm on blocks of the same length without memory.

Command (about 10 minutes on 2 idle CPU cores):
    python bench/bench_streaming_lm.py               # d 256, 4 layers, 4 heads, blocks of 512, S 8192, spans ~128
Smoke run (about 1 minute):  python bench/bench_streaming_lm.py --quick

Runs alternate between the three configurations for ``--rounds`` rounds; each round gives ratios of back-to-back
runs and the median over rounds is reported. Words/s: the median ``wps`` of the train_inner lines logged after the
memory has filled (S / block + 1 blocks). Peak memory: the process's maximum resident set (os.wait4), so it includes
the interpreter and fairseq (about the same for all three).
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
TARGETS = {"full memory": 4.0, "transformer_lm": 0.8}  # speed of the trimmed model / each baseline, at least


def run(command, *args, peak=False):
    """Run a console script; its output, and its peak resident memory in MiB."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(BIN / command), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{command} failed:\n{output[-3000:]}")
    return output, usage.ru_maxrss / 1024


def make_data(root: Path, tokens: int) -> Path:
    run("python", "-m", "sparse_attn_fairseq.data.synthetic_stream", root / "raw", "--tokens", tokens, "--period",
        "400", "--repeats", "3", "--symbols", "26")
    run("fairseq-preprocess", "--only-source", "--trainpref", root / "raw/train.txt", "--validpref",
        root / "raw/valid.txt", "--destdir", root / "bin", "--workers", "1")
    return root / "bin"


def configurations(args):
    size = ["--decoder-layers", args.layers, "--decoder-embed-dim", args.dim, "--decoder-ffn-embed-dim", 4 * args.dim,
            "--decoder-attention-heads", args.heads, "--tokens-per-sample", args.block, "--batch-size", args.batch]
    span = ["--arch", "transformer_lm_adaptive_span", "--task", "truncated_bptt_lm", "--adaptive-span-max",
            args.span_max, "--adaptive-span-init", args.span / args.span_max]
    return {
        "trimmed memory": [*span, *size],
        "full memory": [*span, *size, "--adaptive-span-memory", "full"],
        "transformer_lm": ["--arch", "transformer_lm", "--task", "language_modeling", "--sample-break-mode", "none",
                           *size],
    }


def train_speed(data: Path, flags, args, warmup: int) -> tuple:
    with tempfile.TemporaryDirectory() as save_dir:
        log, peak = run("fairseq-train", data, "--user-dir", USER_DIR, *flags, "--optimizer", "adagrad_with_grad_clip",
                        "--adagrad-clip", "0.03", "--lr", "0.07", "--max-update", warmup + args.updates, "--cpu",
                        "--num-workers", "0", "--log-format", "simple", "--log-interval", "1", "--no-save",
                        "--disable-validation", "--dropout", "0.1", "--seed", "1", peak=True)
    updates = [int(u) for u in re.findall(r"train_inner .*?num_updates=(\d+)", log)]
    speeds = [float(w) for w, u in zip(re.findall(r"train_inner .*?wps=([\d.]+)", log), updates) if u > warmup]
    return statistics.median(speeds), peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2, help="streams")
    parser.add_argument("--span-max", type=int, default=8192)
    parser.add_argument("--span", type=float, default=128, help="initial span in tokens")
    parser.add_argument("--updates", type=int, default=6, help="timed updates per run, after the memory fills")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.dim, args.block, args.span_max, args.span, args.updates, args.rounds = 2, 64, 64, 512, 32, 3, 1
    warmup = args.span_max // args.block + 1  # blocks until the full memory holds S tokens
    with tempfile.TemporaryDirectory() as root:
        tokens = (warmup + args.updates + 2) * args.block * args.batch * 2
        data = make_data(Path(root), tokens)
        runs = {name: [] for name in configurations(args)}
        for round_index in range(args.rounds):
            for name, flags in configurations(args).items():
                runs[name].append(train_speed(data, flags, args, warmup))
                speed, peak = runs[name][-1]
                print(f"round {round_index + 1}/{args.rounds} {name}: {speed:.0f} words/s, peak {peak:.0f} MiB",
                      flush=True)
    report(runs, args)


def report(runs, args):
    ours = runs["trimmed memory"]
    print(f"\nd {args.dim}, {args.layers} layers, {args.heads} heads, blocks of {args.block}, {args.batch} streams, "
          f"S {args.span_max}, spans from {args.span:g}; medians over {args.rounds} rounds of back-to-back runs\n")
    print("| trimmed memory vs | words/s ratio | target | peak memory ratio |")
    print("|---|---|---|---|")
    for name in ("full memory", "transformer_lm"):
        speed = statistics.median(o[0] / b[0] for o, b in zip(ours, runs[name]))
        memory = statistics.median(o[1] / b[1] for o, b in zip(ours, runs[name]))
        print(f"| {name} | {speed:.2f}x | >= {TARGETS[name]}x | {memory:.2f}x |")


if __name__ == "__main__":
    main()
