"""The Triton kernels beyond the shared oracle suite (test_kernel_oracles.py runs them there too): Newton steps on
the worst rows, long rows looped over chunks, masks and alphas read through strides, alpha = 1 and invalid alphas,
the full float64 Jacobian, the fallback when a kernel fails to compile, the registry's choice on CUDA.

Without a GPU they run under triton's interpreter on CPU tensors (tests/conftest.py), a few programs at a time."""

import warnings

import pytest
import torch

from sparse_attn_fairseq.functional.entmax import softmax_masked
from sparse_attn_fairseq.functional.reference import entmax_bisect_reference, sparsemax_reference
from sparse_attn_fairseq.kernels import AUTO, get_kernel, registry, triton_entmax
from sparse_attn_fairseq.kernels.triton_entmax import ENTMAX15, GENERAL, MAX_ITER, SPARSEMAX
from sparse_attn_fairseq.layers.normalizers import build_normalizer
from tests.tolerances import ATOL, GRADCHECK, max_err

pytestmark = pytest.mark.skipif(not triton_entmax.INTERPRET and not torch.cuda.is_available(),
                                reason="needs a GPU or triton's interpreter (tests/conftest.py sets it)")
DEVICE = "cpu" if triton_entmax.INTERPRET else "cuda"
WORST_ALPHAS = (1.001, 1.01, 1.1, 1.5, 1.9, 2.0)
# The most Newton steps a tile took on the rows below (measured with this test: 4 in float32, 5 in float64, each
# followed by the final evaluation); the cap (MAX_ITER) is far above, so it never decides a result.
MOST_STEPS = {torch.float32: 4, torch.float64: 5}


def _rows(kind: str, n: int, count: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(count, n, generator=gen, dtype=torch.float64) * 3
    if kind == "huge":  # logits up to 1e4
        return torch.randn(count, n, generator=gen, dtype=torch.float64) * 1e4
    if kind == "ties":  # a quarter of the keys tied at the maximum
        x = torch.zeros(count, n, dtype=torch.float64)
        x[:, : max(1, n // 4)] = 1.0
        return x
    if kind == "uniform":  # many keys close to the maximum
        return torch.rand(count, n, generator=gen, dtype=torch.float64) * 10
    if kind == "two_level":  # a few keys far above a flat crowd
        x = torch.randn(count, n, generator=gen, dtype=torch.float64) * 0.01
        x[:, :3] += 5
        return x
    raise ValueError(kind)


def _alphas(count: int, dtype) -> torch.Tensor:
    return torch.tensor(WORST_ALPHAS, dtype=dtype).repeat(count // len(WORST_ALPHAS) + 1)[:count].view(-1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 64, 1024, 4096, 16384])
def test_newton_steps_on_the_worst_rows(n, dtype):
    """alpha from 1.001 to 2, ties, logits up to 1e4, rows of 1 to 16384 keys (the last ones chunked): every tile
    converges in at most MOST_STEPS Newton steps, well below the cap, to the float64 bisection's weights."""
    kinds = ("normal", "huge", "ties", "uniform", "two_level") if n <= 4096 else ("normal", "huge", "ties")
    x = torch.cat([_rows(kind, n, len(WORST_ALPHAS), seed=i) for i, kind in enumerate(kinds)])
    alpha = _alphas(x.shape[0], torch.float64)
    steps = torch.zeros(x.shape[0], dtype=torch.int32, device=DEVICE)
    got = triton_entmax._forward(x.to(dtype).to(DEVICE), alpha.to(dtype).to(DEVICE), None, GENERAL, steps)
    assert int(steps.max()) <= MOST_STEPS[dtype] < MAX_ITER[dtype], steps.tolist()
    assert max_err(got.cpu(), entmax_bisect_reference(x.to(dtype).double(), alpha)) <= ATOL[dtype]


def _chunked(block: int) -> dict:
    return {"BLOCK": block, "ROWS": 1, "num_warps": 1, "maxnreg": 255, "chunked": True}


def test_long_rows_loop_over_chunks():
    """The chunked kernels (rows longer than a tile; forced here with chunks of 16 keys) equal the held-in-registers
    ones, forward and backward, with masks, fully masked rows and alphas including 1 (softmax)."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(6, 100, generator=gen) * 3).to(DEVICE)
    alpha = torch.tensor([1.0, 1.001, 1.3, 1.5, 1.8, 2.0]).view(6, 1).to(DEVICE)
    mask = torch.zeros(6, 100, dtype=torch.bool, device=DEVICE)
    mask[:, 70:] = True
    mask[4] = True
    for mode, a in ((GENERAL, alpha), (SPARSEMAX, None), (ENTMAX15, None)):
        held = triton_entmax._forward(x, a, mask, mode)
        chunked = triton_entmax._forward(x, a, mask, mode, config=_chunked(16))
        assert max_err(chunked, held) <= ATOL[torch.float32]
        assert torch.equal(chunked[4], torch.zeros_like(chunked[4])) and torch.equal(chunked[mask], held[mask])
        grad = torch.randn(6, 100, generator=gen).to(DEVICE)
        dx_held, da_held = triton_entmax._backward(grad, held, a, mode, a is not None)
        dx, da = triton_entmax._backward(grad, held, a, mode, a is not None, config=_chunked(16))
        assert max_err(dx, dx_held) <= ATOL[torch.float32]
        if a is not None:
            assert max_err(da, da_held) <= ATOL[torch.float32] * max(1.0, da_held.abs().max().item())


def test_masks_and_alphas_are_read_through_their_strides():
    """A key padding mask (bsz, 1, 1, n), a causal (T, n) mask, per-head alphas (H, 1, 1), 5-dim scores and a mask
    whose strides do not chain: the same weights as the reference kernel, without expanding them."""
    gen = torch.Generator().manual_seed(2)
    scores = (torch.randn(2, 3, 4, 9, generator=gen) * 2).to(DEVICE)
    alpha = torch.tensor([1.2, 1.5, 1.9]).view(3, 1, 1).to(DEVICE)
    padding = torch.zeros(2, 1, 1, 9, dtype=torch.bool, device=DEVICE)
    padding[1, ..., 5:] = True
    causal = torch.ones(4, 9, dtype=torch.bool, device=DEVICE).triu(6)
    reference = get_kernel("reference").fn
    for mask in (padding, causal, padding | causal):
        got = triton_entmax.triton_entmax(scores, mask, alpha)
        assert max_err(got, reference("entmax_alpha", scores, mask, alpha)) <= ATOL[torch.float32]
    five = (torch.randn(2, 2, 3, 2, 7, generator=gen) * 2).to(DEVICE)
    alpha5 = torch.tensor([1.1, 1.6]).view(2, 1, 1, 1, 1).to(DEVICE)
    mask5 = torch.rand(2, 3, 2, 2, 7, generator=gen).to(DEVICE).transpose(1, 2) > 0.7  # strides that do not chain
    got = triton_entmax.triton_entmax(five, mask5, alpha5)
    assert max_err(got, reference("entmax_alpha", five, mask5, alpha5)) <= ATOL[torch.float32]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy, on NaN
def test_alpha_one_is_softmax_and_an_invalid_alpha_gives_nan_rows():
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 30, generator=gen) * 3).to(DEVICE)
    got = triton_entmax.triton_entmax(x, None, torch.ones(4, 1, device=DEVICE))
    assert max_err(got, softmax_masked(x)) <= ATOL[torch.float32]
    bad = triton_entmax.triton_entmax(x, None, torch.tensor([[1.5], [2.5], [0.5], [float("nan")]], device=DEVICE))
    assert not bad[0].isnan().any() and bad[1:].isnan().all()  # checked on the device: no host synchronisation
    with pytest.raises(ValueError, match="alpha must lie in \\[1, 2\\], got alpha=2.5"):
        triton_entmax.triton_entmax(x, None, 2.5)


@pytest.mark.parametrize("mode,alpha", [(SPARSEMAX, None), (ENTMAX15, None), (GENERAL, 1.3), (GENERAL, "rows")])
@pytest.mark.parametrize("chunked", [False, True])
def test_full_float64_jacobian(mode, alpha, chunked):
    """float64 gradcheck of the scores (and of a per-row alpha) with the whole Jacobian, masked keys included (for
    the chunked kernels, which the interpreter runs far slower, in fast mode: a random projection of it)."""
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(4, 9, generator=gen, dtype=torch.float64) * 2).to(DEVICE).requires_grad_()
    mask = torch.zeros(4, 9, dtype=torch.bool, device=DEVICE)
    mask[1, 6:] = True
    weights = torch.randn(4, 9, generator=gen, dtype=torch.float64).to(DEVICE)
    config = _chunked(4) if chunked else None
    original = triton_entmax.launch_config
    try:
        if config is not None:
            triton_entmax.launch_config = lambda n, dtype: config
        if alpha == "rows":
            a = torch.tensor([1.05, 1.4, 1.6, 1.95], dtype=torch.float64).view(4, 1).to(DEVICE).requires_grad_()
            assert torch.autograd.gradcheck(
                lambda s, a: (triton_entmax.triton_entmax(s, mask, a) * weights).sum(), (x, a), **GRADCHECK,
                fast_mode=chunked)
        else:
            assert torch.autograd.gradcheck(
                lambda s: (triton_entmax.triton_entmax(s, mask, alpha, mode) * weights).sum(), (x,), **GRADCHECK,
                fast_mode=chunked)
    finally:
        triton_entmax.launch_config = original


def test_normalizer_forced_to_the_triton_kernel():
    """--attention-kernel triton reaches the kernel through a normalizer, alpha gradient included."""
    scores = (torch.randn(2, 3, 4, 11) * 2).to(DEVICE)
    forced = build_normalizer("entmax_alpha", 3, init=1.4, kernel="triton").to(DEVICE)
    reference = build_normalizer("entmax_alpha", 3, init=1.4, kernel="reference").to(DEVICE)
    got, expected = forced(scores), reference(scores)
    assert max_err(got, expected) <= ATOL[torch.float32]
    got.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    assert max_err(forced.a.grad, reference.a.grad) <= 1e-4 * max(1.0, reference.a.grad.abs().max().item())
    assert max_err(build_normalizer("sparsemax", 3, kernel="triton")(scores), sparsemax_reference(scores)) \
        <= ATOL[torch.float32]


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "_WARNED", set())
    registry.forget_choices()
    yield
    registry.forget_choices()


def test_chosen_first_on_cuda_and_one_warning_when_it_cannot_run(monkeypatch, fresh_registry):
    monkeypatch.delenv(registry.FORCE_ENV, raising=False)
    needs = frozenset({registry.ALPHA_GRAD})
    for normalizer in ("sparsemax", "entmax15", "entmax_fixed", "entmax_alpha"):
        assert registry._choose(normalizer, "cuda", torch.bfloat16, needs, AUTO).name == "triton"
    assert registry._choose("rela", "cuda", torch.float32, frozenset(), AUTO).name == "reference"
    monkeypatch.setattr(triton_entmax, "_STATE", {"error": "no CUDA device in this process", "jit": None})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert registry._choose("entmax_alpha", "cuda", torch.float32, needs, AUTO).name == "reference"
        assert registry._choose("sparsemax", "cuda", torch.float16, frozenset(), AUTO).name == "reference"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "triton kernel cannot run here: no CUDA device" in messages[0], messages


class _FakeCompileError(Exception):
    """Stands for triton's compile errors (their module is triton's)."""


_FakeCompileError.__module__ = "triton.compiler.errors"


def test_a_kernel_that_fails_to_compile_falls_back_with_one_warning(monkeypatch, fresh_registry):
    monkeypatch.setattr(triton_entmax, "INTERPRET", False)  # the interpreter re-raises: a test must see its errors
    monkeypatch.setattr(triton_entmax, "_STATE", {"error": None, "jit": None})

    def fail(*args, **kwargs):
        raise _FakeCompileError("ptxas fatal: out of registers")

    monkeypatch.setattr(triton_entmax, "_forward", fail)
    monkeypatch.setattr(triton_entmax, "_backward", fail)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([[1.2], [1.5], [1.8]], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = triton_entmax.triton_entmax(x, None, alpha)
        assert registry._choose("entmax_alpha", "cuda", torch.float32, frozenset(), AUTO).name == "reference"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "triton kernel cannot run here: its kernels failed to compile here " \
        "(_FakeCompileError: ptxas fatal" in messages[0], messages
    assert max_err(got, entmax_bisect_reference(x.detach(), alpha.detach())) <= ATOL[torch.float64]
    assert "failed to compile" in triton_entmax.unavailable()
    got.pow(2).sum().backward()  # the backward falls back to the closed form in PyTorch
    x_ref, alpha_ref = x.detach().clone().requires_grad_(), alpha.detach().clone().requires_grad_()
    get_kernel("reference").fn("entmax_alpha", x_ref, None, alpha_ref).pow(2).sum().backward()
    assert max_err(x.grad, x_ref.grad) <= 1e-9 and max_err(alpha.grad, alpha_ref.grad) <= 1e-9
