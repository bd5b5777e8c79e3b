"""Attention statistics against values computed by hand: sparsity with padding, support, null rate, JS divergence."""

import math

import pytest
import torch

from sparse_attn_fairseq.functional.statistics import head_sums, js_divergence_sums


def test_sparsity_support_and_null_rate_ignore_masked_keys_and_padded_queries():
    # (bsz 1, heads 2, queries 2, keys 3); key 2 is padding, query 1 is padding (its row must not count)
    weights = torch.tensor([[[[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]],
                             [[1.0, 0.0, 0.0], [0.3, 0.3, 0.4]]]])
    key_mask = torch.tensor([False, False, True]).view(1, 1, 1, 3)
    sums = head_sums(weights, key_mask, query_padding=torch.tensor([[False, True]]))
    assert sums.queries.tolist() == [1, 1] and sums.unmasked.tolist() == [2, 2]
    assert sums.zero_fraction.tolist() == [0.0, 0.5]
    assert sums.mean_support.tolist() == [2.0, 1.0] and sums.mean_relative_support.tolist() == [1.0, 0.5]
    assert sums.null_rate.tolist() == [0.0, 0.0]


def test_null_rows_and_batches_add_up():
    relu_weights = torch.tensor([[[[0.0, 0.0], [0.7, 0.0]]]])  # one head: a null row, then a row with one key
    total = head_sums(relu_weights) + head_sums(torch.tensor([[[[0.2, 0.9], [0.0, 0.0]]]]))
    assert total.queries.tolist() == [4] and total.null_rate.tolist() == [0.5]
    assert total.zero_fraction.tolist() == [5 / 8] and total.mean_support.tolist() == [3 / 4]


def _js(*rows, key_mask=None):
    weights = torch.tensor(rows, dtype=torch.float64).view(1, len(rows), 1, -1)
    total, count = js_divergence_sums(weights, key_mask)
    return total / count if count else None


def test_js_divergence_on_known_distributions():
    assert _js([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)  # disjoint heads: the maximum
    assert _js([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)  # identical heads
    h = lambda *p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    expected = (h(0.75, 0.25) - (h(1.0, 0.0) + h(0.5, 0.5)) / 2) / math.log(2)
    assert _js([1.0, 0.0], [0.5, 0.5]) == pytest.approx(expected)
    # log base n with n the unmasked keys: a masked third key changes nothing
    assert _js([1.0, 0.0, 0.0], [0.5, 0.5, 0.0], key_mask=torch.tensor([False, False, True])) == pytest.approx(
        expected)
    # unnormalised (ReLA) rows are normalised, null heads take no part, a query with one live head is skipped
    assert _js([2.0, 0.0], [1.0, 1.0], [0.0, 0.0]) == pytest.approx(expected)
    assert _js([2.0, 0.0], [0.0, 0.0]) is None


def test_js_divergence_skips_padded_queries():
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2).expand(1, 2, 2, 2).clone()
    total, count = js_divergence_sums(weights, query_padding=torch.tensor([[False, True]]))
    assert count == 1 and total == pytest.approx(1.0)
