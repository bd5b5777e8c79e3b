"""Self-attention over 8192 tokens with every registered normaliser: forward + backward on the CPU, peak memory.

Command (about 2 minutes on 2 cores):  python bench/bench_long_inputs.py [--length 8192] [--heads 2] [--dim 32]
Each normaliser runs in its own process so its peak resident memory (os.wait4) is its own; the table reports time,
peak RSS and the largest deviation of a row sum from 1 (softmax, entmax family).
"""

import argparse
import os
import subprocess
import sys

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ONE_RUN = """
import sys, time, torch
sys.path.insert(0, {repo!r})
from sparse_attn_fairseq.layers.normalizers import build_normalizer
from sparse_attn_fairseq.layers.rela_norm import RelaOutputNorm
from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention
torch.manual_seed(0)
name, length, heads, dim = {name!r}, {length}, {heads}, {dim}
norm = RelaOutputNorm(dim, heads) if name == "rela" else None
attention = SparseMultiheadAttention(dim, heads, build_normalizer(name, heads), self_attention=True, output_norm=norm)
x = torch.randn(length, 1, dim, requires_grad=True)
start = time.perf_counter()
out, weights = attention(x, x, x, need_weights=True, need_head_weights=True)
out.sum().backward()
elapsed = time.perf_counter() - start
sums = weights.sum(-1)
ok = bool(torch.isfinite(out).all() and torch.isfinite(x.grad).all())
print(f"RESULT {{elapsed:.2f}} {{(sums - 1).abs().max().item():.2e}} {{ok}}")
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from sparse_attn_fairseq.layers.normalizers import normalizer_names

    print(f"self-attention over {args.length} tokens, {args.heads} heads, d {args.dim}, batch 1, float32, CPU\n")
    print("| normaliser | forward + backward | peak RSS | max row-sum error | finite |")
    print("|---|---:|---:|---:|---|")
    for name in normalizer_names():
        code = ONE_RUN.format(repo=str(REPO), name=name, length=args.length, heads=args.heads, dim=args.dim)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        result = [line for line in output.splitlines() if line.startswith("RESULT")]
        if os.waitstatus_to_exitcode(status) or not result:
            print(f"| {name} | failed | {usage.ru_maxrss / 1024:.0f} MiB | | {output[-300:]!r} |")
            continue
        elapsed, row_error, ok = result[0].split()[1:]
        print(f"| {name} | {elapsed} s | {usage.ru_maxrss / 1024:.0f} MiB | {row_error} | {ok} |", flush=True)


if __name__ == "__main__":
    main()
