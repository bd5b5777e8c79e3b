"""options.py: defaults, per-type specs, and one error listing every bad flag with its value."""

from argparse import Namespace

import pytest

from sparse_attn_fairseq.options import AttentionOptionsError, NormalizerSpec, read_attention_options


def test_defaults_are_learned_alpha_everywhere_with_random_init():
    options = read_attention_options(Namespace())
    for kind in ("encoder", "decoder", "encoder_decoder"):
        assert options.spec(kind) == NormalizerSpec("entmax_alpha", (("init", "random"), ("clamp", (1.01, 2.0))))


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
                     entmax_alpha_max=2.5, entmax_fixed_alpha=3.0)
    with pytest.raises(AttentionOptionsError) as error:
        read_attention_options(args)
    message = str(error.value)
    for expected in ("--encoder-attention-normalizer='softmaxx'", "--entmax-alpha-init='big'",
                     "--entmax-alpha-min=0.5", "--entmax-alpha-max=2.5", "--entmax-fixed-alpha=3.0"):
        assert expected in message


def test_init_outside_clamp_range_and_inverted_range():
    with pytest.raises(AttentionOptionsError, match="outside the clamp range"):
        read_attention_options(Namespace(entmax_alpha_init="1.9", entmax_alpha_max=1.5))
    with pytest.raises(AttentionOptionsError, match="must be below"):
        read_attention_options(Namespace(entmax_alpha_min=1.6, entmax_alpha_max=1.5))
