"""svdecode.model.kv_cache: the growing layer cache against transformers' DynamicLayer, and the
two streams' caches reordered together in beam search."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from svdecode.model.kv_cache import GrowingLayer, StreamCache, new_cache

# rerun by CI on the other end of the supported transformers range
pytestmark = pytest.mark.compat


def test_growing_layer_matches_dynamic_layer():
    """Same keys/values as transformers' DynamicLayer through prefill, steps past the spare
    capacity, crop, beam reordering and batch selection; decode steps append in place."""
    torch.manual_seed(0)
    ours, ref = GrowingLayer(), DynamicLayer()

    def step(n_new: int) -> None:
        k, v = torch.randn(4, 2, n_new, 3), torch.randn(4, 2, n_new, 3)
        got, want = ours.update(k, v), ref.update(k, v)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)

    step(5)
    buf = ours._kbuf
    for _ in range(GrowingLayer.MIN_SPARE):
        step(1)
    assert ours._kbuf is buf  # appended in place, no regrowth within the spare capacity
    step(1)
    assert (
        ours._kbuf is not buf
        and ours.get_seq_length() == ref.get_seq_length() == 5 + GrowingLayer.MIN_SPARE + 1
    )
    ours.crop(-3)
    ref.crop(-3)
    step(2)
    beam = torch.tensor([2, 2, 0, 1])
    ours.reorder_cache(beam)
    ref.reorder_cache(beam)
    step(1)
    ours.batch_select_indices(torch.tensor([3, 1, 0, 2]))
    ref.batch_select_indices(torch.tensor([3, 1, 0, 2]))
    step(1)
    assert ours.get_seq_length() == ref.get_seq_length()


def _filled(batch: int, length: int, seed: int) -> DynamicCache:
    cache = DynamicCache()
    gen = torch.Generator().manual_seed(seed)
    cache.update(
        torch.randn(batch, 2, length, 3, generator=gen), torch.randn(batch, 2, length, 3, generator=gen), 0
    )
    return cache


def test_a_joint_stream_cache_reorders_adapted_and_base_rows_alike():
    """Joint layout: rows [adapted 0..B-1; base 0..B-1]; a beam reorder applies to both halves."""
    cache = _filled(4, 3, seed=0)
    keys = cache.layers[0].keys.clone()
    sc = StreamCache([cache], joint=True)
    sc.reorder_cache(torch.tensor([1, 1]))
    assert torch.equal(cache.layers[0].keys, keys[[1, 1, 3, 3]])
    assert sc.get_seq_length() == 3 and not sc.is_empty()


def test_separate_stream_caches_reorder_each_and_report_the_base_length():
    adapted, base = _filled(2, 5, seed=1), _filled(2, 3, seed=2)  # the adapted one holds 2 virtual tokens
    ka, kb = adapted.layers[0].keys.clone(), base.layers[0].keys.clone()
    sc = StreamCache([adapted, base], joint=False, prefix_len=2)
    sc.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(adapted.layers[0].keys, ka[[1, 0]]) and torch.equal(base.layers[0].keys, kb[[1, 0]])
    assert sc.get_seq_length() == 3
    assert StreamCache([DynamicCache()], joint=True).is_empty()


def test_new_cache_uses_growing_layers_for_full_attention(tokenizer):
    model = make_model(len(tokenizer), layers=2)
    cache = new_cache(model)
    assert [type(layer) for layer in cache.layers] == [GrowingLayer, GrowingLayer]
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        full = model(input_ids=ids).logits
        model(input_ids=ids[:, :3], past_key_values=cache)
        last = model(input_ids=ids[:, 3:], past_key_values=cache).logits
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
