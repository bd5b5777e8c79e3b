"""Installation on a fresh virtual environment with pip >= 24.1 (regular, then editable), the compiled fused
kernel built by both, and --user-dir from both the installed package and the source checkout."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env

# What fairseq-train does first: load --user-dir, then build the parser. Every declared architecture
# must be registered, from this exact folder.
_CHECK_USER_DIR = """
import sys, os
from fairseq import options
from fairseq.models import ARCH_MODEL_REGISTRY
user_dir = sys.argv[1]
parser = options.get_training_parser()
options.parse_args_and_arch(parser, ["/nonexistent", "--user-dir", user_dir, "--arch", "transformer"])
import sparse_attn_fairseq, sparse_attn_fairseq.models as models
assert os.path.dirname(sparse_attn_fairseq.__file__) == os.path.abspath(user_dir), sparse_attn_fairseq.__file__
missing = [a for a in models.ARCHITECTURES if a not in ARCH_MODEL_REGISTRY]
assert not missing, missing
print("registered", len(models.ARCHITECTURES), "from", user_dir)
"""


def _env():
    """cli_env without the checkout on PYTHONPATH: pip would take its in-tree egg-info for the installed package,
    and imports would find the checkout instead of what was installed."""
    return {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}


def _run(*args, cwd=None):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=_env(),
                            timeout=1200)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _check_user_dirs(python, installed_dir):
    for user_dir in (installed_dir, REPO / "sparse_attn_fairseq"):
        out = _run(python, "-c", _CHECK_USER_DIR, user_dir, cwd="/")
        assert "registered" in out.stdout


def test_user_dir_from_editable_install_and_checkout():
    import sparse_attn_fairseq

    installed = sparse_attn_fairseq.__file__.rsplit("/", 1)[0]
    _check_user_dirs(sys.executable, installed)


@pytest.mark.slow
def test_fresh_venv_with_modern_pip(tmp_path):
    """The Makefile's steps, run with pip >= 24.1, then a regular (non-editable) install."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "pip>=24.1", "setuptools>=70", "wheel", "numpy", "cython")
    pip_version = _run(python, "-m", "pip", "--version").stdout.split()[1]
    assert tuple(int(p) for p in pip_version.split(".")[:2]) >= (24, 1)
    _run(python, REPO / "tools" / "build_wheelhouse.py", tmp_path / "wheels")
    wheels = sorted((tmp_path / "wheels").glob("*.whl"))
    _run(python, "-m", "pip", "install", "-q", "--no-deps", *wheels)
    _run(python, "-m", "pip", "install", "-q", "torch==2.13.0")
    _run(python, "-m", "pip", "install", "-q", "--no-build-isolation", REPO)
    _run(python, "-m", "pip", "check")
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    assert (Path(site) / "sparse_attn_fairseq_compat.pth").exists()
    out = _run(python, "-c", "import fairseq, numpy; print(fairseq.__version__, numpy.__version__)", cwd="/")
    assert out.stdout.startswith("0.12.2 2.")
    _check_user_dirs(python, f"{site}/sparse_attn_fairseq")
    _check_fused_kernel(python, f"{site}/sparse_attn_fairseq")
    # editable: the op is built next to the sources, and --user-dir of the checkout finds it
    _run(python, "-m", "pip", "uninstall", "-y", "sparse_attn_fairseq")
    assert not (Path(site) / "sparse_attn_fairseq").exists()  # the wheel's RECORD lists every file, the op too
    _run(python, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", REPO)
    _check_fused_kernel(python, str(REPO / "sparse_attn_fairseq"))


_CHECK_FUSED = """
import sys, warnings, torch
warnings.filterwarnings("error", message=".*fused CPU entmax kernel is unavailable")  # the fallback would fail this
import sparse_attn_fairseq, sparse_attn_fairseq._C as compiled
from sparse_attn_fairseq.kernels import select_kernel
assert compiled.__file__.startswith(sys.argv[1]), (compiled.__file__, sys.argv[1])
assert select_kernel("entmax_alpha", torch.zeros(2, 3)).name == "fused_cpu"
print("fused kernel from", compiled.__file__)
"""


def _check_fused_kernel(python, package_dir):
    """The install built the compiled op where the installed package is, and the kernel registry picks it."""
    out = _run(python, "-c", _CHECK_FUSED, package_dir, cwd="/")
    assert "fused kernel from" in out.stdout


@pytest.mark.slow
def test_a_failed_kernel_build_installs_without_it_and_says_so(tmp_path):
    """No working C++ compiler: the wheel builds without the compiled op, and the build log says why."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a clean copy: no build/ or compiled op left by other builds
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.so", "__pycache__", "*.egg-info", "runs", "checkpoints", "work", "data"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps", "-w", tmp_path / "wheels",
         source], capture_output=True, text=True, env=cli_env({"CXX": "/bin/false", "CC": "/bin/false"}),
        timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the fused CPU kernels were not built" in result.stdout + result.stderr
    names = zipfile.ZipFile(next((tmp_path / "wheels").glob("*.whl"))).namelist()
    assert "sparse_attn_fairseq/kernels/fused_cpu.py" in names
    assert not [name for name in names if "/_C." in name]
