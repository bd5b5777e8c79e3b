"""Teacher-forced passes of a fairseq translation model over a data subset, collecting what every head does.

Works for this package's attention module and for fairseq's own ``MultiheadAttention`` (stock ``transformer``): both
honour ``need_head_weights``; the stock module's fused path averages the heads, so it is bypassed through fairseq's own
``skip_embed_dim_check`` switch, which runs fairseq's reference computation instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from sparse_attn_fairseq.analyze.alignment import Link, word_alignment, word_ids
from sparse_attn_fairseq.functional.statistics import HeadSums, head_sums, js_divergence_sums

# fairseq's attention types and where they live in a layer
ATTENTION_TYPES = {"encoder": ("encoder", "self_attn"), "decoder": ("decoder", "self_attn"),
                   "encoder_decoder": ("decoder", "encoder_attn")}


def attention_modules(model: nn.Module) -> Iterator[tuple[str, int, nn.Module]]:
    """(attention type, layer index, attention module) of a Transformer (translation model or language model)."""
    for attention_type, (part, name) in ATTENTION_TYPES.items():
        for layer_index, layer in enumerate(getattr(getattr(model, part, None), "layers", None) or []):
            module = getattr(layer, name, None)
            if module is not None:
                yield attention_type, layer_index, module


def capture_head_weights(module: nn.Module, record: Callable[[Tensor, Tensor | None, Tensor | None], None]) -> None:
    """Make ``module`` compute per-head weights on every call and hand them to ``record(weights (H, bsz, T, S),
    key_padding_mask, attn_mask)``; its callers still get what they asked for."""
    original = module.forward
    if hasattr(module, "skip_embed_dim_check"):
        module.skip_embed_dim_check = True  # fairseq's MultiheadAttention: its reference path, per-head weights

    def forward(query, key, value, key_padding_mask=None, incremental_state=None, need_weights=True,
                static_kv=False, attn_mask=None, before_softmax=False, need_head_weights=False):
        out, weights = original(query, key, value, key_padding_mask=key_padding_mask,
                                incremental_state=incremental_state, need_weights=True, static_kv=static_kv,
                                attn_mask=attn_mask, before_softmax=before_softmax, need_head_weights=True)
        record(weights.detach(), key_padding_mask, attn_mask)
        if need_head_weights:
            return out, weights
        return out, weights.mean(dim=0) if need_weights else None

    module.forward = forward


def capture_dynamic_spans(module: nn.Module, record: Callable[[Tensor], None]) -> None:
    """Hand every per-token span (bsz, H, T) a dynamic adaptive span of ``module`` computes to ``record``."""
    span = getattr(module, "span", None)
    if span is None or not span.dynamic:
        return
    original = span.spans

    def spans(query_features=None):
        result = original(query_features)
        record(result.detach())
        return result

    span.spans = spans


def masked_keys(bsz: int, key_padding_mask: Tensor | None, attn_mask: Tensor | None) -> Tensor | None:
    """Bool mask broadcastable to (bsz, H, T, S), True where a key is masked (padding, or -inf in attn_mask)."""
    mask = None
    if attn_mask is not None:
        mask = (attn_mask == float("-inf")) if attn_mask.is_floating_point() else attn_mask.bool()
        mask = mask.view(1, 1, *attn_mask.shape[-2:])
    if key_padding_mask is not None:
        padding = key_padding_mask.bool()
        padding = padding.repeat_interleave(bsz // padding.size(0), dim=0) if padding.size(0) != bsz else padding
        padding = padding.view(bsz, 1, 1, -1)
        mask = padding if mask is None else mask | padding
    return mask


@dataclass
class LayerStats:
    """Running sums of one attention type and layer."""

    sums: HeadSums | None = None
    js_total: float = 0.0
    js_queries: int = 0

    def add(self, weights: Tensor, key_mask: Tensor | None, query_padding: Tensor | None) -> None:
        sums = head_sums(weights, key_mask, query_padding)
        self.sums = sums if self.sums is None else self.sums + sums
        total, count = js_divergence_sums(weights, key_mask, query_padding)
        self.js_total, self.js_queries = self.js_total + total, self.js_queries + count

    @property
    def js(self) -> float | None:
        return self.js_total / self.js_queries if self.js_queries else None


@dataclass
class Collection:
    """What the passes saw: statistics per (attention type, layer), and each sentence's predicted word links per
    cross-attention layer and head, read normally and shifted."""

    stats: dict[tuple[str, int], LayerStats] = field(default_factory=dict)
    # dynamic spans of real query tokens per (attention type, layer): a list of (H, tokens) tensors
    token_spans: dict[tuple[str, int], list[Tensor]] = field(default_factory=dict)
    # (mode, layer, head) -> {sentence id: links}; head -1 is the head average
    links: dict[tuple[str, int, int], dict[int, set[Link]]] = field(default_factory=dict)
    sentences: int = 0
    # cross-attention of chosen sentences: {"title", "weights" (H, T, S) lists, "source", "target"} per layer
    maps: list[dict] = field(default_factory=list)


def cross_attention_links(weights: Tensor, source: list[str], target: list[str], piece_style: str,
                          ) -> dict[tuple[str, int], set[Link]]:
    """Links per (mode, head) of one sentence from its cross-attention (H, T, S) over real tokens (eos last on both
    sides). "normal": target token t's own step (the one predicting it); "shifted": the next step, which reads t."""
    src_words = word_ids(source[:-1], piece_style)
    tgt_words = word_ids(target[:-1], piece_style)
    n_tgt, n_src = len(tgt_words), len(src_words)
    steps = {"normal": weights[:, :n_tgt, :n_src], "shifted": weights[:, 1:n_tgt + 1, :n_src]}
    links = {}
    for mode, rows in steps.items():
        for head in range(-1, rows.size(0)):
            attention = rows.mean(0) if head == -1 else rows[head]
            links[mode, head] = word_alignment(attention, src_words, tgt_words) if n_tgt and n_src else set()
    return links


def head_parameters(module: nn.Module) -> dict[str, list[float]]:
    """Learned per-head parameters of an attention module: alpha (entmax), span in tokens (static span)."""
    found = {}
    alpha = getattr(getattr(module, "normalizer", None), "alpha", None)
    if callable(alpha):
        found["alpha"] = [float(a) for a in alpha().detach()]
    span = getattr(module, "span", None)
    if span is not None and not span.dynamic:
        found["span"] = [float(s) for s in span.current_spans()]
    return found


@torch.no_grad()
def collect(model: nn.Module, batches, source_dict, target_dict, piece_style: str = "auto",
            progress: Callable[[int], None] | None = None, map_sentences: frozenset[int] = frozenset()) -> Collection:
    """Teacher-forced passes over ``batches`` (fairseq samples) in eval mode; see :class:`Collection`. The
    cross-attention of the sentences with ids in ``map_sentences`` is kept whole, for attention maps."""
    model.eval()
    records: list[tuple[str, int, Tensor, Tensor | None, Tensor | None]] = []
    span_records: list[tuple[str, int, Tensor]] = []
    for attention_type, layer, module in attention_modules(model):
        capture_head_weights(module, lambda w, kpm, am, t=attention_type, i=layer: records.append((t, i, w, kpm, am)))
        capture_dynamic_spans(module, lambda spans, t=attention_type, i=layer: span_records.append((t, i, spans)))
    collection = Collection()
    for sample in batches:
        records.clear()
        span_records.clear()
        net_input = sample["net_input"]
        model(**net_input)
        src_pad = net_input["src_tokens"].eq(source_dict.pad())  # (bsz, src_len)
        # the decoder reads prev_output_tokens (translation) or src_tokens (language model)
        tgt_pad = net_input.get("prev_output_tokens", net_input["src_tokens"]).eq(target_dict.pad())
        for attention_type, layer, weights, key_padding_mask, attn_mask in records:
            weights = weights.transpose(0, 1).float()  # (bsz, H, T, S)
            query_padding = src_pad if attention_type == "encoder" else tgt_pad
            key_mask = masked_keys(weights.size(0), key_padding_mask, attn_mask)
            collection.stats.setdefault((attention_type, layer), LayerStats()).add(weights, key_mask, query_padding)
            if attention_type == "encoder_decoder":
                _add_links(collection, layer, weights, sample, src_pad, tgt_pad, source_dict, target_dict,
                           piece_style, map_sentences)
        for attention_type, layer, spans in span_records:  # (bsz, H, T)
            real = ~(src_pad if attention_type == "encoder" else tgt_pad)  # (bsz, T)
            collection.token_spans.setdefault((attention_type, layer), []).append(spans.transpose(0, 1)[:, real])
        collection.sentences += sample["nsentences"]
        if progress is not None:
            progress(sample["nsentences"])
    return collection


def _add_links(collection: Collection, layer: int, weights: Tensor, sample, src_pad: Tensor, tgt_pad: Tensor,
               source_dict, target_dict, piece_style: str, map_sentences: frozenset[int]) -> None:
    src_tokens, target = sample["net_input"]["src_tokens"], sample["target"]
    for b, sentence_id in enumerate(sample["id"].tolist()):
        src_cols = (~src_pad[b]).nonzero().squeeze(-1)
        tgt_rows = (~tgt_pad[b]).nonzero().squeeze(-1)
        source = [source_dict[int(t)] for t in src_tokens[b, src_cols]]
        target_tokens = [target_dict[int(t)] for t in target[b, tgt_rows]]
        style = detect_piece_style(source + target_tokens) if piece_style == "auto" else piece_style
        sentence = weights[b][:, tgt_rows][:, :, src_cols]  # (H, T, S) over real tokens
        for (mode, head), links in cross_attention_links(sentence, source, target_tokens, style).items():
            collection.links.setdefault((mode, layer, head), {})[sentence_id] = links
        if sentence_id in map_sentences:
            collection.maps.append({"title": f"sentence {sentence_id}, cross-attention layer {layer}",
                                    "weights": sentence.tolist(), "source": source, "target": target_tokens})


def detect_piece_style(tokens: list[str]) -> str:
    """sentencepiece or subword-nmt by their markers, else none (every token a word)."""
    if any(t.startswith("\u2581") for t in tokens):
        return "sentencepiece"
    return "subword-nmt" if any(t.endswith("@@") for t in tokens) else "none"
