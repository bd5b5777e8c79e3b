"""adagrad_with_grad_clip against torch's Adagrad (no clip) and the clipped update written out by hand."""

import pytest
import torch

from sparse_attn_fairseq.optim.adagrad_with_grad_clip import AdagradWithGradClip
from tests.conftest import run_cli
from tests.tolerances import max_err


def _steps(optimizer_cls, params, grads, **kwargs):
    optimizer = optimizer_cls(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach().clone() for p in params]


def _problem(seed=0):
    torch.manual_seed(seed)
    params = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    grads = [[torch.randn_like(p) * scale for p, scale in zip(params, (0.002, 3.0))] for _ in range(4)]
    return params, grads


def test_without_clip_it_is_torch_adagrad():
    params, grads = _problem()
    ours = _steps(AdagradWithGradClip, [p.clone() for p in params], grads, lr=0.07, weight_decay=0.01)
    torchs = _steps(torch.optim.Adagrad, [p.clone() for p in params], grads, lr=0.07, weight_decay=0.01, eps=1e-10)
    assert max(max_err(a, b) for a, b in zip(ours, torchs)) <= 1e-12


def test_the_step_of_a_tensor_with_a_large_gradient_is_scaled_to_the_clip():
    params, grads = _problem()
    clip, lr = 0.03, 0.07
    ours = _steps(AdagradWithGradClip, [p.clone() for p in params], grads, lr=lr, grad_clip=clip)
    for p, expected in zip(params, ours):
        index = next(i for i, q in enumerate(params) if q is p)
        value, total = p.clone(), torch.zeros_like(p)
        for step_grads in grads:
            g = step_grads[index]
            total += g * g
            scale = min(1.0, clip / (g.norm().item() + 1e-10))  # the paper: the learning rate times clip / ||g||
            value -= lr * scale * g / (total.sqrt() + 1e-10)
        assert max_err(value, expected) <= 1e-12
    assert grads[0][0].norm() < clip < grads[0][1].norm()  # one tensor clipped, one not


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="grad_clip=-1"):
        AdagradWithGradClip([torch.zeros(1, requires_grad=True)], grad_clip=-1)


def test_fairseq_train_rejects_a_negative_clip():
    from tests.conftest import USER_DIR

    result = run_cli("fairseq-train", "--user-dir", USER_DIR, "--task", "dummy_lm", "--arch", "transformer_lm",
                     "--optimizer", "adagrad_with_grad_clip", "--adagrad-clip", "-0.5", "--cpu", "--max-update", "1",
                     "--batch-size", "2", "--tokens-per-sample", "8", "--decoder-layers", "1", check=False)
    assert result.returncode != 0 and "--adagrad-clip=-0.5" in result.stderr
