"""The streaming language-modelling task ``truncated_bptt_lm`` (flags as in fairseq's examples/truncated_bptt).

Each split's corpus is one token stream, cut into ``--batch-size`` parallel streams per rank (data/token_streams.py);
batch i holds block i (``--tokens-per-sample`` tokens) of each, in order, never shuffled. Every token is predicted
exactly once, so the loss over a valid or test split, in bits, is bits per token: bits per character for
character- or byte-level data. Batches carry a :class:`StreamPosition`; a model with a memory
(``transformer_lm_adaptive_span``) keeps one per split, so validation never sees training tokens. Any other
fairseq language model runs too, without memory.

Differences from fairseq's example task: the target of a block's last token is the next block's first token (the
example pads it, so one token per block is never predicted), the remainder that does not divide into the streams is
kept rather than dropped, padding is not counted in ``ntokens``, and valid and test splits use
``--batch-size-valid``.
"""

# No `from __future__ import annotations`: omegaconf reads the config field types at runtime.

import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import Dictionary, FairseqDataset, data_utils, iterators
from fairseq.dataclass import FairseqDataclass
from fairseq.distributed import utils as dist_utils
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from sparse_attn_fairseq.data.token_streams import TokenStreams
from sparse_attn_fairseq.modules.stream_memory import StreamPosition

logger = logging.getLogger(__name__)


@dataclass
class TruncatedBPTTLMConfig(FairseqDataclass):
    data: str = field(default="???", metadata={"help": "path to the data directory (fairseq-preprocess output)"})
    tokens_per_sample: int = field(default=1024, metadata={"help": "block length: tokens per stream per batch"})
    batch_size: Optional[int] = II("dataset.batch_size")
    batch_size_valid: Optional[int] = II("dataset.batch_size_valid")
    max_target_positions: int = II("task.tokens_per_sample")
    data_parallel_rank: Optional[int] = None  # filled in from the distributed setup when not given
    data_parallel_size: Optional[int] = None


@register_task("truncated_bptt_lm", dataclass=TruncatedBPTTLMConfig)
class TruncatedBPTTLMTask(FairseqTask):
    """Language modelling over parallel token streams in blocks (see the module docstring)."""

    def __init__(self, cfg: TruncatedBPTTLMConfig):
        super().__init__(cfg)
        self.models_take_stream = True
        if cfg.data_parallel_rank is None or cfg.data_parallel_size is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            cfg.data_parallel_rank = dist_utils.get_data_parallel_rank() if distributed else 0
            cfg.data_parallel_size = dist_utils.get_data_parallel_world_size() if distributed else 1
        if cfg.tokens_per_sample < 1:
            raise ValueError(f"--tokens-per-sample={cfg.tokens_per_sample}: must be >= 1")
        paths = utils.split_paths(cfg.data)
        if not paths:
            raise ValueError("no data directory given")
        self.dictionary = Dictionary.load(os.path.join(paths[0], "dict.txt"))
        logger.info(f"dictionary: {len(self.dictionary)} types")

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        return cls(cfg)

    def build_model(self, cfg, from_checkpoint=False):
        """The model; batches tell it their stream position only if it keeps a memory (``takes_stream_position``):
        fairseq's own language models run without one."""
        model = super().build_model(cfg, from_checkpoint)
        self.models_take_stream = getattr(model, "takes_stream_position", False)
        return model

    def streams_per_rank(self, split: str) -> int:
        size = self.cfg.batch_size if split == "train" else (self.cfg.batch_size_valid or self.cfg.batch_size)
        if not size or size < 1:
            raise ValueError(f"--batch-size (streams per rank) is required by truncated_bptt_lm, got {size!r}")
        return int(size)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        """Read ``split`` as one token stream and cut it into this rank's streams."""
        paths = utils.split_paths(self.cfg.data)
        split_path = os.path.join(paths[(epoch - 1) % len(paths)], split)
        data = data_utils.load_indexed_dataset(split_path, self.dictionary, combine=combine)
        if data is None:
            raise FileNotFoundError(f"Dataset not found: {split} ({split_path})")
        tokens = torch.cat([data[i].long() for i in range(len(data))]) if len(data) else torch.zeros(0, dtype=torch.long)
        streams = TokenStreams(tokens, self.cfg.tokens_per_sample, self.streams_per_rank(split),
                               self.cfg.data_parallel_rank, self.cfg.data_parallel_size, bos=self.dictionary.eos(),
                               pad=self.dictionary.pad(), name=split)
        self.datasets[split] = streams
        logger.info(f"{split}: {tokens.numel():,} tokens in {self.streams_per_rank(split)} streams per rank x "
                    f"{self.cfg.data_parallel_size} ranks, {len(streams)} blocks of {self.cfg.tokens_per_sample}; "
                    "every token is predicted once, so the loss in base 2 is bits per token (per character on "
                    "character data)")

    def dataset(self, split: str):
        if split not in self.datasets:
            raise KeyError(f"split {split!r} is not loaded")
        return self.datasets[split]

    def get_batch_iterator(self, dataset, num_workers=0, epoch=1, data_buffer_size=0, skip_remainder_batch=False,
                           **kwargs):
        """Streams: their blocks in order, one batch per item, already sharded. Other datasets (prompts to
        generate from): fairseq's batching."""
        if not isinstance(dataset, TokenStreams):
            return super().get_batch_iterator(dataset, num_workers=num_workers, epoch=epoch,
                                              data_buffer_size=data_buffer_size,
                                              skip_remainder_batch=skip_remainder_batch, **kwargs)
        return iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=lambda items: self._collate(dataset, items), batch_sampler=[[i] for i in
                                                                                                   range(len(dataset))],
            num_workers=num_workers, epoch=epoch, buffer_size=data_buffer_size, disable_shuffling=True,
            skip_remainder_batch=skip_remainder_batch)

    def _collate(self, dataset: TokenStreams, items: List[dict]) -> dict:
        (item,) = items
        inputs, targets = item["inputs"], item["targets"]
        real = targets.ne(self.dictionary.pad())
        net_input = {"src_tokens": inputs, "src_lengths": real.sum(1)}
        if self.models_take_stream:
            net_input["stream"] = StreamPosition(dataset.name, item["index"])
        return {
            "id": torch.full((inputs.size(0),), item["index"], dtype=torch.long),
            "net_input": net_input,
            "target": targets,
            "nsentences": inputs.size(0),
            "ntokens": int(real.sum()),
        }

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        """Prompts to continue (fairseq-interactive, the hub interface): each line without its end-of-line token."""
        eos = self.dictionary.eos()
        prompts = [t[:-1] if t.numel() and t[-1] == eos else t for t in src_tokens]
        return PromptDataset(prompts, self.dictionary.pad())

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        if constraints is not None:
            raise NotImplementedError("constrained decoding is not supported by truncated_bptt_lm")
        with torch.no_grad():
            if prefix_tokens is None and sample["net_input"]["src_tokens"].nelement():
                prefix_tokens = sample["net_input"]["src_tokens"]  # generation continues the prompt
            return generator.generate(models, sample, prefix_tokens=prefix_tokens, bos_token=self.dictionary.eos())

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None, num_shards=1,
                           shard_id=0, num_workers=1, data_buffer_size=10, context_window=0):
        if context_window > 0:
            raise ValueError("--context-window does not apply to truncated_bptt_lm: every token is scored once, with "
                             "the model's memory of the tokens before it as context")
        return self.get_batch_iterator(dataset, num_workers=num_workers,
                                       data_buffer_size=data_buffer_size).next_epoch_itr(shuffle=False)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary


class PromptDataset(FairseqDataset):
    """Token prompts, batched by fairseq for generation; ``src_tokens`` are right-padded."""

    def __init__(self, prompts: List[torch.Tensor], pad: int):
        self.prompts, self.pad = prompts, pad
        self.sizes = np.array([len(p) for p in prompts], dtype=np.int64)

    def __getitem__(self, index):
        return {"id": index, "source": self.prompts[index]}

    def __len__(self):
        return len(self.prompts)

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def collater(self, samples):
        if not samples:
            return {}
        tokens = data_utils.collate_tokens([s["source"] for s in samples], self.pad) \
            if max(len(s["source"]) for s in samples) else torch.zeros(len(samples), 0, dtype=torch.long)
        return {"id": torch.tensor([s["id"] for s in samples]), "nsentences": len(samples),
                "ntokens": int(tokens.ne(self.pad).sum()),
                "net_input": {"src_tokens": tokens, "src_lengths": tokens.ne(self.pad).sum(1)}, "target": None}
