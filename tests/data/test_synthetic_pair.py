"""The synthetic pairs: gold alignments follow each target word to its source word, in both grammars."""

import pytest

from sparse_attn_fairseq.data.synthetic_pair import Lexicon, ReverseGenerator, generate_split, write_corpus


@pytest.mark.parametrize("task", ["svo", "reverse"])
def test_alignments_link_each_target_word_to_its_translation(task):
    lexicon = Lexicon.build()
    translation = {}
    for word_class, words in lexicon.source.items():
        for index, word in enumerate(words):
            translation[word] = lexicon.translate(word_class, index)[1]
    for source, target, alignment in generate_split(lexicon, 50, seed=7, task=task):
        source_words, target_words = source.split(), target.split()
        assert sorted(j for _, j in alignment) == list(range(len(target_words)))  # every target word, once
        for i, j in alignment:
            assert target_words[j] in translation[source_words[i]]


def test_reverse_task_is_long_and_reversed():
    pairs = generate_split(Lexicon.build(), 200, seed=3, task="reverse")
    lengths = [len(source.split()) for source, _, _ in pairs]
    assert min(lengths) >= ReverseGenerator.LENGTHS[0] and max(lengths) <= ReverseGenerator.LENGTHS[1]
    assert max(lengths) - min(lengths) >= 15
    for source, target, alignment in pairs:
        # target order is source order reversed: later source words align to earlier target words
        by_target = [i for i, _ in sorted(alignment, key=lambda link: link[1])]
        assert by_target == sorted(by_target, reverse=True)


def test_unknown_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'mirror'"):
        write_corpus(tmp_path, {"train": 1}, task="mirror")
