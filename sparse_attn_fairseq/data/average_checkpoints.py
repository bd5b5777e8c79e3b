"""Average the parameters of the last N fairseq checkpoints (fairseq's scripts/average_checkpoints.py is not in the
PyPI release).

    python -m sparse_attn_fairseq.data.average_checkpoints CHECKPOINT_DIR OUT.pt [--last 5]

Takes the N newest checkpoints (checkpoint_<epoch>_<updates>.pt and checkpoint<epoch>.pt, by the time they were
written; fairseq names a save at the end of an epoch by the epoch, any other by the update), averages
every floating-point tensor of their models in float64 and writes the first checkpoint with that model; integer
tensors and everything else come from the newest one. Fails, naming the file, on a checkpoint that does not load or
whose parameters differ in names or shapes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch


def ordered_checkpoints(folder: Path) -> list[Path]:
    """Epoch and update checkpoints (not _best or _last), oldest first."""
    found = [path for path in folder.glob("checkpoint*.pt")
             if re.fullmatch(r"checkpoint(\d+|_\d+_\d+)\.pt", path.name)]
    return sorted(found, key=lambda path: path.stat().st_mtime_ns)


def average(paths: list[Path]) -> dict:
    states = []
    for path in paths:
        try:
            states.append(torch.load(path, map_location="cpu", weights_only=False))
        except Exception as error:  # noqa: BLE001 - any unreadable file is reported by name
            sys.exit(f"error: {path} does not load ({type(error).__name__}: {error})")
    models = [state["model"] for state in states]
    for path, model in zip(paths[1:], models[1:]):
        if {k: tuple(v.shape) for k, v in model.items()} != {k: tuple(v.shape) for k, v in models[0].items()}:
            sys.exit(f"error: {path} has other parameters than {paths[0]}: not checkpoints of one model")
    averaged = {}
    for name, newest in models[-1].items():
        if newest.is_floating_point():
            total = sum(model[name].double() for model in models)
            averaged[name] = (total / len(models)).to(newest.dtype)
        else:
            averaged[name] = newest
    result = dict(states[-1])
    result["model"] = averaged
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--last", type=int, default=5, help="how many of the newest checkpoints")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error(f"--last={args.last}: must be >= 1")
    paths = ordered_checkpoints(args.folder)[-args.last:]
    if not paths:
        sys.exit(f"error: no checkpoint<epoch>.pt or checkpoint_<epoch>_<updates>.pt in {args.folder}")
    torch.save(average(paths), args.out)
    print(f"averaged {len(paths)} checkpoints: {', '.join(p.name for p in paths)} -> {args.out}")


if __name__ == "__main__":
    main()
