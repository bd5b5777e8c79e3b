"""The dataclass, BetterTransformer and numpy 2 fixes, and the switches that turn fixes off."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import cli_env


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cli_env(env), timeout=300)


def test_fairseq_imports_and_keeps_instance_defaults():
    result = _python(
        "import fairseq.dataclass.configs as c\n"
        "f = c.FairseqConfig.__dataclass_fields__['common']\n"
        "assert isinstance(f.default, c.CommonConfig), f.default\n"
        "import dataclasses\n"
        "try:\n"
        "    @dataclasses.dataclass\n"
        "    class Mine:\n"
        "        inner: object = c.CommonConfig()\n"
        "except ValueError as e:\n"
        "    print('others still checked:', e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "others still checked: mutable default" in result.stdout


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the upstream failure needs Python 3.11+")
def test_switching_all_fixes_off_restores_upstream_failure():
    result = _python("import fairseq", SPARSE_ATTN_FAIRSEQ_COMPAT="0")
    assert result.returncode != 0 and "mutable default" in result.stderr


_FIXES_INSTALLED = ("import sys; from sparse_attn_fairseq_compat.hook import _FixFinder\n"
                    "print('fixes installed:', any(isinstance(f, _FixFinder) for f in sys.meta_path))")


def test_the_start_up_hook_installs_the_fixes():
    """The .pth file ran at start-up (site.py would swallow its errors): the finder is on sys.meta_path."""
    assert "fixes installed: True" in _python(_FIXES_INSTALLED).stdout


def test_unknown_fix_name_is_an_error():
    """site.py prints, then swallows, the hook's error: check the message and that no fix was installed, not just
    that a later import failed."""
    result = _python(_FIXES_INSTALLED, SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE="numpy3")
    assert "unknown fixes ['numpy3']" in result.stderr and "bettertransformer" in result.stderr
    assert "fixes installed: False" in result.stdout


_COUNT_FUSED_CALLS = """
import sys, torch
from fairseq import checkpoint_utils
calls = []
original = torch._transformer_encoder_layer_fwd
def spy(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)
torch._transformer_encoder_layer_fwd = spy
models, _ = checkpoint_utils.load_model_ensemble([sys.argv[1]])
model = models[0].eval()
tokens = torch.tensor([[5, 6, 7, 8, 2], [1, 1, 5, 6, 2]])
with torch.no_grad():
    for source, lengths in ((tokens[:1], torch.tensor([5])), (tokens, torch.tensor([5, 3]))):
        model.encoder(source, src_lengths=lengths)
print("fused calls:", len(calls))
"""


def test_eval_forward_never_reaches_fused_encoder_layer(transformer_checkpoint):
    fixed = subprocess.run([sys.executable, "-c", _COUNT_FUSED_CALLS, str(transformer_checkpoint)],
                           capture_output=True, text=True, env=cli_env())
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "fused calls: 0" in fixed.stdout
    upstream = subprocess.run([sys.executable, "-c", _COUNT_FUSED_CALLS, str(transformer_checkpoint)],
                              capture_output=True, text=True,
                              env=cli_env({"SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE": "bettertransformer"}))
    # Upstream takes the fused path (or crashes in it on the padded batch): the test can fail.
    assert "fused calls: 0" not in upstream.stdout


def test_bettertransformer_copies_need_no_gradient():
    from fairseq.models.transformer import TransformerConfig
    from fairseq.modules.transformer_layer import TransformerEncoderLayerBase

    layer = TransformerEncoderLayerBase(TransformerConfig())
    trainable = {name for name, p in layer.named_parameters() if p.requires_grad}
    assert "in_proj_weight" not in trainable and "fc2_bias" not in trainable
    assert "self_attn.q_proj.weight" in trainable and "fc1.weight" in trainable
    assert "in_proj_weight" in layer.state_dict()  # checkpoints keep their keys


def test_numpy2_removals_are_covered():
    from fairseq.data import data_utils
    from fairseq.data.token_block_dataset import TokenBlockDataset

    assert not hasattr(np, "compat"), "this environment should have numpy 2"
    buckets = data_utils.get_buckets(np.arange(1, 101), 4)
    assert list(buckets) == list(np.unique(np.percentile(np.arange(1, 101), [25, 50, 75, 100],
                                                         method="lower")))
    items = [torch.tensor([4, 5, 2]), torch.tensor([6, 2]), torch.tensor([7, 8, 9, 2])]

    class _Items(torch.utils.data.Dataset):
        def __getitem__(self, i):
            return items[i]

        def __len__(self):
            return len(items)

    blocks = TokenBlockDataset(_Items(), [3, 2, 4], block_size=8, pad=1, eos=2, break_mode="eos")
    assert [blocks[i].tolist() for i in range(len(blocks))] == [t.tolist() for t in items]
