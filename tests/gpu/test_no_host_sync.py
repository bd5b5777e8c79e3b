"""No device-to-host synchronisation on the CUDA training and decoding path, for every architecture.

Without a GPU, each architecture registered by this package runs on the ``meta`` device (no data: any code that
reads a value on the host is caught by tests/host_sync.py, with the file and line that asked) through a training
forward, the loss and backward, then incremental decoding with a beam reorder; the streaming language models also
through two blocks with memory. The Triton kernels' launcher runs under triton's interpreter, where every host
read of our code is caught whatever the device. fairseq's own syncs (its encoder's ``if has_pads``) are listed
apart: stock fairseq pays them too.

With a GPU, the same runs on CUDA under ``torch.cuda.set_sync_debug_mode("error")`` would raise on any sync,
fairseq's included, so there only our modules are checked: the attention module's forward and backward.
"""

import pytest
import torch
from fairseq.logging import metrics
from fairseq.models import ARCH_MODEL_REGISTRY, FairseqLanguageModel

import sparse_attn_fairseq  # noqa: F401  (registers the architectures)
from sparse_attn_fairseq.kernels import triton_entmax
from sparse_attn_fairseq.modules.stream_memory import StreamPosition
from tests.host_sync import HostSyncRecorder
from tests.models.builders import TINY_LM_FLAGS, TINY_MT_FLAGS, parse_args, random_batch

SPAN_FLAGS = ("--adaptive-span-max", "8", "--adaptive-span-init", "0.5", "--adaptive-span-loss", "2e-6")
EXAMPLE_FLAGS = ("--attn-span", "8", "--n-layer", "1", "--d-model", "32", "--n-head", "2", "--d-inner", "64",
                 "--aux-loss-scaler", "2e-6")


def _our_architectures():
    return sorted(arch for arch, cls in ARCH_MODEL_REGISTRY.items() if cls.__module__.startswith("sparse_attn_fairseq"))


def _flags(arch: str):
    if arch == "adaptive_span":  # fairseq's example flags
        return ["--task", "language_modeling", "--seed", "1", "--cpu", *EXAMPLE_FLAGS], True
    lm = issubclass(ARCH_MODEL_REGISTRY[arch], FairseqLanguageModel)
    extra = SPAN_FLAGS if "adaptive_span" in arch else ()
    return [*(TINY_LM_FLAGS if lm else TINY_MT_FLAGS), *extra], lm


def _streaming_task(dictionary):
    """What build_model reads from the streaming task (its type and dictionary), without data on disk."""
    from sparse_attn_fairseq.tasks.truncated_bptt_lm import TruncatedBPTTLMTask

    task = TruncatedBPTTLMTask.__new__(TruncatedBPTTLMTask)
    task.dictionary = dictionary
    return task


def _build_on_meta(arch: str, streaming: bool = False):
    """The model for ``arch`` at tiny sizes, built directly on the meta device (in the streaming task if asked, and
    always for fairseq's example ``adaptive_span``, which is made for it)."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from tests.models.builders import TinyTask

    flags, lm = _flags(arch)
    args = parse_args(arch, *flags, base=[])
    if getattr(args, "adaptive_input", False):
        pytest.skip("fairseq's adaptive input selects words by boolean indexing (a sync of fairseq's, which meta "
                    "tensors cannot run); its attention is transformer_lm's, checked above")
    if lm:
        args = convert_namespace_to_omegaconf(args).model
    task = TinyTask()
    if streaming or arch == "adaptive_span":
        task = _streaming_task(task.source_dictionary)
    with torch.device("meta"):
        model = ARCH_MODEL_REGISTRY[arch].build_model(args, task)
    return model.to("meta"), task, lm  # buffers made by legacy constructors (torch.FloatTensor) stay on the CPU


def _meta(*tensors):
    return [t.to("meta") for t in tensors]


def _train_step(model, task, lm, stream=None):
    src, lengths, prev = _meta(*random_batch(task))
    model.train()
    if lm:
        out = model(prev, stream=stream) if stream is not None else model(prev)
    else:
        out = model(src, lengths, prev)
    lprobs = model.get_normalized_probs(out, log_probs=True)
    target = prev.roll(-1, dims=1)
    loss = -lprobs.gather(-1, target.unsqueeze(-1)).sum()
    loss.backward()


@torch.no_grad()
def _decode(model, task, lm, steps=3):
    src, lengths, prev = _meta(*random_batch(task))
    model.eval()
    encoder_out = None if lm else model.encoder(src, src_lengths=lengths)
    state = {}
    for t in range(steps):
        if t == steps - 1:
            model.decoder.reorder_incremental_state_scripting(state, torch.arange(prev.size(0), device="meta"))
        model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)


def _assert_no_sync_of_ours(recorder: HostSyncRecorder):
    assert not recorder.ours, "host reads on the device path:\n" + "\n".join(dict.fromkeys(map(str, recorder.ours)))


@pytest.mark.parametrize("arch", _our_architectures())
def test_training_and_decoding_never_wait_for_the_device(arch):
    model, task, lm = _build_on_meta(arch)
    recorder = HostSyncRecorder()
    with recorder, metrics.aggregate(new_root=True):  # the observers' meta tensors stay out of the global meters
        _train_step(model, task, lm)
        _decode(model, task, lm)
    _assert_no_sync_of_ours(recorder)


@pytest.mark.parametrize("arch", [a for a in _our_architectures() if a.startswith("transformer_lm_adaptive_span")
                                  or a == "adaptive_span"])
def test_streaming_blocks_with_memory_never_wait_for_the_device(arch):
    model, task, lm = _build_on_meta(arch, streaming=True)
    recorder = HostSyncRecorder()
    with recorder, metrics.aggregate(new_root=True):
        for block in range(2):
            _train_step(model, task, lm, stream=StreamPosition("train", block))
    _assert_no_sync_of_ours(recorder)
    assert model.stream_memory.tokens("train"), "the memory was not used"


@pytest.mark.parametrize("arch", ["transformer_rela", "transformer_adaptive_span"])
def test_the_flex_core_reads_nothing_on_the_host(arch, monkeypatch):
    """The flex core's Python (score and mask functions, block mask, ReLA's log-sum-exp scaling) on meta tensors.
    flex_attention itself cannot run on meta: a stand-in of its signature takes its place; with the statistics off
    and no dropout the core is chosen for the self-attentions."""
    from sparse_attn_fairseq.modules import flex_cores

    calls = []

    def flex_stand_in(q, k, v, score_mod=None, block_mask=None, scale=None, return_lse=False, return_aux=None):
        calls.append(block_mask)
        out = q * 1.0 + (k.sum() + v.sum()) * 0.0
        if return_aux is not None or return_lse:
            lse = q.sum(-1)
            return (out, type("Aux", (), {"lse": lse})()) if return_aux is not None else (out, lse)
        return out

    monkeypatch.setattr(flex_cores, "DEVICES", ("cuda", "meta"))
    monkeypatch.setattr(flex_cores, "_flex", lambda: flex_stand_in)
    model, task, lm = _build_on_meta(arch)
    for module in model.modules():
        if hasattr(module, "observers"):
            module.observers = []
            module.dropout_module.p = 0.0
    recorder = HostSyncRecorder()
    with recorder, metrics.aggregate(new_root=True):
        _train_step(model, task, lm)
    _assert_no_sync_of_ours(recorder)
    assert len(calls) >= 2  # encoder and decoder self-attention


def test_the_recorder_catches_a_sync_of_ours():
    """The check can fail: a host read by this package's code is reported with its line (refresh_bounds reads the
    spans by design, after an update); one asked by other code is recorded apart."""
    from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan, refresh_bounds

    with torch.device("meta"):
        span = AdaptiveSpan(2, 16)
    recorder = HostSyncRecorder()
    with recorder:
        refresh_bounds([span])
        bool(span.span_frac.sum() > 0)
    assert len(recorder.ours) == 1 and "sparse_attn_fairseq/layers/adaptive_span.py" in str(recorder.ours[0])
    assert len(recorder.theirs) == 1 and __file__ in str(recorder.theirs[0])


@pytest.mark.skipif(not triton_entmax.INTERPRET, reason="the launcher is checked under triton's interpreter")
@pytest.mark.parametrize("normalizer", ["sparsemax", "entmax15", "entmax_fixed", "entmax_alpha"])
def test_the_triton_launcher_reads_nothing_on_the_host(normalizer):
    """Forward and backward through the Triton kernel's Python: no host read of a tensor by our code (the
    interpreter's own reads are triton's)."""
    scores = torch.randn(2, 3, 4, 9, requires_grad=True)
    mask = torch.zeros(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = True
    alpha = torch.full((3, 1, 1), 1.3, requires_grad=True) if normalizer == "entmax_alpha" else 1.3
    recorder = HostSyncRecorder(all_devices=True)
    with recorder:
        out = triton_entmax.TRITON_KERNEL.fn(normalizer, scores, mask, alpha)
        out.pow(2).sum().backward()
    _assert_no_sync_of_ours(recorder)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("normalizer", ["softmax", "sparsemax", "entmax15", "entmax_alpha", "rela"])
def test_attention_on_cuda_under_sync_debug_mode(normalizer):
    from sparse_attn_fairseq.layers.normalizers import build_normalizer
    from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention

    attention = SparseMultiheadAttention(64, 4, build_normalizer(normalizer, 4), self_attention=True,
                                         stats_key="enc").cuda()
    x = torch.randn(12, 3, 64, device="cuda")
    padding = torch.zeros(3, 12, dtype=torch.bool, device="cuda")
    padding[1, 8:] = True
    attention(x, x, x, key_padding_mask=padding, need_weights=False)  # first call: lazy initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, _ = attention(x, x, x, key_padding_mask=padding, need_weights=False)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
