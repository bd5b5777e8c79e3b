"""The defaults chosen from the convergence benchmark, pinned; and checkpoints trained before they changed still load
and give the same outputs.

Evidence: bench/bench_convergence.py, README section "Convergence at equal budget". Per task, median of 3 seeds:
- entmax_alpha's alpha learning rate x10 (--entmax-alpha-lr-scale 10) reaches transformer's validation loss in fewer
  updates than the paper's x1 and lets heads choose dense attention early (alpha first falls, as Correia et al. report);
- ReLA-g's gate starts at the authors' small random values (--rela-gate-init glorot), not at 1.
"""

import argparse

import pytest
import torch
from omegaconf import DictConfig, open_dict

from sparse_attn_fairseq.layers.normalizers import EntmaxAlphaNormalizer
from sparse_attn_fairseq.layers.rela_norm import RelaOutputNorm
from tests.models.builders import TinyTask, build, random_batch
from tests.models.conftest import TINY_LM_TRAIN_FLAGS, USER_DIR, run_cli, train_model

OLD_DEFAULTS = {"transformer_entmax": ["--entmax-alpha-lr-scale", "1"],
                "transformer_rela": ["--rela-gate-init", "ones"],
                "transformer_lm_entmax": ["--entmax-alpha-lr-scale", "1"]}
NEW_FLAGS = ("entmax_alpha_lr_scale", "rela_gate_init")


def test_entmax_default_alpha_learning_rate_is_ten_times_the_models():
    model, _ = build("transformer_entmax")
    normalizers = [m for m in model.modules() if isinstance(m, EntmaxAlphaNormalizer)]
    assert len(normalizers) == 3 and all(n.lr_scale == 10.0 and n.init == "random" for n in normalizers)


def test_rela_default_gate_starts_small_and_random():
    model, _ = build("transformer_rela")
    norms = [m for m in model.modules() if isinstance(m, RelaOutputNorm)]
    bound = (3 / 32) ** 0.5  # d = 32
    assert len(norms) == 3 and all(n.variant == "gated" and n.gate_init == "glorot" for n in norms)
    assert all(n.gate_weight.abs().max() <= bound and n.gate_weight.std() > 0 for n in norms)


def _as_before_the_change(checkpoint, old_path):
    """Rewrite a checkpoint as this package wrote it before the new flags existed: no flags, no a_scale buffers."""
    state = torch.load(checkpoint, weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if not k.endswith("a_scale")}
    for key in ("args", "cfg"):
        config = state.get(key)
        model_cfg = config.get("model") if isinstance(config, (dict, DictConfig)) else config
        if isinstance(model_cfg, argparse.Namespace):  # translation models
            for flag in NEW_FLAGS:
                model_cfg.__dict__.pop(flag, None)
        elif isinstance(model_cfg, dict):  # dataclass models (the LM)
            for flag in NEW_FLAGS:
                model_cfg.pop(flag, None)
        elif isinstance(model_cfg, DictConfig):
            with open_dict(model_cfg):
                for flag in NEW_FLAGS:
                    model_cfg.pop(flag, None)
        if model_cfg is not None:
            assert not any(flag in (vars(model_cfg) if isinstance(model_cfg, argparse.Namespace) else model_cfg)
                           for flag in NEW_FLAGS)
    torch.save(state, old_path)


def _outputs(path, lm: bool):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    model = models[0].eval()
    src, lengths, prev = random_batch(TinyTask(vocab_size=len(task.target_dictionary) - 4), bsz=2)
    with torch.no_grad():
        return model(prev)[0] if lm else model(src, lengths, prev)[0]


@pytest.mark.parametrize("arch", ["transformer_entmax", "transformer_rela"])
def test_translation_checkpoint_from_before_the_new_defaults_gives_the_same_outputs(arch, entmax_data, tmp_path):
    train_model(arch, entmax_data, tmp_path, 3, *OLD_DEFAULTS[arch])
    _as_before_the_change(tmp_path / "checkpoint_last.pt", tmp_path / "old.pt")
    assert torch.equal(_outputs(tmp_path / "old.pt", lm=False), _outputs(tmp_path / "checkpoint_last.pt", lm=False))


def test_language_model_checkpoint_from_before_the_new_defaults_gives_the_same_outputs(entmax_data, tmp_path):
    """fairseq fills a dataclass model's missing flags with today's defaults: the a_scale buffer keeps alpha exact."""
    raw = entmax_data.parent / "raw"
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.tgt", "--validpref", raw / "valid.tgt",
            "--destdir", tmp_path / "lm-bin", "--workers", "1")
    run_cli("fairseq-train", tmp_path / "lm-bin", "--user-dir", USER_DIR, "--arch", "transformer_lm_entmax",
            *TINY_LM_TRAIN_FLAGS, "--max-update", "3", "--save-dir", tmp_path, "--lr", "0.05",
            *OLD_DEFAULTS["transformer_lm_entmax"])
    _as_before_the_change(tmp_path / "checkpoint_last.pt", tmp_path / "old.pt")
    old, new = _outputs(tmp_path / "old.pt", lm=True), _outputs(tmp_path / "checkpoint_last.pt", lm=True)
    assert torch.equal(old, new)
