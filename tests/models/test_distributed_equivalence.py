"""fairseq's distributed training as the scale-out engine: 2 CPU processes (torchrun, gloo) with legacy_ddp and with
the default pytorch_ddp reach the same parameters as one process accumulating the same batches (--update-freq 2),
for every architecture; the streaming LM's 2 x B streams equal one process with 2B streams."""

import sys
from pathlib import Path

import pytest
import torch

from sparse_attn_fairseq_compat.bettertransformer import _BT_PARAMETERS
from tests.conftest import run_cli
from tests.models.builders import NO_DROPOUT, TINY_MT_FLAGS, USER_DIR
from tests.tolerances import DISTRIBUTED

UPDATES = 4
# Plain SGD: Adam and Adagrad divide by the gradient's own size, which turns the rounding noise of gradients that
# are zero in exact arithmetic (a key bias under softmax) into full-size steps that differ between runs.
SGD = ["--optimizer", "sgd", "--lr", "0.1"]
MT_ARCHS = {
    "transformer_entmax": [],
    "transformer_rela": [],
    "transformer_adaptive_span": ["--adaptive-span-max", "16", "--adaptive-span-ramp", "4", "--adaptive-span-init",
                                  "0.5"],
}


def final_parameters(save_dir: Path) -> dict:
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(save_dir / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == UPDATES
    return state["model"]


def compared(name: str) -> bool:
    """Trained state: not fairseq's uninitialised _float_tensor placeholders, nor the encoder layers' unused copies
    of their weights for torch's fused path (rebuilt from the weights whenever a checkpoint is loaded)."""
    return not name.endswith("_float_tensor") and not (".layers." in name and name.rsplit(".", 1)[-1] in
                                                        _BT_PARAMETERS and name.startswith("encoder."))


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a
               if a[k].is_floating_point() and compared(k))


def train(data, save_dir, flags, processes=1, env=None):
    common = [data, "--user-dir", USER_DIR, *flags, "--max-update", UPDATES, "--save-dir", save_dir,
              "--disable-validation", "--no-epoch-checkpoints"]
    if processes == 1:
        return run_cli("fairseq-train", *common, env=env)
    return run_cli(Path(sys.executable).parent / "torchrun", "--nproc_per_node", processes,
                   Path(sys.executable).parent / "fairseq-train", *common, "--distributed-backend", "gloo",
                   env={"OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.parametrize("arch", list(MT_ARCHS))
def test_two_processes_equal_one_with_update_freq_2(entmax_data, tmp_path, arch):
    flags = ["--arch", arch, *TINY_MT_FLAGS, *NO_DROPOUT, *SGD, *MT_ARCHS[arch]]
    train(entmax_data, tmp_path / "single", [*flags, "--update-freq", "2"])
    single = final_parameters(tmp_path / "single")
    for backend in ("legacy_ddp", "pytorch_ddp"):
        train(entmax_data, tmp_path / backend, [*flags, "--ddp-backend", backend], processes=2)
        assert largest_difference(final_parameters(tmp_path / backend), single) <= DISTRIBUTED, backend


def test_pytorch_ddp_on_cpu_needs_the_fix(entmax_data, tmp_path):
    flags = ["--arch", "transformer_entmax", *TINY_MT_FLAGS, "--ddp-backend", "pytorch_ddp"]
    result = run_cli(Path(sys.executable).parent / "torchrun", "--nproc_per_node", 2,
                     Path(sys.executable).parent / "fairseq-train", entmax_data, "--user-dir", USER_DIR, *flags,
                     "--max-update", 1, "--save-dir", tmp_path, "--distributed-backend", "gloo",
                     env={"OMP_NUM_THREADS": "1", "SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE": "cpu_ddp"}, check=False)
    assert result.returncode != 0 and "device_ids" in result.stdout + result.stderr  # the upstream failure


def test_streaming_lm_on_two_processes_equals_one_with_all_streams(tmp_path):
    raw, data = tmp_path / "raw", tmp_path / "bin"
    run_cli("python", "-m", "sparse_attn_fairseq.data.synthetic_stream", raw, "--tokens", "4000", "--period", "12")
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.txt", "--validpref", raw / "valid.txt",
            "--destdir", data,
            "--workers", "1")
    flags = ["--task", "truncated_bptt_lm", "--arch", "transformer_lm_adaptive_span", "--decoder-layers", "1",
             "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2",
             "--adaptive-span-max", "32", "--adaptive-span-init", "0.5", "--tokens-per-sample", "8", *SGD, "--cpu",
             "--num-workers", "0", "--seed", "1", *NO_DROPOUT]
    train(data, tmp_path / "single", [*flags, "--batch-size", "8"])
    single = final_parameters(tmp_path / "single")
    for backend in ("legacy_ddp", "pytorch_ddp"):
        log = train(data, tmp_path / backend, [*flags, "--batch-size", "4", "--ddp-backend", backend], processes=2)
        assert "4 streams per rank x 2 ranks" in log.stdout + log.stderr
        assert largest_difference(final_parameters(tmp_path / backend), single) <= DISTRIBUTED, backend


def test_two_process_training_resumes_exactly(entmax_data, tmp_path):
    """Stopped after 2 updates and resumed on both ranks: the same parameters as running 4 updates straight."""
    flags = ["--arch", "transformer_entmax", *TINY_MT_FLAGS, *NO_DROPOUT, *SGD, "--ddp-backend", "pytorch_ddp",
             "--save-interval-updates", "2"]
    train(entmax_data, tmp_path / "straight", flags, processes=2)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint_last.pt").write_bytes(next((tmp_path / "straight").glob("checkpoint_*_2.pt")).read_bytes())
    log = train(entmax_data, resumed, flags, processes=2)
    assert "(epoch 1 @ 2 updates)" in log.stdout + log.stderr
    assert largest_difference(final_parameters(resumed), final_parameters(tmp_path / "straight")) <= DISTRIBUTED
