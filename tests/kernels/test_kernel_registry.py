"""The kernel registry's choices, forcing and errors; the fused op's torch.library contract; the fallback when the
compiled op is absent."""

import subprocess
import sys

import pytest
import torch

from sparse_attn_fairseq.kernels import (
    FORCE_ENV, Kernel, NoKernelError, get_kernel, kernel_names, register_kernel, select_kernel,
)
from sparse_attn_fairseq.functional.reference import entmax_bisect_reference
from sparse_attn_fairseq.kernels.fused_cpu import fused_entmax
from sparse_attn_fairseq.layers.normalizers import build_normalizer
from tests.conftest import REPO, cli_env
from tests.tolerances import ATOL, max_err


def test_choice_by_device_dtype_and_features(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    x32, x64 = torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)
    assert kernel_names()[-1] == "reference"
    assert select_kernel("entmax_alpha", x32, frozenset({"alpha_grad"})).name == "fused_cpu"
    assert select_kernel("entmax_alpha", x64).name == "reference"  # fused_cpu takes no float64
    assert select_kernel("softmax", x32).name == "reference"  # torch's softmax is already fused


def test_forcing_by_argument_and_environment(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    x = torch.zeros(2, 3)
    assert select_kernel("sparsemax", x, requested="reference").name == "reference"
    monkeypatch.setenv(FORCE_ENV, "reference")
    assert select_kernel("sparsemax", x).name == "reference"
    assert select_kernel("sparsemax", x, requested="fused_cpu").name == "reference"  # the environment wins


def test_refusals_are_listed_per_kernel(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "fused_cpu")
    with pytest.raises(NoKernelError, match=r"entmax_alpha for cpu float64.*forced by SPARSE_ATTN_FAIRSEQ_KERNEL"
                                            r".*fused_cpu: takes bfloat16, float16, float32, not float64"):
        select_kernel("entmax_alpha", torch.zeros(2, 3, dtype=torch.float64))
    assert select_kernel("rela", torch.zeros(2, 3)).name == "reference"  # forced only where it implements
    with pytest.raises(ValueError, match="unknown kernel 'fast'; choose auto or one of: triton, fused_cpu, reference"):
        build_normalizer("softmax", 2, kernel="fast")


def test_registration_rules():
    with pytest.raises(ValueError, match="already registered"):
        register_kernel(get_kernel("reference"))
    with pytest.raises(ValueError, match="unknown features"):
        register_kernel(Kernel("x", frozenset(), frozenset(), frozenset(), frozenset({"teleport"}), fn=None))


def test_normalizer_module_honours_its_kernel(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    scores = torch.randn(2, 4, 5, 9)
    fused = build_normalizer("entmax_alpha", 4, init=1.3)
    reference = build_normalizer("entmax_alpha", 4, init=1.3, kernel="reference")
    assert max_err(fused(scores), reference(scores)) <= ATOL[torch.float32]


def _op_inputs(alpha_grad):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 13, generator=gen).requires_grad_()
    alpha = torch.tensor([1.0, 1.2, 1.5, 1.7, 2.0, 1.01]).view(6, 1).requires_grad_(alpha_grad)
    return scores, alpha


@pytest.mark.parametrize("alpha_grad", [False, True])
@pytest.mark.parametrize("layout", ["per_row", "per_head_with_mask"])
def test_opcheck(alpha_grad, layout):
    scores, alpha = _op_inputs(alpha_grad)
    mask = None
    if layout == "per_head_with_mask":  # (bsz 2, heads 3, queries 4) rows, one alpha per head, key padding
        scores = torch.randn(2, 3, 4, 9).requires_grad_()
        alpha = torch.tensor([1.3, 1.5, 2.0]).view(3, 1, 1).requires_grad_(alpha_grad)
        mask = torch.zeros(2, 1, 1, 9, dtype=torch.bool)
        mask[1, ..., 6:] = True
    torch.library.opcheck(torch.ops.sparse_attn.entmax_forward.default, (scores, alpha, mask, -5e7))
    probs = torch.ops.sparse_attn.entmax_forward(scores.detach(), alpha.detach(), mask, -5e7)
    torch.library.opcheck(torch.ops.sparse_attn.entmax_backward.default,
                          (torch.randn_like(probs), probs, alpha.detach(), alpha_grad))


def test_broadcast_alpha_and_mask_agree_with_expanded_ones():
    """Per-head alpha and a key-padding mask broadcast by the op give the weights and gradients of expanded ones."""
    scores = torch.randn(2, 3, 4, 9)
    per_head = torch.tensor([1.3, 1.5, 1.9]).view(3, 1, 1).requires_grad_()
    per_row = per_head.detach().expand(2, 3, 4, 1).clone().requires_grad_()
    padding = torch.zeros(2, 1, 1, 9, dtype=torch.bool)
    padding[0, ..., 5:] = True
    full_mask = padding.expand(2, 3, 4, 9).clone()
    (fused_entmax(scores, padding, per_head) * scores).sum().backward()
    (fused_entmax(scores, full_mask, per_row) * scores).sum().backward()
    assert max_err(fused_entmax(scores, padding, per_head), fused_entmax(scores, full_mask, per_row)) == 0.0
    assert max_err(per_head.grad.view(-1), per_row.grad.sum((0, 2, 3))) <= 1e-5
    odd = torch.tensor([1.3, 1.7]).view(2, 1, 1, 1)  # per batch entry
    assert max_err(fused_entmax(scores, None, odd), fused_entmax(scores, None, odd.expand(2, 3, 4, 1))) == 0.0


@pytest.mark.parametrize("keys", [1, 5, 20, 64, 65, 130])
@pytest.mark.parametrize("head_alphas", [(1.3, 1.7, 1.01, 1.99), (1.5, 2.0, 1.5, 2.0), (1.0, 1.3, 1.5, 2.0)])
def test_decoding_shaped_calls(keys, head_alphas):
    """A beam-search step's call: (bsz * beam, heads, 1, keys) with per-head alphas and key padding. Short rows of
    general alphas go to the lane solver (8 rows at a time, mixed alphas, 9 rows left over), the others to the row
    solver; a fully padded row and a row whose only key survives are in the lanes' groups."""
    gen = torch.Generator().manual_seed(keys)
    scores = torch.randn(41, 4, 1, keys, generator=gen) * 3
    alpha = torch.tensor(head_alphas).view(4, 1, 1)
    padding = torch.rand(41, 1, 1, keys, generator=gen) < 0.3
    padding[3] = True
    padding[5, ..., 0], padding[5, ..., 1:] = False, True
    got = fused_entmax(scores, padding, alpha)
    expected = entmax_bisect_reference(scores.double(), alpha.double(), padding)
    assert max_err(got, expected) <= ATOL[torch.float32]
    assert torch.equal(got[3], torch.zeros_like(got[3])) and torch.all(got[5, ..., 0] == 1.0)


def test_fixed_alpha_trains_after_decoding_in_inference_mode():
    """The op's shared tensor for a fixed alpha, first made inside torch.inference_mode, must not break a later
    backward (autograd cannot save inference tensors)."""
    with torch.inference_mode():
        fused_entmax(torch.randn(3, 5), None, 1.4)
    scores = torch.randn(3, 5, requires_grad=True)
    fused_entmax(scores, None, 1.4).pow(2).sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


def test_the_op_names_bad_shapes():
    with pytest.raises(RuntimeError, match="alpha of shape \\[2\\] must broadcast to \\[3, 1\\]"):
        torch.ops.sparse_attn.entmax_forward(torch.randn(3, 5), torch.tensor([1.5, 1.5]), None, -5e7)
    with pytest.raises(RuntimeError, match="mask of shape \\[4\\] does not broadcast"):
        torch.ops.sparse_attn.entmax_forward(torch.randn(3, 5), torch.tensor([1.5]), torch.zeros(4, dtype=torch.bool),
                                             -5e7)


def test_compiles_without_graph_breaks():
    scores, alpha = _op_inputs(True)
    compiled = torch.compile(lambda s, a: fused_entmax(s, None, a.view(-1, 1)), backend="aot_eager", fullgraph=True)
    got = compiled(scores, alpha)
    assert max_err(got, fused_entmax(scores, None, alpha.view(-1, 1))) == 0.0
    got.sum().backward()
    assert alpha.grad is not None


def test_bad_alpha_names_the_value():
    with pytest.raises(RuntimeError, match="alpha must lie in \\[1, 2\\], got 2.5"):
        fused_entmax(torch.randn(2, 5), None, torch.tensor([[1.5], [2.5]]))
    with pytest.raises(ValueError, match="alpha must lie in \\[1, 2\\], got alpha=0.5"):
        fused_entmax(torch.randn(2, 5), None, 0.5)


_WITHOUT_COMPILED_OP = """
import sys, warnings
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "sparse_attn_fairseq._C":
            raise ImportError("hidden by the test")
sys.meta_path.insert(0, Block())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    from sparse_attn_fairseq.kernels import select_kernel
    from sparse_attn_fairseq.layers.normalizers import build_normalizer
messages = [str(w.message) for w in caught if "fused CPU entmax kernel is unavailable" in str(w.message)]
assert len(messages) == 1, [str(w.message) for w in caught]
print(messages[0])
assert select_kernel("entmax_alpha", torch.zeros(2, 3)).name == "reference"
out = build_normalizer("entmax_alpha", 2)(torch.randn(1, 2, 3, 4))
assert torch.allclose(out.sum(-1), torch.ones(1, 2, 3))
print("reference took over")
"""


def test_reference_takes_over_with_a_warning_when_the_compiled_op_is_absent():
    result = subprocess.run([sys.executable, "-c", _WITHOUT_COMPILED_OP], capture_output=True, text=True,
                            env=cli_env(), cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hidden by the test" in result.stdout and "make setup" in result.stdout
    assert "reference took over" in result.stdout
