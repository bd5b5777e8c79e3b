"""fairseq checkpoints load under torch's weights_only default through an allowlist; anything else
is refused on every loading path, unless the user opts in for a trusted file."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sparse_attn_fairseq_compat.checkpoint_loading import (
    TRUST_VARIABLE,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)
from tests.conftest import USER_DIR, cli_env, run_cli


class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _rewrite_checkpoint(source, target, **extra_state):
    state = torch.load(source, weights_only=False)
    state.setdefault("extra_state", {}).update(extra_state)
    torch.save(state, target)
    return target


@pytest.fixture()
def hostile_checkpoint(transformer_checkpoint, tmp_path):
    marker = tmp_path / "code-ran"
    path = _rewrite_checkpoint(transformer_checkpoint, tmp_path / "checkpoint_last.pt",
                               payload=_RunsCode(marker))
    return path, marker


@pytest.fixture()
def legacy_checkpoint(transformer_checkpoint, tmp_path):
    """A benign file with a global outside the allowlist (a numpy scalar, as older code saved)."""
    return _rewrite_checkpoint(transformer_checkpoint, tmp_path / "legacy.pt", best=np.float64(1.5))


def _refusal_cases(data_bin, checkpoint):
    source = (data_bin.parent / "raw" / "test.src").read_text().splitlines()[0] + "\n"
    common = ["--user-dir", USER_DIR, "--cpu"]
    return {
        "generate": (["fairseq-generate", data_bin, "--path", checkpoint, *common], None),
        "interactive": (["fairseq-interactive", data_bin, "--path", checkpoint, "--source-lang", "src",
                         "--target-lang", "tgt", *common], source),
        "validate": (["fairseq-validate", data_bin, "--path", checkpoint, "--task", "translation",
                      "--max-tokens", "512",
                      *common], None),
        "train-resume": (["fairseq-train", data_bin, "--arch", "transformer", "--save-dir",
                          checkpoint.parent, "--optimizer", "adam", "--lr", "1e-3",
                          "--max-tokens", "512", "--max-update", "25", *common], None),
    }


@pytest.mark.parametrize("command", ["generate", "interactive", "validate", "train-resume"])
def test_every_command_refuses_hostile_checkpoint(command, translation_data, hostile_checkpoint):
    path, marker = hostile_checkpoint
    args, stdin = _refusal_cases(translation_data, path)[command]
    result = run_cli(*args, stdin=stdin, check=False)
    assert result.returncode != 0
    assert "refusing to load" in result.stderr and "posix.system" in result.stderr, result.stderr[-2000:]
    assert TRUST_VARIABLE in result.stderr
    assert not marker.exists(), "the checkpoint's code ran"


def test_library_loaders_refuse_hostile_checkpoint(translation_data, hostile_checkpoint):
    from fairseq import checkpoint_utils
    from fairseq.models.transformer import TransformerModel

    path, marker = hostile_checkpoint
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    with pytest.raises(UnsafeCheckpointError):
        TransformerModel.from_pretrained(str(path.parent), checkpoint_file=path.name,
                                         data_name_or_path=str(translation_data))
    assert not marker.exists()


def test_trusted_opt_in_loads_legacy_checkpoint(translation_data, legacy_checkpoint):
    args, _ = _refusal_cases(translation_data, legacy_checkpoint)["generate"]
    refused = run_cli(*args, check=False)
    assert refused.returncode != 0 and "refusing to load" in refused.stderr
    trusted = run_cli(*args, "--gen-subset", "test", env={TRUST_VARIABLE: "1"})
    assert sum(line.startswith("H-") for line in trusted.stdout.splitlines()) == 40


def test_corrupt_checkpoint_gets_clear_error(transformer_checkpoint, tmp_path):
    from fairseq import checkpoint_utils

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(transformer_checkpoint.read_bytes()[:5000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (truncated, garbage):
        with pytest.raises(CorruptCheckpointError, match=f"{path.name}.*truncated, corrupt or not a fairseq"):
            checkpoint_utils.load_checkpoint_to_cpu(str(path))
    with pytest.raises(FileNotFoundError):
        checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "missing.pt"))


def test_other_callers_keep_torch_defaults(tmp_path):
    """Only fairseq's own calls use the allowlist; everyone else gets torch's behaviour."""
    import argparse

    path = tmp_path / "namespace.pt"
    torch.save({"args": argparse.Namespace(a=1)}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path)


_BROADCAST_WORKER = textwrap.dedent("""
    import argparse, os, sys
    import torch.distributed as dist
    from fairseq.distributed import utils

    class RunsCode:
        def __reduce__(self):
            return os.system, ("touch " + sys.argv[3],)

    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
    group = dist.new_group([0, 1])
    benign = utils.broadcast_object({"cfg": argparse.Namespace(lr=0.1)} if rank == 0 else None, 0, group)
    assert benign["cfg"].lr == 0.1
    if rank == 1:
        try:
            utils.broadcast_object(None, 0, group)
            print("rank 1 loaded", flush=True)
        except Exception as error:
            print("rank 1", type(error).__name__, error, flush=True)
        os._exit(0)  # the ranks are now out of step, as in a real job that refuses a load
    utils.broadcast_object(RunsCode(), 0, group)  # blocks on the follow-up broadcast: killed below
""")


def test_distributed_broadcast_refuses_hostile_object(tmp_path):
    """fairseq's object broadcast unpickles on ranks > 0: benign configs pass, code is refused."""
    import socket

    worker = tmp_path / "worker.py"
    worker.write_text(_BROADCAST_WORKER)
    marker = tmp_path / "code-ran"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    processes = [subprocess.Popen([sys.executable, str(worker), str(rank), str(port), str(marker)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=cli_env()) for rank in (0, 1)]
    try:
        stdout, stderr = processes[1].communicate(timeout=120)
    finally:
        processes[0].kill()
        processes[0].communicate()
    assert processes[1].returncode == 0, stderr[-3000:]
    assert "rank 1 UnsafeCheckpointError" in stdout and "posix.system" in stdout, stdout
    assert not marker.exists()
