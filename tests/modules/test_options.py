"""options.py: defaults, per-type specs, and one error listing every bad flag with its value."""

from argparse import Namespace

import pytest

from sparse_attn_fairseq.options import RELA, AttentionOptionsError, NormalizerSpec, read_attention_options


def test_defaults_are_learned_alpha_everywhere_with_random_init():
    options = read_attention_options(Namespace())
    for kind in ("encoder", "decoder", "encoder_decoder"):
        assert options.spec(kind) == NormalizerSpec(
            "entmax_alpha", (("init", "random"), ("clamp", (1.01, 2.0)), ("lr_scale", 10.0)))


def test_per_type_choices_and_fixed_alpha():
    args = Namespace(encoder_attention_normalizer="softmax", decoder_attention_normalizer="entmax_fixed",
                     encoder_decoder_attention_normalizer="sparsemax", entmax_fixed_alpha=1.25,
                     entmax_alpha_init="1.3")
    options = read_attention_options(args)
    assert options.encoder == NormalizerSpec("softmax")
    assert options.decoder.kwargs() == {"alpha": 1.25}
    assert options.encoder_decoder.name == "sparsemax"


def test_lm_reads_only_the_decoder():
    options = read_attention_options(Namespace(), ("decoder",))
    assert options.encoder is None and options.decoder is not None
    with pytest.raises(ValueError, match="encoder"):
        options.spec("encoder")


def test_every_problem_is_reported_with_flag_and_value():
    args = Namespace(encoder_attention_normalizer="softmaxx", entmax_alpha_init="big", entmax_alpha_min=0.5,
                     entmax_alpha_max=2.5, entmax_fixed_alpha=3.0, entmax_alpha_lr_scale=-1.0)
    with pytest.raises(AttentionOptionsError) as error:
        read_attention_options(args)
    message = str(error.value)
    for expected in ("--encoder-attention-normalizer='softmaxx'", "--entmax-alpha-init='big'",
                     "--entmax-alpha-min=0.5", "--entmax-alpha-max=2.5", "--entmax-fixed-alpha=3.0",
                     "--entmax-alpha-lr-scale=-1.0"):
        assert expected in message


def test_init_outside_clamp_range_and_inverted_range():
    with pytest.raises(AttentionOptionsError, match="outside the clamp range"):
        read_attention_options(Namespace(entmax_alpha_init="1.9", entmax_alpha_max=1.5))
    with pytest.raises(AttentionOptionsError, match="must be below"):
        read_attention_options(Namespace(entmax_alpha_min=1.6, entmax_alpha_max=1.5))


def test_rela_defaults_are_gated_rela_everywhere():
    options = read_attention_options(Namespace(), method=RELA)
    expected = NormalizerSpec("rela", output_norm=(("variant", "gated"), ("per_head", False), ("gate_init", "glorot")))
    for kind in ("encoder", "decoder", "encoder_decoder"):
        assert options.spec(kind) == expected
    assert options.spec("decoder").output_norm_kwargs() == {"variant": "gated", "per_head": False,
                                                             "gate_init": "glorot"}


def test_rela_per_type_softmax_has_no_output_norm():
    args = Namespace(encoder_attention_normalizer="softmax", rela_norm_variant="init", rela_norm_per_head=True)
    options = read_attention_options(args, method=RELA)
    assert options.encoder == NormalizerSpec("softmax") and options.encoder.output_norm_kwargs() is None
    assert options.decoder.output_norm_kwargs() == {"variant": "init", "per_head": True, "gate_init": "glorot"}


def test_rela_problems_name_the_flag_and_entmax_models_refuse_rela():
    args = Namespace(rela_norm_variant="gate", decoder_attention_normalizer="entmax15", rela_gate_init="zeros")
    with pytest.raises(AttentionOptionsError) as error:
        read_attention_options(args, method=RELA)
    assert "--rela-norm-variant='gate'" in str(error.value)
    assert "--rela-gate-init='zeros': choose one of ones, glorot" in str(error.value)
    assert "--decoder-attention-normalizer='entmax15': choose one of rela, softmax" in str(error.value)
    with pytest.raises(AttentionOptionsError, match="--encoder-attention-normalizer='rela'"):
        read_attention_options(Namespace(encoder_attention_normalizer="rela"))


@pytest.mark.parametrize("flags,accepted", [
    (dict(entmax_alpha_min=1.0), False), (dict(entmax_alpha_min=1.0005), False), (dict(entmax_alpha_min=1.001), True),
    (dict(entmax_fixed_alpha=1.0), True), (dict(entmax_fixed_alpha=1.0005), False),
])
def test_alpha_too_close_to_one_is_refused_with_the_reason(flags, accepted):
    from sparse_attn_fairseq.options import AttentionOptionsError

    if accepted:
        read_attention_options(Namespace(**flags))
    else:
        with pytest.raises(AttentionOptionsError, match="not solved to float32 accuracy"):
            read_attention_options(Namespace(**flags))


def test_attention_kernel_and_statistics_flags():
    assert read_attention_options(Namespace(attention_kernel="reference")).spec("decoder").kernel == "reference"
    assert read_attention_options(Namespace()).stats and not read_attention_options(
        Namespace(no_attention_stats=True)).stats
    with pytest.raises(AttentionOptionsError, match="--attention-kernel='fast': choose one of auto, triton, fused_cpu, reference"):
        read_attention_options(Namespace(attention_kernel="fast"))
