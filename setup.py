"""Sparse and adaptive attention for fairseq: alpha-entmax, ReLA and adaptive span."""

import platform
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

START_UP_HOOK = "sparse_attn_fairseq_compat.pth"
FUSED_OP_SOURCES = [f"sparse_attn_fairseq/csrc/entmax_{part}.cpp" for part in ("ops", "rows", "lanes")]
FUSED_OP_HEADERS = ["sparse_attn_fairseq/csrc/entmax_common.h"]
# x86-64: ATen's AVX2 vector types (and the Sleef functions libtorch exports); the loader checks the CPU first.
AVX2_FLAGS = ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]


class BuildWithStartUpHook(build_py):
    """Also place the start-up hook (a .pth file) at the root of site-packages."""

    def run(self):
        super().run()
        self.copy_file(START_UP_HOOK, str(Path(self.build_lib) / START_UP_HOOK))
        if getattr(self, "editable_mode", False):  # PEP 660: the unpacked editable wheel's root
            wheel_root = self.get_finalized_command("install").install_lib
            self.copy_file(START_UP_HOOK, str(Path(wheel_root) / START_UP_HOOK))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / START_UP_HOOK)]

    def get_output_mapping(self):  # what `pip install -e .` places in site-packages
        mapping = super().get_output_mapping()
        mapping[str(Path(self.build_lib) / START_UP_HOOK)] = START_UP_HOOK
        return mapping




try:  # torch is needed to build the fused kernels, not to install the package
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError as error:
    BuildExtension, CppExtension, TORCH_MISSING = build_ext, None, str(error)


def fused_op_extensions():
    """The fused CPU kernels (sparse_attn_fairseq._C), or none if torch is not importable at build time."""
    if CppExtension is None:
        print(f"sparse_attn_fairseq: torch is not importable ({TORCH_MISSING}); the fused CPU kernels are not built "
              "(install torch first, then this package with --no-build-isolation)", file=sys.stderr)
        return []
    flags = ["-O3", "-fopenmp"] + (AVX2_FLAGS if platform.machine() in ("x86_64", "AMD64") else [])
    return [CppExtension("sparse_attn_fairseq._C", FUSED_OP_SOURCES, depends=FUSED_OP_HEADERS, extra_compile_args=flags,
                         extra_link_args=["-fopenmp"])]


class BuildOptionalExtensions(BuildExtension):
    """torch's extension builder, except that a failed build warns and installs the package without the fused
    kernels (the reference kernels then run, and say so)."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # a missing or failing compiler must not fail the install
            print(f"sparse_attn_fairseq: WARNING: the fused CPU kernels were not built ({error}); the reference "
                  "kernels will be used", file=sys.stderr)

    def get_outputs(self):
        return [path for path in super().get_outputs() if Path(path).exists()]

    def get_output_mapping(self):  # editable installs: {built file: file placed next to the sources}
        mapping = super().get_output_mapping().items()
        return {built: placed for built, placed in mapping if Path(built).exists() or Path(placed).exists()}


setup(
    name="sparse_attn_fairseq",
    version="0.1.0",
    description=__doc__,
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sparse_attn_fairseq", "sparse_attn_fairseq.*",
                                    "sparse_attn_fairseq_compat"]),
    cmdclass={"build_py": BuildWithStartUpHook, "build_ext": BuildOptionalExtensions},
    ext_modules=fused_op_extensions(),
    install_requires=[
        "fairseq==0.12.2",
        "omegaconf==2.0.6",
        "hydra-core==1.0.7",
        "torch>=2.6",
        "numpy",
        "sacrebleu>=2.0",
        "sentencepiece",
    ],
    extras_require={
        # triton: the CUDA kernels' tests run them under its interpreter and compile them ahead of time (no GPU)
        "test": ["pytest>=7", "entmax==1.3", "tensorboardX", "sacremoses", "triton>=3.6"],
        "recipes": ["sacremoses"],  # tokenised BLEU (Moses tokeniser), as the entmax paper reports
        "plot": ["matplotlib"],
        "plots": ["matplotlib"],
    },
    entry_points={"console_scripts": ["sparse-attn-analyze=sparse_attn_fairseq.analyze.cli:main"]},
)
