"""The normalizer registry and its modules."""

import pytest
import torch
from torch import nn

from sparse_attn_fairseq.functional.entmax import entmax_alpha
from sparse_attn_fairseq.layers import normalizers as reg
from tests.tolerances import ATOL, CLOSED_FORM, max_err

NAMES = ("entmax15", "entmax_alpha", "entmax_fixed", "rela", "softmax", "sparsemax")


def test_names_and_unknown():
    assert reg.normalizer_names() == NAMES
    with pytest.raises(ValueError, match="valid: entmax15, entmax_alpha"):
        reg.build_normalizer("sparsmax", 4)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        reg.register_normalizer("softmax", lambda s, m, a: s)(nn.Module)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_normalizer_shape_dtype_mask(name, dtype):
    module = reg.build_normalizer(name, 3).to(dtype)
    scores = torch.randn(2, 3, 4, 6).to(dtype).requires_grad_()
    mask = torch.zeros(2, 1, 1, 6, dtype=torch.bool)
    mask[..., -2:] = True  # key padding
    out = module(scores, mask)
    assert out.shape == scores.shape and out.dtype == dtype
    assert torch.equal(out[..., -2:], torch.zeros_like(out[..., -2:]))
    out.float().sum().backward()
    assert not scores.grad.isnan().any()
    assert "num_heads=3" in repr(module)
    with pytest.raises(ValueError, match="expects scores"):
        module(torch.randn(2, 4, 4, 6).to(dtype))


def test_entmax_alpha_parametrisation():
    module = reg.build_normalizer("entmax_alpha", 4, init=1.3)
    assert max_err(module.alpha(), torch.full((4,), 1.3)) <= CLOSED_FORM
    with torch.no_grad():
        module.a.copy_(torch.tensor([-50.0, 50.0, 0.0, 1.0]))
    alpha = module.alpha()
    assert alpha[0] == 1.01 and alpha[1] == 2.0 and max_err(alpha[2:3], torch.tensor([1.5])) <= 1e-7
    scores = torch.randn(2, 4, 3, 8)
    expected = entmax_alpha(scores, alpha.view(4, 1, 1).detach())
    assert max_err(module(scores), expected) <= ATOL[torch.float32]
    module(scores).pow(2).sum().backward()
    assert module.a.grad[2] != 0 and module.a.grad[0] == 0  # clamped heads get no gradient


def test_entmax_alpha_random_init_and_limits():
    torch.manual_seed(0)
    module = reg.build_normalizer("entmax_alpha", 64, init="random")
    alpha = module.alpha()
    assert alpha.min() >= 1.01 and alpha.max() <= 2.0 and alpha.std() > 0.05
    for limit in (1.01, 2.0):
        at_limit = reg.build_normalizer("entmax_alpha", 2, init=limit)
        out = at_limit(torch.randn(1, 2, 3, 5))
        assert max_err(out.sum(-1), torch.ones(1, 2, 3)) <= ATOL[torch.float32]


def test_option_validation_collects_problems():
    with pytest.raises(ValueError, match="clamp=.*init=3"):
        reg.build_normalizer("entmax_alpha", 2, init=3, clamp=(0.5, 1.0))
    with pytest.raises(ValueError, match="no option"):
        reg.build_normalizer("softmax", 2, alpha=1.5)
    with pytest.raises(ValueError, match="alpha=2.5"):
        reg.build_normalizer("entmax_fixed", 2, alpha=2.5)
    with pytest.raises(ValueError, match="num_heads"):
        reg.build_normalizer("softmax", 0)
    fixed = reg.build_normalizer("entmax_fixed", 2, alpha=1.25)
    assert torch.equal(fixed.alpha(), torch.full((2,), 1.25)) and "alpha=1.25" in repr(fixed)


def test_entmax_alpha_lr_scale_moves_alpha_faster_under_adam():
    """alpha = 1 + sigmoid(s * a): the same alpha at start, and Adam's first step moves the logit s times further."""
    steps = {}
    for scale in (1.0, 10.0):
        module = reg.build_normalizer("entmax_alpha", 2, init=1.3, lr_scale=scale)
        assert max_err(module.alpha(), torch.full((2,), 1.3)) <= CLOSED_FORM and f"lr_scale={scale}" in repr(module)
        logit_before = (module.alpha() - 1).logit().detach()
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
        module(torch.randn(2, 2, 3, 8, generator=torch.Generator().manual_seed(0))).pow(3).sum().backward()
        optimizer.step()
        steps[scale] = ((module.alpha() - 1).logit().detach() - logit_before).abs()
    assert max_err(steps[10.0], 10 * steps[1.0]) <= 1e-4
    torch.manual_seed(0)
    random = reg.build_normalizer("entmax_alpha", 256, init="random", lr_scale=4.0)
    assert 0.8 < (random.a * 4.0).std() < 1.2  # the paper's N(0, 1) logits whatever the scale
    with pytest.raises(ValueError, match="lr_scale=0"):
        reg.build_normalizer("entmax_alpha", 2, lr_scale=0)


def test_entmax_alpha_loads_a_trained_under_another_scale_with_alpha_unchanged():
    """Checkpoints store the scale `a` was trained under; those from before it existed were trained under 1."""
    old = reg.build_normalizer("entmax_alpha", 3, init="random", lr_scale=1.0)
    state = {k: v for k, v in old.state_dict().items() if k != "a_scale"}  # a checkpoint from before the scale
    for scale in (1.0, 10.0, 0.5):
        new = reg.build_normalizer("entmax_alpha", 3, lr_scale=scale)
        new.load_state_dict(dict(state))
        assert max_err(new.alpha(), old.alpha()) <= CLOSED_FORM and float(new.a_scale) == scale
        again = reg.build_normalizer("entmax_alpha", 3, lr_scale=2.0)
        again.load_state_dict(new.state_dict())
        assert max_err(again.alpha(), old.alpha()) <= CLOSED_FORM


_NEW_RECORD = """


def tempered_softmax(scores, mask, alpha):
    return softmax_masked(scores / 2, mask)


@register_normalizer("tempered_softmax", lambda scores, mask, alpha: tempered_softmax(scores, mask, alpha))
class TemperedSoftmaxNormalizer(_Normalizer):
    \"\"\"softmax at temperature 2.\"\"\"
"""

_USE_IT = """
import torch
import sparse_attn_fairseq
from sparse_attn_fairseq import options
from sparse_attn_fairseq.kernels import select_kernel
from tests.models.builders import build, random_batch
assert sparse_attn_fairseq.__file__.startswith(sys.argv[1]), sparse_attn_fairseq.__file__
assert "tempered_softmax" in options.ENTMAX_NORMALIZERS and "tempered_softmax" in options.SPAN.normalizers
model, task = build("transformer_entmax", "--encoder-attention-normalizer", "tempered_softmax")
src, lengths, prev = random_batch(task)
assert torch.isfinite(model(src, lengths, prev)[0]).all()
assert select_kernel("tempered_softmax", torch.zeros(1)).name == "reference"
print("registered, offered, built and run")
"""


def test_a_new_normalizer_is_one_function_plus_one_record(tmp_path):
    """Append one function and one record to a copy of the package: the CLI offers it, models build with it, the
    kernel registry runs it."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    package = tmp_path / "sparse_attn_fairseq"
    shutil.copytree(REPO / "sparse_attn_fairseq", package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(package / "layers" / "normalizers.py", "a") as source:
        source.write(_NEW_RECORD)
    env = cli_env({"PYTHONPATH": f"{tmp_path}:{REPO}"})
    result = subprocess.run([sys.executable, "-c", "import sys\n" + _USE_IT, str(tmp_path)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered, offered, built and run" in result.stdout


def test_inference_alpha_cache_follows_every_change_of_the_parameter():
    module = reg.build_normalizer("entmax_alpha", 2, init=1.3)
    scores = torch.randn(1, 2, 3, 7)
    with torch.no_grad():
        before = module(scores)
        module.a.data.add_(2.0)  # as fairseq's fp16 optimizer writes: no version bump
        after = module(scores)
        expected = entmax_alpha(scores, module.alpha().view(2, 1, 1))
    assert max_err(after, expected) <= ATOL[torch.float32] and max_err(before, after) > 1e-3
