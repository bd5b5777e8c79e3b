"""Forward+backward cost of each attention normalizer relative to torch.softmax on the same tensors.

Command (2-5 minutes on 2 CPU cores):      python bench/bench_normalizers.py --threads 1,2
The issue-13 targets, (64, 256, 256):     python bench/bench_normalizers.py --shapes 64x256x256 --threads 1,2
Rows: every (normalizer, kernel) pair of the registries, so a new normalizer or kernel is measured by itself.
Smoke run (seconds):                       python bench/bench_normalizers.py --quick

Timing: every case runs once per round, in a rotating order, for ``--rounds`` rounds (a third of them, at least 5, for
shapes above 4M elements); the table shows the median time over rounds divided by the median softmax time (shared
machines swing several-fold, only same-run ratios mean anything; ``--threads 1`` is far less sensitive to other jobs
on the machine than two OpenMP threads, which wait for each other on every one of the solver's ~60 full-size ops).
Scores are N(0, 1) (q.k / sqrt(d) at initialisation); (bsz*heads, tgt, src) is viewed as (bsz, 8 heads, tgt, src), and
learned alpha is one value per head drawn as in the paper, 1 + sigmoid(N(0, 1)).

Peak memory: torch.profiler with profile_memory=True records every tensor allocation and free made by aten ops
(including those inside autograd backward); ``export_memory_timeline`` turns that into a timeline, and we take its
peak minus its starting value (the pre-existing input and grad_output), i.e. the extra memory a forward+backward
holds at its worst moment. On CUDA, torch.cuda.max_memory_allocated is used the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparse_attn_fairseq.kernels import kernels_for  # noqa: E402
from sparse_attn_fairseq.layers.normalizers import normalizer_names  # noqa: E402

NUM_HEADS = 8
FULL_SHAPES = [(64, 64, 64), (64, 256, 256), (16, 1024, 1024)]
QUICK_SHAPES = [(16, 16, 16)]
BASELINE = "softmax (torch)"
# the alpha argument each normalizer's kernels get (entmax_alpha: the learned per-head alpha)
KERNEL_ALPHA = {"entmax_fixed": 1.3}
# target time / softmax per normalizer at (64, 256, 256), 1 thread and 2 threads (issue 13); None: no target
TARGETS = {"entmax_alpha": (4.0, 5.0), "entmax15": (3.0, None), "sparsemax": (3.0, None)}


def build_cases(alpha: torch.Tensor) -> dict:
    """name -> function of a (bsz, heads, tgt, src) score tensor: torch.softmax, then every (normalizer, kernel)
    pair of the registries (a new normalizer or kernel appears here by itself), then the entmax package's."""
    cases = {BASELINE: lambda x: torch.softmax(x, -1)}
    for normalizer in normalizer_names():
        for kernel in kernels_for(normalizer):
            if kernel.unavailable() is None:
                kernel_alpha = alpha if normalizer == "entmax_alpha" else KERNEL_ALPHA.get(normalizer)
                cases[f"{normalizer} [{kernel.name}]"] = (
                    lambda x, k=kernel, n=normalizer, a=kernel_alpha: k.fn(n, x, None, a))
    try:
        import entmax as pkg
    except ImportError:
        return cases
    cases["pkg: entmax_bisect, learned alpha"] = lambda x: pkg.entmax_bisect(x, alpha)
    cases["pkg: entmax15"] = lambda x: pkg.entmax15(x, dim=-1)
    cases["pkg: sparsemax"] = lambda x: pkg.sparsemax(x, dim=-1)
    return cases


def forward_backward(fn, x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor) -> None:
    x.grad, alpha.grad = None, None
    fn(x).backward(grad)


def time_cases(cases: dict, x, grad, alpha, rounds: int) -> dict:
    """Median seconds per case; the order rotates every round so drift hits all cases alike."""
    names = list(cases)
    times = {name: [] for name in names}
    for name in names:  # warm-up
        forward_backward(cases[name], x, grad, alpha)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            forward_backward(cases[name], x, grad, alpha)
            if x.is_cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_extra_bytes(fn, x, grad, alpha) -> int:
    """Peak bytes allocated during one forward+backward, above what existed when it started."""
    if x.is_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward_backward(fn, x, grad, alpha)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU]
    with profile(activities=acts, profile_memory=True, record_shapes=True, with_stack=True) as prof:
        forward_backward(fn, x, grad, alpha)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)  # sizes[t] = bytes per memory category at event t
    totals = [sum(s) for s in sizes]
    return max(totals) - totals[0] if totals else 0


def bench_shape(shape, device, rounds, with_memory) -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    bh, tgt, src = shape
    x = torch.randn(bh // NUM_HEADS, NUM_HEADS, tgt, src, generator=gen).to(device).requires_grad_()
    grad = torch.randn(x.shape, generator=gen).to(device)
    raw = torch.randn(NUM_HEADS, 1, 1, generator=gen)
    alpha = (1.0 + torch.sigmoid(raw)).clamp(1.01, 2.0).to(device).requires_grad_()
    cases = build_cases(alpha)
    if x.numel() > 2**22:  # (16, 1024, 1024): the package's bisection takes seconds per call on CPU
        rounds = max(5, rounds // 3)
    med = time_cases(cases, x, grad, alpha, rounds)
    mem = {n: peak_extra_bytes(f, x, grad, alpha) for n, f in cases.items()} if with_memory else {}
    base_t, base_m = med[BASELINE], mem.get(BASELINE)
    rows = []
    for name in cases:
        mem_ratio = f"{mem[name] / base_m:.2f}" if base_m else "-"
        rows.append((f"{device} {shape}", name, f"{med[name] * 1e3:.2f}", f"{med[name] / base_t:.2f}", mem_ratio))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, 3 rounds, no memory profile (smoke test)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per case (default 15)")
    parser.add_argument("--shapes", default=None, help="e.g. 64x256x256,16x1024x1024 (bsz*heads x tgt x src)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    parser.add_argument("--threads", default=None,
                        help="torch CPU threads, or several in one run, e.g. 1,2 (default: torch's choice)")
    args = parser.parse_args(argv)
    for threads in (args.threads.split(",") if args.threads else [None]):
        if threads:
            torch.set_num_threads(int(threads))
        run_all(args)


def run_all(args) -> None:
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rounds = 3 if args.quick else args.rounds
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load = "n/a" if not hasattr(os, "getloadavg") else ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, rounds={rounds}, load average {load}\n")
    print("| device, shape | normalizer [kernel] | median ms (fwd+bwd) | time / softmax | peak extra memory / "
          "softmax | target |")
    print("|---|---|---:|---:|---:|---|")
    for device in devices:
        for shape in shapes:
            for row in bench_shape(shape, device, rounds, with_memory=not (args.quick or args.no_memory)):
                print("| " + " | ".join(row + (verdict(row, shape, device),)) + " |", flush=True)


def verdict(row: tuple, shape: tuple, device: str) -> str:
    """The issue's target for fused rows at (64, 256, 256) on CPU at 1 or 2 threads, met or missed."""
    name = row[1].split(" [")[0]
    threads = torch.get_num_threads()
    if device != "cpu" or shape != (64, 256, 256) or "[fused" not in row[1] or threads not in (1, 2):
        return "-"
    target = TARGETS.get(name, (None, None))[threads - 1]
    if target is None:
        return "-"
    return f"<= {target}x: {'met' if float(row[3]) <= target else 'MISSED'}"


if __name__ == "__main__":
    main()
