"""Build installable wheels for fairseq 0.12.2 and its legacy pins on today's pip and torch.

Two upstream releases cannot be installed as published:

* omegaconf 2.0.5/2.0.6 (required by hydra-core 1.0.7, required by fairseq 0.12.2) declare
  ``PyYAML (>=5.1.*)``, an invalid specifier that pip >= 24.1 rejects even for ``pip download``.
  We fetch the wheel with a pip < 24.1 run from its own wheel file, and rewrite that one line.
* fairseq 0.12.2 requires ``torchaudio`` (used only by its speech tasks). Every torchaudio release
  pins one torch version, none of them a CPU torch 2.13, so resolving it replaces the user's torch.
  We build fairseq's wheel from the sdist (without torch on the path, which skips its optional C++
  extensions libnat/libbase; no transformer uses them) and drop that requirement.

The repaired wheels land in the wheelhouse folder given on the command line; installing them with
``--no-deps`` first lets any pip resolve everything else normally afterwards. Idempotent.

Usage: python tools/build_wheelhouse.py WHEELHOUSE
"""

import base64
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

OMEGACONF = "omegaconf==2.0.6"
FAIRSEQ = "fairseq==0.12.2"
OLD_PIP = "pip<24.1"

# wheel name prefix -> (regex on a METADATA line, replacement; None drops the line)
METADATA_FIXES = {
    "omegaconf-2.0.6": (r"^(Requires-Dist: PyYAML.*>=5\.1)\.\*", r"\1"),
    "fairseq-0.12.2": (r"^Requires-Dist: torchaudio\b", None),
}


def pip(*args: str, python_path: str = None) -> None:
    """Run pip with this interpreter; optionally a pip found at ``python_path`` (e.g. a wheel)."""
    env = dict(os.environ, PYTHONPATH=python_path) if python_path else None
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def repair_wheel(path: Path, pattern: str, replacement) -> None:
    """Rewrite (or drop) the METADATA lines matching ``pattern`` in place and update RECORD."""
    with zipfile.ZipFile(path) as src:
        entries = {info.filename: src.read(info) for info in src.infolist()}
    meta_name = next(n for n in entries if n.endswith(".dist-info/METADATA"))
    record_name = next(n for n in entries if n.endswith(".dist-info/RECORD"))
    lines = entries[meta_name].decode().split("\n")
    if not any(re.search(pattern, line) for line in lines):
        return  # already repaired
    if replacement is None:
        lines = [line for line in lines if not re.search(pattern, line)]
    else:
        lines = [re.sub(pattern, replacement, line) for line in lines]
    entries[meta_name] = "\n".join(lines).encode()
    meta = entries[meta_name]
    record = []
    for row in entries[record_name].decode().splitlines():
        name = row.split(",")[0]
        record.append(f"{name},{_record_hash(meta)},{len(meta)}" if name == meta_name else row)
    entries[record_name] = ("\n".join(record) + "\n").encode()
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in entries.items():
            dst.writestr(name, data)
    tmp.replace(path)


def fetch_omegaconf(wheelhouse: Path, scratch: Path) -> None:
    """Download omegaconf's wheel with an older pip that still accepts its metadata."""
    if list(wheelhouse.glob("omegaconf-2.0.6-*.whl")):
        return
    pip("download", "-q", "--no-deps", "-d", str(scratch), OLD_PIP)
    old_pip_wheel = next(scratch.glob("pip-*.whl"))
    pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheelhouse), OMEGACONF,
        python_path=str(old_pip_wheel))


def build_fairseq(wheelhouse: Path, scratch: Path) -> None:
    """Build fairseq's wheel from its sdist; needs numpy and cython installed, no build isolation."""
    if list(wheelhouse.glob("fairseq-0.12.2-*.whl")):
        return
    pip("download", "-q", "--no-deps", "--no-binary=:all:", "--no-build-isolation", "-d", str(scratch), FAIRSEQ)
    sdist = next(scratch.glob("fairseq-0.12.2.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(scratch, filter="data")
    source = scratch / "fairseq-0.12.2"
    # Hide torch from the build: fairseq then skips its optional C++ extensions (minutes on 2 cores).
    code = (
        "import sys, runpy; sys.modules['torch'] = None; "
        f"sys.argv = ['setup.py', '-q', 'bdist_wheel', '-d', {str(wheelhouse)!r}]; "
        "runpy.run_path('setup.py', run_name='__main__')"
    )
    subprocess.run([sys.executable, "-c", code], cwd=source, check=True)


def main() -> None:
    wheelhouse = Path(sys.argv[1]).resolve()
    wheelhouse.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fetch_omegaconf(wheelhouse, Path(tmp))
        build_fairseq(wheelhouse, Path(tmp))
    for prefix, (pattern, replacement) in METADATA_FIXES.items():
        for wheel in wheelhouse.glob(f"{prefix}-*.whl"):
            repair_wheel(wheel, pattern, replacement)
    print(f"wheelhouse ready: {sorted(p.name for p in wheelhouse.glob('*.whl'))}")


if __name__ == "__main__":
    main()
