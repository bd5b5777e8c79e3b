"""The streaming task's batches: rebuilt into streams, every token of a split is predicted exactly once and in order,
on one rank and on two; inputs are the targets shifted by one; padding is not counted."""

import pytest
import torch
from omegaconf import OmegaConf

from sparse_attn_fairseq.data.token_streams import TokenStreams
from sparse_attn_fairseq.tasks.truncated_bptt_lm import TruncatedBPTTLMConfig, TruncatedBPTTLMTask
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def stream_bin(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    run_cli("python", "-m", "sparse_attn_fairseq.data.synthetic_stream", root / "raw", "--tokens", "2000",
            "--period", "7", "--repeats", "2")
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", root / "raw/train.txt", "--validpref",
            root / "raw/valid.txt", "--destdir", root / "bin", "--workers", "1")
    return root / "bin"


def make_task(data, rank=0, world=1, batch_size=3, block=10):
    cfg = OmegaConf.structured(TruncatedBPTTLMConfig(data=str(data), tokens_per_sample=block))
    cfg.batch_size, cfg.batch_size_valid = batch_size, batch_size + 1
    cfg.data_parallel_rank, cfg.data_parallel_size = rank, world
    return TruncatedBPTTLMTask(cfg)


def corpus(task, split):
    from fairseq.data import data_utils

    data = data_utils.load_indexed_dataset(f"{task.cfg.data}/{split}", task.dictionary)
    return torch.cat([data[i].long() for i in range(len(data))])


def rebuilt_streams(task, split):
    """Each row's targets over the epoch, in batch order, padding dropped; and the batches."""
    task.load_dataset(split)
    batches = list(task.get_batch_iterator(task.dataset(split)).next_epoch_itr(shuffle=True))  # never shuffled
    pad = task.dictionary.pad()
    rows = batches[0]["target"].size(0)
    streams = [torch.cat([b["target"][r][b["target"][r] != pad] for b in batches]) for r in range(rows)]
    return streams, batches


@pytest.mark.parametrize("split", ["train", "valid"])
@pytest.mark.parametrize("world", [1, 2])
def test_every_token_is_predicted_once_and_in_order(stream_bin, split, world):
    parts, positions = [], []
    for rank in range(world):
        task = make_task(stream_bin, rank, world)
        streams, batches = rebuilt_streams(task, split)
        assert len(streams) == (3 if split == "train" else 4)  # --batch-size, --batch-size-valid streams per rank
        parts.extend(streams)
        positions.append([b["net_input"]["stream"] for b in batches])
        for b in batches:
            src, tgt, pad = b["net_input"]["src_tokens"], b["target"], task.dictionary.pad()
            assert b["ntokens"] == int(tgt.ne(pad).sum()) and torch.equal(src.ne(pad), tgt.ne(pad))
            assert torch.equal(src[:, 1:][tgt[:, 1:] != pad], tgt[:, :-1][tgt[:, 1:] != pad])  # shifted by one
    assert torch.equal(torch.cat(parts), corpus(task, split))  # streams in order, every token exactly once
    lengths = [len(s) for s in parts]
    assert max(lengths) - min(lengths) <= 1
    assert all([p.block for p in ranks] == list(range(len(ranks))) for ranks in positions)
    assert all(p.group == split for ranks in positions for p in ranks)
    assert len({len(ranks) for ranks in positions}) == 1  # every rank runs the same number of batches


def test_first_input_is_the_beginning_of_stream_token_and_blocks_continue():
    streams = TokenStreams(torch.arange(10, 33), block=4, streams_per_shard=2, bos=2, pad=1)
    first, second = streams[0], streams[1]
    assert first["inputs"][0].tolist() == [2, 10, 11, 12] and first["targets"][0].tolist() == [10, 11, 12, 13]
    assert second["inputs"][0].tolist() == [13, 14, 15, 16]  # the next block continues the stream
    assert first["inputs"][1, 0] == 20  # stream 2 starts at token 21 and sees token 20 before it
    last = streams[len(streams) - 1]
    assert (last["targets"] == 1).any()  # the short last block is padded


@pytest.mark.parametrize("kwargs,message", [
    (dict(tokens=torch.arange(3), block=4, streams_per_shard=4), "fewer than the 4 streams"),
    (dict(tokens=torch.arange(30), block=0, streams_per_shard=2), "sizes must be >= 1"),
    (dict(tokens=torch.arange(30), block=4, streams_per_shard=2, shard_id=2, num_shards=2), "shard_id"),
])
def test_bad_sizes_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenStreams(**kwargs)


@pytest.mark.parametrize("block,batch_size,message", [
    (0, 3, "--tokens-per-sample=0: must be >= 1"),
    (10, 0, "--batch-size \\(streams per rank\\) is required by truncated_bptt_lm, got 0"),
])
def test_bad_task_flags_are_named(stream_bin, block, batch_size, message):
    with pytest.raises(ValueError, match=message):
        task = make_task(stream_bin, block=block, batch_size=batch_size)
        task.load_dataset("train")
