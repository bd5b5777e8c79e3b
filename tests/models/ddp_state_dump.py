"""Run fairseq-train's own entry point (fairseq_cli.train.cli_main) under torchrun, then save this rank's parameters.

Usage: torchrun --nproc_per_node 2 ddp_state_dump.py OUT_DIR <fairseq-train arguments>
fairseq only writes checkpoints from rank 0; this records every rank's final state so a test can compare them.
"""

import os
import sys

import torch
from fairseq_cli import train


class RecordingTrainer(train.Trainer):
    last = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingTrainer.last = self


if __name__ == "__main__":
    out_dir = sys.argv.pop(1)
    train.Trainer = RecordingTrainer
    train.cli_main()
    state = {name: p.detach().clone() for name, p in RecordingTrainer.last.model.named_parameters()}
    torch.save(state, os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"))
