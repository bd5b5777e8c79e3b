"""Sparse and adaptive attention for fairseq: alpha-entmax, ReLA and adaptive span."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

START_UP_HOOK = "sparse_attn_fairseq_compat.pth"


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


setup(
    name="sparse_attn_fairseq",
    version="0.1.0",
    description=__doc__,
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sparse_attn_fairseq", "sparse_attn_fairseq.*",
                                    "sparse_attn_fairseq_compat"]),
    cmdclass={"build_py": BuildWithStartUpHook},
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
        "test": ["pytest>=7", "entmax==1.3", "tensorboardX", "sacremoses"],
        "recipes": ["sacremoses"],  # tokenised BLEU (Moses tokeniser), as the entmax paper reports
        "plot": ["matplotlib"],
        "plots": ["matplotlib"],
    },
    entry_points={"console_scripts": ["sparse-attn-analyze=sparse_attn_fairseq.analyze.cli:main"]},
)
