"""One contract for every (architecture x normalizer x attention type x kernel), generated from the registries.

For each case the normalizer runs in one attention type (the others keep the model's default) with one kernel
forced through ``--attention-kernel``:

* incremental decoding equals the full forward, with a beam reorder (the LMs in float64);
* train mode (no dropout) equals eval mode, on a model reloaded from a checkpoint of the first: the round trip
  reproduces its outputs exactly;
* with softmax everywhere, the model equals stock fairseq holding the same weights.

Tolerances come from tests/tolerances.py.
"""

import pytest
import torch

import sparse_attn_fairseq  # noqa: F401  (registers the architectures)
from sparse_attn_fairseq.kernels import kernels_for, triton_entmax
from sparse_attn_fairseq.options import ENTMAX, RELA, SPAN
from tests.models.builders import (
    NO_DROPOUT, TINY_LM_FLAGS, TINY_MT_FLAGS, build, diff_to_stock_transformer, incremental_vs_full, lm_incremental_vs_full,
    random_batch,
)
from tests.tolerances import INCREMENTAL, INCREMENTAL_LOGPROBS, STOCK

ALPHA_FLAGS = ("--entmax-alpha-init", "random")
SPAN_FLAGS = ("--adaptive-span-max", "8", "--adaptive-span-init", "0.5", *ALPHA_FLAGS)
FAMILIES = {  # translation arch, language-model arch, what they offer, extra flags
    "entmax": ("transformer_entmax", "transformer_lm_entmax", ENTMAX, ALPHA_FLAGS),
    "rela": ("transformer_rela", "transformer_lm_rela", RELA, ()),
    "adaptive_span": ("transformer_adaptive_span", "transformer_lm_adaptive_span", SPAN, SPAN_FLAGS),
}
MT_TYPES = ("encoder", "decoder", "encoder_decoder")
# Kernels run by triton's interpreter (no GPU: ~100x slower) take the contract for their general-alpha and their
# closed-form code (the oracle suite checks every normalizer's numbers): the other normalizers share both.
INTERPRETED = {triton_entmax.NAME} if triton_entmax.INTERPRET else set()
INTERPRETED_NORMALIZERS = ("entmax_alpha", "sparsemax")


def _cases(language_model: bool):
    cases = []
    for family, (mt_arch, lm_arch, method, extra) in FAMILIES.items():
        for normalizer in method.normalizers:
            for attention_type in (("decoder",) if language_model else MT_TYPES):
                for kernel in kernels_for(normalizer):
                    if kernel.name in INTERPRETED and normalizer not in INTERPRETED_NORMALIZERS:
                        continue
                    arch = lm_arch if language_model else mt_arch
                    cases.append(pytest.param(arch, normalizer, attention_type, kernel.name, extra,
                                              id=f"{arch}-{attention_type}-{normalizer}-{kernel.name}"))
    return cases


def _flags(normalizer, attention_type, kernel, extra):
    flag = f"--{attention_type.replace('_', '-')}-attention-normalizer"
    return [flag, normalizer, "--attention-kernel", kernel, *extra, *NO_DROPOUT]


def _round_trip(arch, flags, tmp_path, base, model, task):
    """A second model loaded from a checkpoint of ``model``: its outputs, in eval and train mode, against the
    original's in eval mode."""
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict()}, path)
    loaded, _ = build(arch, *flags, task=task, seed=5, base=base)
    loaded.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    inputs = _inputs(task, base)
    with torch.no_grad():
        original = model.eval()(*inputs)[0]
        reloaded = loaded.eval()(*inputs)[0]
    train = loaded.train()(*inputs)[0]
    return (original - reloaded).abs().max().item(), (train - reloaded).abs().max().item()


def _inputs(task, base):
    src, lengths, prev = random_batch(task)
    return (prev,) if base is TINY_LM_FLAGS else (src, lengths, prev)


@pytest.mark.parametrize("arch,normalizer,attention_type,kernel,extra", _cases(language_model=False))
def test_translation_contract(arch, normalizer, attention_type, kernel, extra, tmp_path):
    flags = _flags(normalizer, attention_type, kernel, extra)
    model, task = build(arch, *flags)
    assert incremental_vs_full(model.eval(), task)[0] <= INCREMENTAL_LOGPROBS
    reload_diff, train_diff = _round_trip(arch, flags, tmp_path, TINY_MT_FLAGS, model, task)
    assert reload_diff == 0.0 and train_diff <= STOCK


@pytest.mark.parametrize("arch,normalizer,attention_type,kernel,extra", _cases(language_model=True))
def test_language_model_contract(arch, normalizer, attention_type, kernel, extra, tmp_path):
    flags = _flags(normalizer, attention_type, kernel, extra)
    model, task = build(arch, *flags, "--decoder-layers", "2", base=TINY_LM_FLAGS)
    if kernel == "reference":  # float64: the reference takes it, and the comparison is exact to 1e-5
        assert lm_incremental_vs_full(model.double().eval(), task) <= INCREMENTAL
        model = model.float()
    else:  # float32-only kernels
        assert lm_incremental_vs_full(model.eval(), task) <= INCREMENTAL_LOGPROBS
    reload_diff, train_diff = _round_trip(arch, [*flags, "--decoder-layers", "2"], tmp_path, TINY_LM_FLAGS, model,
                                          task)
    assert reload_diff == 0.0 and train_diff <= STOCK


@pytest.mark.parametrize("arch", ["transformer_entmax", "transformer_rela"])
@pytest.mark.parametrize("train", [False, True])
def test_softmax_everywhere_equals_stock_fairseq(arch, train):
    flags = [x for t in MT_TYPES for x in (f"--{t.replace('_', '-')}-attention-normalizer", "softmax")]
    ours, task = build(arch, *flags, *NO_DROPOUT)
    assert diff_to_stock_transformer(ours, task, train) <= STOCK


@pytest.mark.parametrize("arch", ["transformer_lm_entmax", "transformer_lm_rela"])
@pytest.mark.parametrize("train", [False, True])
def test_softmax_language_model_equals_stock_transformer_lm(arch, train):
    ours, task = build(arch, "--decoder-attention-normalizer", "softmax", *NO_DROPOUT, base=TINY_LM_FLAGS)
    stock, _ = build("transformer_lm", *NO_DROPOUT, task=task, seed=1, base=TINY_LM_FLAGS)
    stock.load_state_dict(ours.state_dict(), strict=True)
    (prev,) = _inputs(task, TINY_LM_FLAGS)
    ours.train(train)
    stock.train(train)
    assert (ours(prev)[0] - stock(prev)[0]).abs().max().item() <= STOCK
