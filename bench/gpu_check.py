"""The GPU check: the CUDA path's kernels and models on one GPU, in under 8 minutes, printed as one table.

Two tiers:

* kernels (torch and triton only; no install, no fairseq): every Triton kernel against the float64 reference on
  CUDA in float32, fp16 and bf16, forward and backward (alpha too); the flex attention core's own check for each
  kind of call; no device-to-host sync (torch.cuda.set_sync_debug_mode("error")); and forward + backward times with
  triton.testing.do_bench as ratios to torch.softmax, the reference kernel and SDPA, measured in the same run.
* models (fairseq 0.12.2 carried along, see below): tests/gpu and the Triton kernel tests on CUDA, and
  ``fairseq-train --fp16`` words/s of each architecture at base size as a ratio to ``transformer``.

Commands:
    python bench/gpu_check.py --dry-run            # anywhere: what it would run (CI runs this)
    python bench/gpu_check.py --tier kernels       # a GPU machine with torch and triton (>= 3.6): about 2 minutes
    python bench/gpu_check.py                      # both tiers, after the install below: about 7 minutes

The model tier on a machine without network access (e.g. Python 3.12, torch 2.11, triton 3.6): on any machine
with pip and network, from this checkout,
    python bench/gpu_check.py --fetch .gpu-packages --python-version 3.12   # about 11 MB: fairseq's sdist,
                                                                            # repaired omegaconf, hydra-core, ...
copy the checkout with that folder to the GPU machine (git ignores it), and there
    python bench/gpu_check.py --install .gpu-packages   # no network: builds fairseq from its sdist (torch hidden,
                                                        # so no C++ extensions), installs the rest with --no-deps,
                                                        # then this package in editable mode (about 1 minute)
    python bench/gpu_check.py

Without a GPU, ``--smoke`` runs the kernel tier's correctness and sync steps on tiny shapes under triton's
interpreter (the tests use it to keep this script honest); it times nothing that matters.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {  # what the model tier needs beyond the GPU image's own packages (torch, numpy, cython, sacrebleu, ...)
    "fairseq": "fairseq==0.12.2",  # sdist: built on the GPU machine
    "hydra-core": "hydra-core==1.0.7",
    "antlr4-python3-runtime": "antlr4-python3-runtime==4.8",  # sdist only (pure Python)
    "bitarray": "bitarray==3.8.0",
    "entmax": "entmax==1.3",
    "sacremoses": "sacremoses==0.1.1",
    "tensorboardX": "tensorboardX==2.6.2.2",
}
SDIST_ONLY = ("fairseq", "antlr4-python3-runtime")
ARCHS = ("transformer_entmax", "transformer_rela", "transformer_adaptive_span")
KERNEL_NORMALIZERS = ("sparsemax", "entmax15", "entmax_fixed", "entmax_alpha")
ATOL = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}  # forward, against float64 (tests/tolerances.py)
GRAD_RTOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}  # gradients, relative to their largest value
# the targets, each a ratio measured in one run: check -> (sense, bound)
TARGETS = {"triton entmax_alpha fwd+bwd vs torch.softmax, 64x1024x1024 bfloat16": ("<=", 1.5),
           "fairseq-train --fp16 transformer_entmax vs transformer, base": (">=", 0.9)}


class Report:
    """Rows of (section, what, value, verdict), printed as one markdown table at the end."""

    def __init__(self):
        self.rows, self.failed = [], False

    def add(self, section: str, what: str, value: str, ok=None) -> None:
        verdict = "" if ok is None else "ok" if ok else "FAIL"
        self.failed |= ok is False
        self.rows.append((section, what, value, verdict))
        print(f"  {section}: {what}: {value} {verdict}", flush=True)

    def print(self) -> None:
        print("\n| tier | check | value | verdict |\n|---|---|---|---|")
        for row in self.rows:
            print("| " + " | ".join(row) + " |")


# ----- the kernel tier (torch + triton; the package's pure layers, imported without fairseq) -----

def _import_pure_layers():
    """Import the package's kernels and layers without running its __init__ (which registers fairseq models)."""
    if "sparse_attn_fairseq" not in sys.modules:
        package = types.ModuleType("sparse_attn_fairseq")
        package.__path__ = [str(REPO / "sparse_attn_fairseq")]
        sys.modules["sparse_attn_fairseq"] = package
    sys.path.insert(0, str(REPO))
    from sparse_attn_fairseq.kernels import get_kernel, triton_entmax  # noqa: F401
    from sparse_attn_fairseq.layers import normalizers  # noqa: F401  (registers the reference functions)
    return get_kernel, triton_entmax


def _alpha(normalizer, heads, device, requires_grad=True):
    import torch

    if normalizer == "entmax_alpha":  # one learned alpha per head, 1.001 to 2
        values = torch.linspace(1.001, 1.999, heads, device=device).view(heads, 1, 1)
        return values.requires_grad_(requires_grad)
    return 1.3 if normalizer == "entmax_fixed" else None


def kernel_correctness(report: Report, device: str, smoke: bool) -> None:
    """Every Triton kernel against float64 oracles (bisection, sorting) forward and the float64 reference kernel's
    closed-form gradients backward, with key padding."""
    import torch

    get_kernel, _ = _import_pure_layers()
    from sparse_attn_fairseq.functional.reference import (
        entmax15_reference, entmax_bisect_reference, sparsemax_reference,
    )

    oracles = {"sparsemax": lambda x, m, a: sparsemax_reference(x, m), "entmax15": lambda x, m, a: entmax15_reference(
        x, m), "entmax_fixed": lambda x, m, a: entmax_bisect_reference(x, a, m),
               "entmax_alpha": lambda x, m, a: entmax_bisect_reference(x, a, m)}
    triton_kernel, reference = get_kernel("triton"), get_kernel("reference")
    lengths = (5, 37) if smoke else (20, 1000, 10000)  # 10000 keys: the chunked kernels
    dtypes = ("float32",) if smoke else ("float32", "float16", "bfloat16")
    generator = torch.Generator(device=device).manual_seed(0)
    for normalizer in KERNEL_NORMALIZERS:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            worst_fwd = worst_grad = 0.0
            for n in lengths:
                heads, rows = 4, (2 if smoke else 16)
                scores = (torch.randn(2, heads, rows, n, generator=generator, device=device) * 3).to(dtype)
                mask = torch.zeros(2, 1, 1, n, dtype=torch.bool, device=device)
                mask[1, ..., n // 2:] = True
                weight = torch.randn(scores.shape, generator=generator, device=device)
                alpha = _alpha(normalizer, heads, device)
                x = scores.detach().requires_grad_()
                got = triton_kernel.fn(normalizer, x, mask, alpha)
                (got.float() * weight).sum().backward()
                x64 = scores.detach().double().requires_grad_()
                alpha64 = alpha.detach().double().requires_grad_() if isinstance(alpha, torch.Tensor) else alpha
                expected = reference.fn(normalizer, x64, mask, alpha64)  # gradients: the closed forms in PyTorch
                (expected * weight.double()).sum().backward()
                alpha_oracle = alpha.detach().double() if isinstance(alpha, torch.Tensor) else alpha
                oracle = oracles[normalizer](scores.double(), mask, alpha_oracle)  # bisection or sorting
                worst_fwd = max(worst_fwd, float((got.detach().double() - oracle).abs().max()))
                grads = [(x.grad, x64.grad)] + ([(alpha.grad, alpha64.grad)] if isinstance(alpha, torch.Tensor)
                                                 else [])
                for ours, theirs in grads:
                    scale = float(theirs.abs().max().clamp_min(1.0))
                    worst_grad = max(worst_grad, float((ours.double() - theirs).abs().max()) / scale)
            report.add("kernels", f"triton {normalizer} {dtype_name} forward, max error vs float64",
                       f"{worst_fwd:.1e}", worst_fwd <= ATOL[dtype_name])
            report.add("kernels", f"triton {normalizer} {dtype_name} gradients (scores, alpha), relative error",
                       f"{worst_grad:.1e}", worst_grad <= GRAD_RTOL[dtype_name])


def flex_checks(report: Report, device: str) -> None:
    """The flex core's own check (flex forward and backward against the dense computation) per kind of call."""
    import torch

    _import_pure_layers()
    from sparse_attn_fairseq.modules import flex_cores

    for kind, with_span, causal in (("softmax", True, False), ("softmax", True, True), ("rela", False, False),
                                    ("rela", True, True)):
        for dtype in (torch.float32, torch.bfloat16):
            flex_cores._STATE["error"] = None
            trusted = flex_cores._trusted(kind, with_span, causal, dtype, 64, torch.device(device))
            what = f"flex {kind}{' + span' if with_span else ''}{' causal' if causal else ''} {dtype}".replace(
                "torch.", "")
            report.add("kernels", what + " matches the dense computation (fwd+bwd)",
                       "yes" if trusted else flex_cores._STATE["error"], trusted)


def sync_check(report: Report, device: str) -> None:
    """Forward and backward of every Triton kernel under torch.cuda.set_sync_debug_mode("error")."""
    import torch

    get_kernel, _ = _import_pure_layers()
    kernel = get_kernel("triton")
    scores = torch.randn(2, 4, 8, 300, device=device, requires_grad=True)
    mask = torch.zeros(2, 1, 1, 300, dtype=torch.bool, device=device)
    for normalizer in KERNEL_NORMALIZERS:
        alpha = _alpha(normalizer, 4, device)
        kernel.fn(normalizer, scores, mask, alpha).sum().backward()  # warm-up: compiles
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            kernel.fn(normalizer, scores, mask, alpha).sum().backward()
            ok, value = True, "none"
        except RuntimeError as error:
            ok, value = False, str(error).splitlines()[0][:120]
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode(0)
        report.add("kernels", f"triton {normalizer} forward + backward: host syncs", value, ok)


def _bench(fn, device: str) -> float:
    """Milliseconds per call: triton's do_bench on CUDA, a plain timer elsewhere (smoke runs)."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def kernel_speed(report: Report, device: str, smoke: bool) -> None:
    """Forward + backward times as ratios to baselines measured in the same run."""
    import torch
    import torch.nn.functional as F

    get_kernel, _ = _import_pure_layers()
    triton_kernel, reference = get_kernel("triton"), get_kernel("reference")
    shape = (2, 2, 8, 64) if smoke else (64, 1024, 1024)  # 64 heads x 1024 queries x 1024 keys
    for dtype in ((torch.float32,) if smoke else (torch.bfloat16, torch.float32)):
        x = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
        grad = torch.randn_like(x)

        def fwd_bwd(fn):
            def step():
                x.grad = None
                fn(x).backward(grad)
            return step

        base = _bench(fwd_bwd(lambda s: torch.softmax(s, -1)), device)
        name = str(dtype).replace("torch.", "")
        report.add("speed", f"torch.softmax fwd+bwd {'x'.join(map(str, shape))} {name}", f"{base:.3f} ms")
        for normalizer in KERNEL_NORMALIZERS:
            alpha = _alpha(normalizer, shape[0], device)
            alpha = alpha.view(shape[0], 1, 1) if isinstance(alpha, torch.Tensor) else alpha
            ms = _bench(fwd_bwd(lambda s: triton_kernel.fn(normalizer, s, None, alpha)), device)
            what = f"triton {normalizer} fwd+bwd vs torch.softmax, {'x'.join(map(str, shape))} {name}"
            report.add("speed", what, f"{ms / base:.2f}x", _target(what, ms / base))
        ref = _bench(fwd_bwd(lambda s: reference.fn("entmax_alpha", s, None, _alpha("entmax_alpha", shape[0],
                                                                                         device))), device)
        report.add("speed", f"reference entmax_alpha fwd+bwd vs torch.softmax, {name}", f"{ref / base:.2f}x")
    if smoke:
        return
    _flex_speed(report, device, F)


def _flex_speed(report: Report, device: str, F) -> None:
    """The flex core (span, ReLA) fwd+bwd against SDPA's flash attention, bf16, head dim 64."""
    import torch

    _import_pure_layers()
    from types import SimpleNamespace

    from sparse_attn_fairseq.modules import flex_cores

    flex = flex_cores._compiled_flex()
    for length in (1024, 4096):
        q, k, v = (torch.randn(4, 16, length, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        grad = torch.randn_like(q)

        def step(fn):
            def run():
                for t in (q, k, v):
                    t.grad = None
                fn().backward(grad)
            return run

        base = _bench(step(lambda: F.scaled_dot_product_attention(q, k, v)), device)
        report.add("speed", f"SDPA fwd+bwd 4x16x{length}x64 bf16", f"{base:.3f} ms")
        spans = torch.linspace(32, 256, 16, device=device)
        span = SimpleNamespace(ramp=32, host_bound=lambda: 256.0)
        for kind, z in (("softmax", spans), ("rela", None), ("rela", spans)):
            ms = _bench(step(lambda: flex_cores.flex_attention_call(flex, kind, q, k, v, z, span, False, None,
                                                                    None)), device)
            label = f"flex {kind}{' + span (32-256)' if z is not None else ''} fwd+bwd vs SDPA, {length} tokens"
            report.add("speed", label, f"{ms / base:.2f}x")


def _target(what: str, ratio: float):
    """Whether ``ratio`` meets the target of check ``what``, or None if it has none."""
    if what not in TARGETS:
        return None
    sense, bound = TARGETS[what]
    return ratio <= bound if sense == "<=" else ratio >= bound


# ----- the model tier (fairseq) -----

def model_tests(report: Report) -> None:
    """tests/gpu (mixed precision training of every architecture, the sync check on CUDA) and the Triton kernel
    tests on CUDA."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu",
               "tests/kernels/test_triton_kernels.py"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=_env())
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    report.add("models", "pytest tests/gpu tests/kernels/test_triton_kernels.py", summary, result.returncode == 0)
    if result.returncode:
        print(result.stdout[-4000:], result.stderr[-2000:])


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1"}


def _run(*command) -> str:
    result = subprocess.run([*map(str, command)], capture_output=True, text=True, env=_env(), cwd=REPO)
    if result.returncode:
        raise RuntimeError(f"{command[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def train_speed(report: Report, updates: int) -> None:
    """fairseq-train --fp16 words/s at base size (6 + 6 layers, d 512, 8 heads) against transformer."""
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _run(sys.executable, "-m", "sparse_attn_fairseq.data.synthetic_pair", root / "raw", "--train", 20000,
             "--valid", 100, "--test", 100)
        _run(bin_dir / "fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref",
             root / "raw/train", "--validpref", root / "raw/valid", "--destdir", root / "bin", "--joined-dictionary",
             "--workers", "8")
        speeds = {}
        for arch in ("transformer", *ARCHS):
            log = _run(bin_dir / "fairseq-train", root / "bin", "--user-dir", REPO / "sparse_attn_fairseq", "--arch",
                       arch, "--encoder-layers", 6, "--decoder-layers", 6, "--encoder-embed-dim", 512,
                       "--decoder-embed-dim", 512, "--encoder-ffn-embed-dim", 2048, "--decoder-ffn-embed-dim", 2048,
                       "--encoder-attention-heads", 8, "--decoder-attention-heads", 8, "--share-all-embeddings",
                       "--optimizer", "adam", "--lr", "5e-4", "--max-tokens", 8192, "--max-update", updates,
                       "--fp16", "--disable-validation", "--no-save", "--seed", 1, "--log-format", "simple",
                       "--log-interval", 10, "--num-workers", 2, "--save-dir", root / arch)
            values = [float(v) for v in re.findall(r"train_inner .*?wps=([\d.]+)", log)]
            speeds[arch] = statistics.median(values[1:] or values)  # the first interval includes compilation
            report.add("models", f"fairseq-train --fp16 {arch} words/s", f"{speeds[arch]:.0f}")
        for arch in ARCHS:
            ratio = speeds[arch] / speeds["transformer"]
            what = f"fairseq-train --fp16 {arch} vs transformer, base"
            report.add("models", what, f"{ratio:.2f}x", _target(what, ratio))


# ----- carrying fairseq to a machine without network -----

def fetch(folder: Path, python_version: str) -> None:
    """Download (on a machine with network) what the model tier installs on the GPU machine."""
    folder.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "tools"))
    import build_wheelhouse  # omegaconf 2.0.6's wheel, fetched with an older pip and repaired (see there)

    with tempfile.TemporaryDirectory() as tmp:
        build_wheelhouse.fetch_omegaconf(folder, Path(tmp))
    pattern, replacement = build_wheelhouse.METADATA_FIXES["omegaconf-2.0.6"]
    for wheel in folder.glob("omegaconf-2.0.6-*.whl"):
        build_wheelhouse.repair_wheel(wheel, pattern, replacement)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64")]
    for name, spec in PACKAGES.items():
        if name in SDIST_ONLY:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:",
                            "--no-build-isolation", "-d", str(folder), spec], check=True)
        else:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            f"--python-version={python_version}", "--implementation=cp", *platforms, "-d",
                            str(folder), spec], check=True)
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"{folder}: {', '.join(sorted(p.name for p in folder.iterdir()))} ({size:.1f} MiB)")


def install(folder: Path) -> None:
    """Install the fetched packages with no network, then this package (editable)."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation"]
    with tempfile.TemporaryDirectory() as tmp:
        for sdist in folder.glob("*.tar.gz"):
            subprocess.run(["tar", "xzf", str(sdist), "-C", tmp], check=True)
        wheels = Path(tmp) / "wheels"
        fairseq = next(Path(tmp).glob("fairseq-*"))
        # torch hidden from fairseq's setup.py: its optional C++/CUDA extensions are skipped (no model here uses them)
        code = ("import sys, runpy; sys.modules['torch'] = None; "
                f"sys.argv = ['setup.py', '-q', 'bdist_wheel', '-d', {str(wheels)!r}]; "
                "runpy.run_path('setup.py', run_name='__main__')")
        subprocess.run([sys.executable, "-c", code], cwd=fairseq, check=True)
        antlr = next(Path(tmp).glob("antlr4-python3-runtime-*"))
        subprocess.run([*pip, str(antlr)], check=True)
        subprocess.run([*pip, *map(str, wheels.glob("*.whl")), *map(str, folder.glob("*.whl"))], check=True)
    subprocess.run([*pip, "-e", str(REPO)], check=True)  # also the start-up hook (compatibility fixes)
    print("installed: fairseq", _run(sys.executable, "-c", "import fairseq; print(fairseq.__version__)").strip())


# ----- main -----

STEPS = {
    "kernels": [("correctness", "every Triton kernel vs the float64 reference, fp32/fp16/bf16, fwd and bwd"),
                ("flex", "the flex core's check (fwd + bwd vs dense) for span, ReLA, ReLA + span"),
                ("sync", "forward + backward under torch.cuda.set_sync_debug_mode('error')"),
                ("speed", "do_bench fwd+bwd: Triton kernels vs torch.softmax and the reference at 64x1024x1024; "
                          "flex span/ReLA vs SDPA at 1k and 4k tokens")],
    "models": [("tests", "pytest tests/gpu tests/kernels/test_triton_kernels.py (fp16, bf16, amp, every "
                         "architecture; sync debug mode; Triton kernels on CUDA)"),
               ("train", "fairseq-train --fp16 words/s, base size, transformer_entmax/rela/adaptive_span vs "
                         "transformer")],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=("kernels", "models", "all"), default="all")
    parser.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    parser.add_argument("--smoke", action="store_true",
                        help="no GPU: the kernel tier's correctness and sync steps, tiny, under triton's interpreter")
    parser.add_argument("--updates", type=int, default=60, help="fairseq-train updates per architecture")
    parser.add_argument("--fetch", type=Path, metavar="DIR", help="download the model tier's packages into DIR")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (for --fetch)")
    parser.add_argument("--install", type=Path, metavar="DIR", help="install the packages fetched into DIR")
    args = parser.parse_args()
    if args.fetch:
        fetch(args.fetch, args.python_version)
        return 0
    if args.install:
        install(args.install)
        return 0
    tiers = ("kernels", "models") if args.tier == "all" else (args.tier,)
    if args.dry_run:
        for tier in tiers:
            for step, what in STEPS[tier]:
                print(f"{tier}/{step}: {what}")
        return 0
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run, or --smoke for the interpreter")
    report = Report()
    started = time.time()
    if "kernels" in tiers:
        kernel_correctness(report, device, args.smoke)
        if device == "cuda":
            flex_checks(report, device)
        sync_check(report, device)
        kernel_speed(report, device, args.smoke)
    if "models" in tiers and not args.smoke:
        model_tests(report)
        train_speed(report, args.updates)
    report.print()
    if device == "cuda":
        print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
              f"{__import__('triton').__version__}; {time.time() - started:.0f} s")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
