"""Gold alignment parsing, subword-to-word mapping, alignments read off attention, and AER, against hand values."""

import pytest
import torch

from sparse_attn_fairseq.analyze.alignment import (
    AlignmentFileError, GoldAlignment, aer, parse_links, read_gold, word_alignment, word_ids,
)


def test_pharaoh_links_are_zero_based_and_all_sure():
    gold = parse_links("0-0 2-1 1-1", "pharaoh")
    assert gold.sure == gold.possible == {(0, 0), (2, 1), (1, 1)}


def test_talp_links_are_one_based_with_possible_links():
    gold = parse_links("1-1 3p2 2-2", "talp")
    assert gold.sure == {(0, 0), (1, 1)} and gold.possible == {(0, 0), (1, 1), (2, 1)}
    with pytest.raises(ValueError, match="'0-1' is not 1-based"):
        parse_links("0-1", "talp")
    with pytest.raises(ValueError, match="malformed link '1p2'"):
        parse_links("1p2", "pharaoh")


def test_aer_with_sure_and_possible_links_by_hand():
    golds = [GoldAlignment({(0, 0)}, {(0, 0), (1, 1)}), GoldAlignment({(0, 0), (1, 0)}, {(0, 0), (1, 0)})]
    hypotheses = [{(0, 0), (1, 1)}, {(0, 0), (0, 1)}]
    # |A| = 4, |S| = 3, |A n S| = 1 + 1, |A n P| = 2 + 1
    assert aer(hypotheses, golds) == pytest.approx(1 - (2 + 3) / (4 + 3))
    assert aer([{(0, 0)}], [GoldAlignment({(0, 0)}, {(0, 0)})]) == 0.0


def test_aer_with_empty_alignments():
    # an empty sentence adds nothing; a missing hypothesis link costs recall; all empty is 0/0 and refused
    golds = [GoldAlignment({(0, 0)}, {(0, 0)}), GoldAlignment()]
    assert aer([{(0, 0)}, set()], golds) == 0.0
    assert aer([set(), set()], golds) == 1.0
    assert aer([set(), {(0, 1)}], golds) == 1.0
    with pytest.raises(ValueError, match="undefined"):
        aer([set()], [GoldAlignment()])
    with pytest.raises(ValueError, match="1 hypothesis alignments for 2"):
        aer([set()], golds)


def test_subword_pieces_map_to_words_in_both_styles():
    assert word_ids(["\u2581the", "\u2581un", "believ", "able", "\u2581cat"], "sentencepiece") == [0, 1, 1, 1, 2]
    assert word_ids(["a", "\u2581b"], "sentencepiece") == [0, 1]  # a first piece without the marker still starts
    assert word_ids(["the", "un@@", "believ@@", "able", "cat"], "subword-nmt") == [0, 1, 1, 1, 2]
    with pytest.raises(ValueError, match="unknown piece style"):
        word_ids(["a"], "bpe")


def test_word_alignment_sums_source_pieces_and_averages_target_pieces():
    # target pieces: [w0, w1a, w1b]; source pieces: [s0, s1a, s1b]
    attention = torch.tensor([[0.6, 0.2, 0.2],   # w0: s0 0.6 vs s1 0.4 -> s0
                              [0.5, 0.3, 0.2],   # w1 (two pieces): s0 (0.5 + 0.1) / 2 = 0.3, s1 (0.5 + 0.9) / 2
                              [0.1, 0.0, 0.9]])
    assert word_alignment(attention, [0, 1, 1], [0, 1, 1]) == {(0, 0), (1, 1)}
    null = torch.tensor([[0.0, 0.0], [0.0, 2.0]])  # ReLA: the first target word attends to nothing
    assert word_alignment(null, [0, 1], [0, 1]) == {(1, 1)}


def test_gold_file_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "gold.talp"
    path.write_bytes("1-1 2p2\n3-1\n".encode("latin-1"))
    assert [g.sure for g in read_gold(path, "talp", "latin-1")] == [{(0, 0)}, {(2, 0)}]
    with pytest.raises(AlignmentFileError, match="gold.talp: 2 lines for 3 sentences"):
        read_gold(path, "talp", lengths=[(2, 2)] * 3)
    with pytest.raises(AlignmentFileError, match=r"gold.talp, line 2: link 2-0 \(0-based\) is out of range"):
        read_gold(path, "talp", lengths=[(2, 2), (2, 2)])
    path.write_text("0-0\n0-x\n")
    with pytest.raises(AlignmentFileError, match="line 2: malformed link '0-x'"):
        read_gold(path)
    with pytest.raises(AlignmentFileError, match="no such alignment file"):
        read_gold(tmp_path / "missing")
    path.write_bytes(b"\xff\xfe0-0\n")
    with pytest.raises(AlignmentFileError, match="not utf-8 text"):
        read_gold(path)
