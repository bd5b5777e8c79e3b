"""CUDA paths: normalisers in half precision on the GPU, and fp16 training with fairseq-train.

Skipped where no GPU is present (CI has none); run them on a GPU machine with `pytest tests/gpu`.
"""

import re

import pytest
import torch

from sparse_attn_fairseq.functional.entmax import entmax15, entmax_alpha, sparsemax
from sparse_attn_fairseq.functional.reference import (
    entmax15_reference,
    entmax_bisect_reference,
    sparsemax_reference,
)
from tests.conftest import train_translation
from tests.tolerances import ATOL, max_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CASES = {
    "sparsemax": (sparsemax, sparsemax_reference),
    "entmax15": (entmax15, entmax15_reference),
    "entmax_alpha_1.3": (lambda z, mask: entmax_alpha(z, 1.3, mask),
                         lambda z, mask: entmax_bisect_reference(z, 1.3, mask)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_normalizers_on_cuda_match_float64_reference(name, dtype):
    function, reference = CASES[name]
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 8, 16, 64, generator=generator, dtype=torch.float64) * 3
    mask = torch.zeros(4, 1, 1, 64, dtype=torch.bool)
    mask[1, ..., 40:] = True
    mask[2] = True  # fully masked rows
    rounded = scores.to(dtype)  # the reference sees the inputs the kernel sees: only output rounding is left
    expected = reference(rounded.double(), mask)
    actual = function(rounded.cuda(), mask.cuda())
    assert actual.dtype == dtype and not torch.isnan(actual).any()
    assert max_err(actual.cpu(), expected) <= ATOL[dtype]
    assert (actual[2] == 0).all()


def _valid_losses(log: str) -> list:
    return [float(x) for x in re.findall(r"valid on 'valid' subset \| loss ([\d.]+)", log)]


_FLOAT32_RUNS = {}  # arch -> its float32 fairseq-train run, shared by the precisions (one process each)


@pytest.mark.parametrize("precision", [["--fp16"], ["--memory-efficient-fp16"], ["--amp"], ["--bf16"],
                                       ["--memory-efficient-bf16"]])
@pytest.mark.parametrize("arch", ["transformer_entmax", "transformer_rela", "transformer_adaptive_span"])
def test_mixed_precision_training_ends_close_to_float32(translation_data, tmp_path_factory, tmp_path, arch,
                                                         precision):
    """Every precision fairseq offers on CUDA: no NaN or inf, the final validation loss within 0.15 of float32's."""
    if arch not in _FLOAT32_RUNS:
        _FLOAT32_RUNS[arch] = train_translation(translation_data, tmp_path_factory.mktemp(f"{arch}-fp32"), arch, 20,
                                                extra=[], cpu=False)
    reference = _FLOAT32_RUNS[arch]
    result = train_translation(translation_data, tmp_path / "mixed", arch, 20, extra=precision, cpu=False)
    log = result.stdout + result.stderr
    progress = "\n".join(line for line in log.splitlines() if "train_inner" in line or "valid on" in line)
    assert progress and not re.search(r"\b(nan|inf)\b", progress.lower()), log[-2000:]
    if arch == "transformer_entmax":
        assert re.search(r"alpha_enc [\d.]+", log), log[-2000:]
    ours, theirs = _valid_losses(log), _valid_losses(reference.stdout + reference.stderr)
    assert ours and abs(ours[-1] - theirs[-1]) <= 0.15, (ours, theirs)
