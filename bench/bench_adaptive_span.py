"""Adaptive span: banded attention vs full attention, one layer and a whole fairseq language model.

Command (about 5 minutes on 2 CPU cores):
    python bench/bench_adaptive_span.py
Smoke run (under a minute):  python bench/bench_adaptive_span.py --quick

(a) One SparseMultiheadAttention layer, forward + backward on ``--length`` tokens (softmax): full attention (no span)
    vs adaptive span with every head at ``--span`` tokens (ramp 32), computed on the band of keys, and the same span
    computed over all keys (the masked computation the band replaces). Decoder (causal) and encoder (|i - j|); the
    whole layer, and its attention core (q/k/v/out projections replaced by identities: the part a span changes).
    Time: process CPU seconds (time.process_time) with ``--threads`` torch threads, median over interleaved
    repetitions: on a shared machine (load ~10 on 2 cores here) wall time mostly measures the other tenants. Memory: peak RSS of a fresh process during one forward + backward,
    minus its RSS just before (RSS sampled every 0.2 ms by a thread from /proc/self/statm; CPU tensors live in RSS,
    large ones are returned to the system when freed).
(b) fairseq-train of a language model (``--lm-dim``, ``--lm-layers``, 2048 tokens per sample) on the target side of
    the synthetic pair: transformer_lm_adaptive_span (spans ``--span``) vs fairseq's transformer_lm of the same size
    (torch's fused attention), and a full-softmax LM built from the same attention module (transformer_lm_entmax
    with softmax: the same eager code without a span). Words/s: median of the train_inner lines after the first, rounds interleaved. Memory:
    peak RSS of the fairseq-train process (ru_maxrss of the child).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "sparse_attn_fairseq"
BIN = Path(sys.executable).parent
RAMP = 32
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def build_layer(kind: str, causal: bool, args, core: bool = False):
    """'full': no span; 'band' / 'masked': every head's span = args.span, banded or over all keys. ``core``: the
    projections are identities."""
    import torch

    from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan
    from sparse_attn_fairseq.layers.normalizers import build_normalizer
    from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention

    torch.manual_seed(0)
    span = None
    if kind != "full":
        span = AdaptiveSpan(args.heads, max_span=args.length, ramp=RAMP, init_span=args.span / args.length)
    layer = SparseMultiheadAttention(args.dim, args.heads, build_normalizer("softmax", args.heads),
                                     self_attention=True, causal=causal, span=span)
    layer.span_banding = kind == "band"
    if core:
        layer.q_proj = layer.k_proj = layer.v_proj = layer.out_proj = torch.nn.Identity()
    return layer.train()


def step(layer, x, causal):
    """One forward + backward; the causal mask is fairseq's decoder mask."""
    import torch

    mask = torch.triu(torch.full((x.size(0), x.size(0)), float("-inf")), 1) if causal else None
    out, _ = layer(x, x, x, attn_mask=mask, need_weights=False)
    out.sum().backward()


def layer_times(args):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rows = []
    for causal in (True, False):
        for core in (False, True):
            layers = {kind: build_layer(kind, causal, args, core) for kind in ("full", "band", "masked")}
            x = torch.randn(args.length, args.bsz, args.dim, requires_grad=True)  # (tgt_len, bsz, embed_dim)
            times = {kind: [] for kind in layers}
            for kind in layers:  # warm-up
                step(layers[kind], x, causal)
            for _ in range(args.reps):
                for kind, layer in layers.items():
                    start = time.process_time()
                    step(layer, x, causal)
                    times[kind].append(time.process_time() - start)
            rows.append((causal, core, {kind: statistics.median(t) for kind, t in times.items()}))
    return rows


def layer_memory(kind: str, causal: bool, args) -> float:
    """Peak RSS increase (MiB) of one forward + backward in a fresh process."""
    cmd = [sys.executable, __file__, "--memory-child", json.dumps([kind, causal, vars(args)])]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=True).stdout
    return float(out.strip().splitlines()[-1])


def memory_child(spec: str) -> None:
    import torch

    kind, causal, settings = json.loads(spec)
    args = argparse.Namespace(**settings)
    layer = build_layer(kind, causal, args)
    x = torch.randn(args.length, args.bsz, args.dim, requires_grad=True)
    before, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    step(layer, x, causal)
    done.set()
    sampler.join()
    print(max(peak[0], _rss_mib()) - before)


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_measured(*cmd):
    """Run a command; return (output, peak RSS of the child in MiB) through a fresh intermediary process."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stdout.write(r.stdout + r.stderr); "
               "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", wrapper, *map(str, cmd)], capture_output=True, text=True, env=ENV)
    if result.returncode:
        sys.exit(f"{cmd[0]} failed:\n{result.stdout[-3000:]}")
    peak = float(re.search(r"PEAK_RSS_KIB (\d+)", result.stdout).group(1)) / 1024
    return result.stdout, peak


def lm_data(root: Path, sentences: int) -> Path:
    subprocess.run([sys.executable, "-m", "sparse_attn_fairseq.data.synthetic_pair", root / "raw", "--train",
                    str(sentences), "--valid", "50", "--test", "50"], check=True, env=ENV, capture_output=True)
    subprocess.run([BIN / "fairseq-preprocess", "--only-source", "--trainpref", root / "raw/train.tgt",
                    "--validpref", root / "raw/valid.tgt", "--destdir", root / "lm-bin", "--workers", "1"],
                   check=True, env=ENV, capture_output=True)
    return root / "lm-bin"


def lm_flags(name: str, args):
    """(architecture, extra flags) of the compared language models."""
    return {
        "transformer_lm": ("transformer_lm", []),
        "full softmax, same module": ("transformer_lm_entmax", ["--decoder-attention-normalizer", "softmax"]),
        "transformer_lm_adaptive_span": ("transformer_lm_adaptive_span", [
            "--adaptive-span-max", args.span, "--adaptive-span-init", 1.0, "--adaptive-span-ramp", RAMP]),
    }[name]


def lm_train(data: Path, save_dir: Path, name: str, args):
    arch, extra = lm_flags(name, args)
    log, peak = run_measured(
        BIN / "fairseq-train", data, "--user-dir", USER_DIR, "--task", "language_modeling", "--arch", arch,
        "--decoder-layers", args.lm_layers, "--decoder-embed-dim", args.lm_dim, "--decoder-input-dim", args.lm_dim,
        "--decoder-output-dim", args.lm_dim, "--decoder-ffn-embed-dim", 4 * args.lm_dim,
        "--decoder-attention-heads", 4, "--tokens-per-sample", args.length, "--sample-break-mode", "none",
        "--max-tokens", 2 * args.length, "--optimizer", "adam", "--lr", "1e-3", "--max-update", args.lm_updates,
        "--disable-validation", "--no-save", "--save-dir", save_dir, "--cpu", "--seed", 1, "--log-format", "simple",
        "--log-interval", 2, "--num-workers", 0, *extra)
    values = [float(v) for v in re.findall(r"train_inner .*?wps=([\d.]+)", log)]
    return statistics.median(values[1:] or values), peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short lengths, 1 round")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--span", type=int, default=128)
    parser.add_argument("--bsz", type=int, default=1)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for (a)")
    parser.add_argument("--lm-dim", type=int, default=256)
    parser.add_argument("--lm-layers", type=int, default=4)
    parser.add_argument("--lm-updates", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--part", choices=("a", "b", "all"), default="all", help="(a) layer, (b) language model")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child)
    if args.quick:
        args.length, args.span, args.dim, args.reps, args.lm_dim, args.lm_layers, args.lm_updates, args.rounds = (
            512, 32, 64, 2, 32, 1, 4, 1)
    settings = vars(args).copy()
    settings.pop("memory_child")
    print(f"settings: {settings}; ramp {RAMP}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}")

    if args.part in ("a", "all"):
        layer_table(args)
    if args.part in ("b", "all"):
        lm_table(args)


def layer_table(args):
    print(f"\n(a) one attention layer, forward + backward, {args.length} tokens, bsz {args.bsz}, d {args.dim}, "
          f"{args.heads} heads, span {args.span} (+ ramp {RAMP})")
    print("| attention | part | full (CPU s) | span, banded (CPU s) | span, all keys (CPU s) | speed-up banded vs full | "
          "peak RSS full (MiB) | peak RSS banded (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for causal, core, times in layer_times(args):
        memory = {kind: layer_memory(kind, causal, args) for kind in ("full", "band")} if not core else None
        memory_cells = f"{memory['full']:.0f} | {memory['band']:.0f}" if memory else "- | -"
        print(f"| {'decoder (causal)' if causal else 'encoder'} | {'core' if core else 'layer'} | "
              f"{times['full']:.3f} | {times['band']:.3f} | {times['masked']:.3f} | "
              f"{times['full'] / times['band']:.1f}x | {memory_cells} |", flush=True)



def lm_table(args):
    print(f"\n(b) fairseq-train language model: d {args.lm_dim}, {args.lm_layers} layers, {args.length} tokens per "
          f"sample, 2 samples per batch, spans {args.span}")
    archs = ("transformer_lm", "full softmax, same module", "transformer_lm_adaptive_span")
    results = {arch: [] for arch in archs}
    with tempfile.TemporaryDirectory() as tmp:
        data = lm_data(Path(tmp), 1500 if args.quick else 12000)
        for round_index in range(args.rounds):
            for arch in archs if round_index % 2 == 0 else archs[::-1]:
                results[arch].append(lm_train(data, Path(tmp) / f"{arch.replace(' ', '_')}-{round_index}", arch, args))
                print(f"round {round_index} {arch:30s} {results[arch][-1][0]:9.1f} wps  "
                      f"peak RSS {results[arch][-1][1]:7.0f} MiB", flush=True)
    print("| model | words/s (median of rounds) | ratio to transformer_lm | peak RSS (MiB) |")
    print("|---|---|---|---|")
    base = statistics.median(wps for wps, _ in results["transformer_lm"])
    for arch in archs:
        wps = statistics.median(w for w, _ in results[arch])
        peak = max(p for _, p in results[arch])
        print(f"| {arch} | {wps:.1f} | {wps / base:.2f}x | {peak:.0f} |")


if __name__ == "__main__":
    main()
