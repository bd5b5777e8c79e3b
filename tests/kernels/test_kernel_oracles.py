"""Every (kernel, normalizer) pair of the kernel registry against the same oracles: float64 references, the `entmax`
package, masks and fully masked rows, rows of 1 to 4096 keys, ties and logits up to 1e4, fp16/bf16 inputs, and the
gradients for the scores and for alpha (float64 gradcheck where the kernel takes float64; otherwise against the
gradcheck-verified reference and a float32 central difference). A new kernel or normalizer is picked up from the
registries: no new test file."""

import pytest
import torch

import entmax as entmax_pkg  # noqa: F401  a test dependency: missing, these tests must fail, not vanish
from sparse_attn_fairseq.functional.reference import (
    entmax15_reference,
    entmax_bisect_reference,
    softmax_reference,
    sparsemax_reference,
)
from sparse_attn_fairseq.kernels import kernel_names, kernels_for, triton_entmax
from sparse_attn_fairseq.layers.normalizers import normalizer_names
from tests.tolerances import ATOL, GRADCHECK, KERNEL_GRAD, max_err

ALPHAS = (1.01, 1.1, 1.3, 1.5, 1.7, 1.9, 2.0)
# Kernels run by triton's interpreter (about 50-100 us per tensor operation): float64 gradcheck in fast mode (a random
# projection of the Jacobian), the full Jacobian on smaller rows in tests/kernels/test_triton_kernels.py.
INTERPRETED = {triton_entmax.NAME} if triton_entmax.INTERPRET else set()
PAIRS = [(k.name, n) for n in normalizer_names() for k in kernels_for(n)]


def kernel_pairs(*normalizers):
    return [pytest.param(k, n, id=f"{k}-{n}") for k, n in PAIRS if not normalizers or n in normalizers]


def run(kernel_name, normalizer, scores, mask=None, alpha=None):
    kernel = next(k for k in kernels_for(normalizer) if k.name == kernel_name)
    reason = kernel.refusal(normalizer, scores.device.type, scores.dtype, frozenset(), forced=True)
    if reason and "not built" in reason:
        pytest.fail(f"{kernel_name} is unavailable in the test environment: {reason}")
    if reason:
        pytest.skip(f"{kernel_name}: {reason}")
    return kernel.fn(normalizer, scores, mask, alpha)


ORACLES = {  # independent float64 computations (sort-based, bisection, closed forms), one per normalizer
    "softmax": lambda x, mask, alpha: softmax_reference(x, mask),
    "sparsemax": lambda x, mask, alpha: sparsemax_reference(x, mask),
    "entmax15": lambda x, mask, alpha: entmax15_reference(x, mask),
    "entmax_fixed": lambda x, mask, alpha: entmax_bisect_reference(x, alpha, mask),
    "entmax_alpha": lambda x, mask, alpha: entmax_bisect_reference(x, alpha.double(), mask),
    "rela": lambda x, mask, alpha: torch.relu(x if mask is None else x.masked_fill(mask, 0.0)),
}


def oracle(normalizer, scores, mask=None, alpha=None):
    """float64 expected weights (alpha: a float or a per-row tensor)."""
    if normalizer not in ORACLES:
        pytest.fail(f"normalizer {normalizer!r} has no independent oracle: add one to ORACLES")
    return ORACLES[normalizer](scores.double(), mask, alpha)


def alpha_for(normalizer, shape):
    """Per-row alphas spanning 1.01..2 for entmax_alpha, one fixed value for entmax_fixed, else None."""
    if normalizer == "entmax_alpha":
        values = torch.tensor(ALPHAS, dtype=torch.float64)
        return values[torch.arange(shape[0]) % len(ALPHAS)].view(-1, *([1] * (len(shape) - 1)))
    return 1.3 if normalizer == "entmax_fixed" else None


def randn(*shape, scale=3.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def test_every_registered_kernel_is_available_here():
    """The test environment builds every kernel (make setup): a missing one must fail, not skip."""
    assert set(kernel_names()) >= {"reference", "fused_cpu"}
    for name in kernel_names():
        kernel = next(k for n in normalizer_names() for k in kernels_for(n) if k.name == name)
        assert kernel.unavailable() is None, f"{name}: {kernel.unavailable()}"


@pytest.mark.parametrize("kernel,normalizer", kernel_pairs())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_oracle(kernel, normalizer, dtype):
    x = randn(len(ALPHAS), 5, 37, dtype=dtype)
    alpha = alpha_for(normalizer, x.shape)
    got = run(kernel, normalizer, x, alpha=alpha if not isinstance(alpha, torch.Tensor) else alpha.to(dtype))
    assert max_err(got, oracle(normalizer, x, alpha=alpha)) <= ATOL[dtype]


@pytest.mark.parametrize("kernel,normalizer", kernel_pairs("entmax_fixed"))
@pytest.mark.parametrize("alpha", ALPHAS)
def test_every_fixed_alpha_matches_the_package(kernel, normalizer, alpha):
    x = randn(6, 61)
    expected = entmax_pkg.entmax_bisect(x.double(), alpha, n_iter=60)
    assert max_err(run(kernel, normalizer, x, alpha=alpha), expected) <= ATOL[torch.float32]


@pytest.mark.parametrize("kernel,normalizer", kernel_pairs("sparsemax", "entmax15"))
def test_closed_forms_match_the_package(kernel, normalizer):
    x = randn(16, 300, scale=2.0)
    expected = (entmax_pkg.sparsemax if normalizer == "sparsemax" else entmax_pkg.entmax15)(x.double(), dim=-1)
    assert max_err(run(kernel, normalizer, x), expected) <= ATOL[torch.float32]


@pytest.mark.parametrize("kernel,normalizer", kernel_pairs())
def test_masks_and_fully_masked_rows(kernel, normalizer):
    x = randn(len(ALPHAS), 4, 9)
    mask = torch.zeros(x.shape, dtype=torch.bool)
    mask[:, :, -3:] = True  # padding
    mask[:, 1] = True  # a fully masked row per batch
    alpha = alpha_for(normalizer, x.shape)
    got = run(kernel, normalizer, x.requires_grad_(), mask, alpha)
    assert max_err(got, oracle(normalizer, x.detach(), mask, alpha)) <= ATOL[torch.float32]
    assert torch.equal(got[mask], torch.zeros_like(got[mask]))
    got.sum().backward()
    assert torch.equal(x.grad[:, 1], torch.zeros_like(x.grad[:, 1])) and not x.grad.isnan().any()
    # additive masks: -inf and large finite negatives count as masked
    for fill in (float("-inf"), -1e9, torch.finfo(torch.float32).min):
        got = run(kernel, normalizer, x.detach().masked_fill(mask, fill), None, alpha)
        assert max_err(got, oracle(normalizer, x.detach(), mask, alpha)) <= ATOL[torch.float32]


@pytest.mark.parametrize("kernel,normalizer", kernel_pairs())
@pytest.mark.parametrize("length", [1, 2, 7, 8, 9, 255, 1024, 4096])
def test_row_lengths(kernel, normalizer, length):
    x = randn(len(ALPHAS), 2, length, seed=length)
    alpha = alpha_for(normalizer, x.shape)
    got = run(kernel, normalizer, x, alpha=alpha)
    assert max_err(got, oracle(normalizer, x, alpha=alpha)) <= ATOL[torch.float32]


@pytest.mark.parametrize("kernel,normalizer", kernel_pairs())
def test_ties_and_huge_logits(kernel, normalizer):
    tied = torch.zeros(len(ALPHAS), 3, 16)
    tied[:, 1, :4] = 1.0  # four tied maxima
    tied[:, 2] = torch.tensor([5.0, 5.0, 4.0, 4.0] * 4)
    huge = randn(len(ALPHAS), 3, 33, scale=1e4, seed=3)
    for x in (tied, huge, huge + 1e4):
        alpha = alpha_for(normalizer, x.shape)
        got = run(kernel, normalizer, x, alpha=alpha)
        assert max_err(got, oracle(normalizer, x, alpha=alpha)) <= ATOL[torch.float32]


@pytest.mark.parametrize("kernel,normalizer", kernel_pairs())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(kernel, normalizer, dtype):
    x = randn(len(ALPHAS), 3, 40).to(dtype)
    alpha = alpha_for(normalizer, x.shape)
    got = run(kernel, normalizer, x.requires_grad_(), alpha=alpha)
    assert got.dtype == dtype
    assert max_err(got, oracle(normalizer, x.detach(), alpha=alpha)) <= ATOL[dtype]
    got.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def _loss_weights(shape, seed=7):
    return randn(*shape, scale=1.0, seed=seed, dtype=torch.float64)


@pytest.mark.parametrize("kernel,normalizer", kernel_pairs())
def test_gradients_for_scores_and_alpha(kernel, normalizer):
    x64 = randn(len(ALPHAS), 3, 11, seed=5, dtype=torch.float64)
    alpha64 = alpha_for(normalizer, x64.shape)
    learned = isinstance(alpha64, torch.Tensor)
    if learned:  # strictly inside (1, 2] and away from the clamp, where alpha's derivative exists
        alpha64 = (alpha64.clamp(1.05, 1.95)).requires_grad_()
    w = _loss_weights(x64.shape)
    kernel_obj = next(k for k in kernels_for(normalizer) if k.name == kernel)
    if torch.float64 in kernel_obj.dtypes:
        inputs = (x64.clone().requires_grad_(),) + ((alpha64,) if learned else ())
        fn = (lambda s, a: (run(kernel, normalizer, s, alpha=a) * w).sum()) if learned else \
            (lambda s: (run(kernel, normalizer, s, alpha=alpha64) * w).sum())
        assert torch.autograd.gradcheck(fn, inputs, **GRADCHECK, fast_mode=kernel in INTERPRETED)
        return
    # float32-only kernels: the reference's gradients (gradchecked above) and a float32 central difference
    x32 = x64.float().requires_grad_()
    alpha32 = alpha64.detach().float().requires_grad_() if learned else alpha64
    (run(kernel, normalizer, x32, alpha=alpha32) * w.float()).sum().backward()
    expected = next(k for k in kernels_for(normalizer) if k.name == "reference")
    x_ref = x64.clone().requires_grad_()
    alpha_ref = alpha64.detach().clone().requires_grad_() if learned else alpha64
    (expected.fn(normalizer, x_ref, None, alpha_ref) * w).sum().backward()
    assert max_err(x32.grad, x_ref.grad) <= KERNEL_GRAD * max(1.0, x_ref.grad.abs().max().item())
    if learned:
        assert max_err(alpha32.grad, alpha_ref.grad) <= KERNEL_GRAD * max(1.0, alpha_ref.grad.abs().max().item())
    direction = randn(*x64.shape, scale=1.0, seed=9)
    eps = 1e-3
    loss = lambda s: (run(kernel, normalizer, s, alpha=alpha32.detach() if learned else alpha32) * w.float()).sum()
    numeric = (loss(x32.detach() + eps * direction) - loss(x32.detach() - eps * direction)) / (2 * eps)
    analytic = (x32.grad * direction).sum()
    assert abs(numeric.item() - analytic.item()) <= 1e-2 * max(1.0, abs(analytic.item()))
