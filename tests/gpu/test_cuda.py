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
    expected = reference(scores, mask)
    actual = function(scores.to("cuda", dtype), mask.cuda())
    assert actual.dtype == dtype and not torch.isnan(actual).any()
    assert max_err(actual.cpu(), expected) <= ATOL[dtype]
    assert (actual[2] == 0).all()


def test_fp16_training_with_learned_alpha(translation_data, tmp_path):
    result = train_translation(translation_data, tmp_path, "transformer_entmax", 10,
                               extra=["--fp16"], cpu=False)
    log = result.stdout + result.stderr
    assert re.search(r"alpha_enc [\d.]+", log), log[-2000:]
    assert not re.search(r"\bnan\b", log.lower())
