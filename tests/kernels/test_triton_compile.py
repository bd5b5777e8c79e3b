"""Every Triton kernel compiles ahead of time for sm_80 (A100) and sm_90 (H100/H200), with no register spills, at
every tile the launcher can choose. No GPU or driver is needed: triton compiles to a cubin for a named target, and
its bundled cuobjdump reads the cubin's resource usage and SASS. This catches what the interpreter accepts and the
compiler rejects (a loop-carried variable that changes type, a non-constexpr global)."""

import concurrent.futures
import multiprocessing
import os
import re
import subprocess
import tempfile

import pytest
import torch
import triton  # a test dependency (setup.py extras "test"): missing, these tests must fail, not vanish
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparse_attn_fairseq.kernels import triton_entmax

ARCHS = (80, 90)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
POINTERS = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64"}


def _signature(kernel, dtype: torch.dtype, constexprs: dict) -> dict:
    """The types the launcher passes: scores and weights in ``dtype``, alpha and its gradient in the compute dtype,
    the mask as bytes, sizes and strides as int32 (the launcher's Python ints), thresholds as fp32."""
    compute = POINTERS[torch.float64 if dtype == torch.float64 else torch.float32]
    types = {"X": POINTERS[dtype], "P": POINTERS[dtype], "G": POINTERS[dtype], "DX": POINTERS[dtype],
             "ALPHA": compute, "DALPHA": compute, "MASK": "*u8", "ITERS": "*i32", "masked_below": "fp32",
             "tol": "fp32"}
    return {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in kernel.arg_names}


def _compile(kernel_name: str, dtype_name: str, constexprs: dict, config: dict, arch: int) -> dict:
    """Compile one kernel for one target (in a worker process); its registers, local memory and spill instructions."""
    from sparse_attn_fairseq.kernels import _triton_entmax_jit as jit  # compiled kernels: see _compiler_process

    kernel, dtype = getattr(jit, kernel_name), getattr(torch, dtype_name)
    source = ASTSource(fn=kernel, signature=_signature(kernel, dtype, constexprs), constexprs=constexprs)
    options = {"num_warps": config["num_warps"], "maxnreg": config["maxnreg"]}  # as the launcher passes them
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([CUOBJDUMP, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    resources = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", usage))
    return {"registers": int(resources["REG"]), "local": int(resources["LOCAL"]),
            "spill_stores": len(re.findall(r"\bSTL\b", sass)), "spill_loads": len(re.findall(r"\bLDL\b", sass))}


def _kernels(config: dict, dtype: torch.dtype, mode: int):
    """(forward, its constexprs) and (backward, its constexprs) of the heaviest variant of a tile: a mask, the
    iteration counter, the alpha gradient."""
    f64 = dtype == torch.float64
    tile = {"ROWS": config["ROWS"], "BLOCK": config["BLOCK"]}
    forward = "entmax_fwd_chunked" if config["chunked"] else "entmax_fwd"
    backward = "entmax_bwd_chunked" if config["chunked"] else "entmax_bwd"
    return ((forward, {"MODE": mode, "HAS_MASK": True, "F64": f64, "COUNT_ITERS": True, "MAX_ITER": 20, **tile}),
            (backward, {"MODE": mode, "ALPHA_GRAD": mode == triton_entmax.GENERAL, "F64": f64, **tile}))


def _cases():
    """Every tile in float32 and float64 (general alpha); the largest tiles in fp16/bf16 and for sparsemax and
    1.5-entmax (their code differs only in the loads and the powers; register pressure peaks at the largest)."""
    for dtype in (torch.float32, torch.float64):
        for config in triton_entmax.launch_configs(dtype):
            yield dtype, config, triton_entmax.GENERAL
    for dtype, mode in ((torch.bfloat16, triton_entmax.GENERAL), (torch.float16, triton_entmax.GENERAL),
                        (torch.float32, triton_entmax.SPARSEMAX), (torch.float32, triton_entmax.ENTMAX15)):
        configs = triton_entmax.launch_configs(dtype)
        for config in configs[-2:]:  # the largest held tile and the chunked one
            yield dtype, config, mode


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


CASES = [(dtype, config, mode, arch) for dtype, config, mode in _cases() for arch in ARCHS]


def _case_id(case) -> str:
    dtype, config, mode, arch = case
    return (f"sm{arch}-{str(dtype).replace('torch.', '')}-mode{mode}-{config['ROWS']}x{config['BLOCK']}"
            f"{'-chunked' if config['chunked'] else ''}-w{config['num_warps']}")


@pytest.fixture(scope="module")
def compiled(monkeypatch_module):
    """Every case compiled once, in parallel (a compile takes about a second and uses one core). The workers'
    kernels must be triton's compiled functions, not the interpreter's, which tests/conftest.py turns on for the test
    process: they start with it off."""
    monkeypatch_module.setenv("TRITON_INTERPRET", "0")
    jobs = {}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count() or 2, mp_context=context) as pool:
        for case in CASES:
            dtype, config, mode, arch = case
            for kernel_name, constexprs in _kernels(config, dtype, mode):
                jobs[(_case_id(case), kernel_name)] = pool.submit(
                    _compile, kernel_name, str(dtype).replace("torch.", ""), constexprs, config, arch)
        return {key: job.result() for key, job in jobs.items()}


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_compiles_without_spills(case, compiled):
    dtype, config, mode, _ = case
    for kernel_name, _constexprs in _kernels(config, dtype, mode):
        usage = compiled[(_case_id(case), kernel_name)]
        assert usage["local"] == 0 and usage["spill_stores"] == 0 and usage["spill_loads"] == 0, (kernel_name, usage)
        assert usage["registers"] <= config["maxnreg"], (kernel_name, usage)  # one program fits an SM
