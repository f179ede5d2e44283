"""KV caches for the two logit streams: :class:`StreamCache` holds both streams' caches (reordered
together in beam search) and :class:`GrowingLayer` appends each new token in place instead of
re-concatenating the whole layer cache every step.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class StreamCache:
    """The KV caches of both streams, reordered together during beam search.

    ``joint`` layout: one cache whose batch is ``[adapted rows; base rows]`` (mixed LoRA);
    otherwise one cache per stream. ``generate()`` sees this object as its cache and only calls
    ``reorder_cache`` (beam search) and ``get_seq_length`` on it.
    """

    def __init__(self, caches: list[DynamicCache], joint: bool, prefix_len: int = 0):
        self.caches = caches
        self.joint = joint
        self.prefix_len = prefix_len  # virtual tokens held by the adapted stream's cache

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # the base stream never holds virtual tokens, so it gives the real length
        return self.caches[-1].get_seq_length(layer_idx)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.joint:
            batch = beam_idx.shape[0]
            self.caches[0].reorder_cache(torch.cat([beam_idx, beam_idx + batch]))
        else:
            for cache in self.caches:
                cache.reorder_cache(beam_idx)

    def is_empty(self) -> bool:
        return self.caches[-1].get_seq_length() == 0


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends new keys/values into spare capacity.

    ``DynamicLayer`` re-concatenates the whole layer cache for every new token (O(length) copy
    and a fresh allocation per step); the joint ``[adapted; base]`` cache doubles that cost. Here
    ``keys``/``values`` are views of buffers that grow geometrically, so a decode step copies only
    the new token. Anything that replaces ``keys`` from outside (transformers' batch selection,
    repetition) is picked up on the next ``update``.
    """

    GROWTH = 1.5
    MIN_SPARE = 64  # tokens of headroom on the first allocation: a typical generation never regrows

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._kview: torch.Tensor | None = None  # the keys view last handed out

    def _owns_views(self) -> bool:
        return self._kbuf is not None and self.keys is self._kview

    def _regrow(self, held: int, needed: int, like_k: torch.Tensor, like_v: torch.Tensor) -> None:
        old_cap = self._kbuf.shape[-2] if self._owns_views() else 0
        cap = max(needed + self.MIN_SPARE, int(old_cap * self.GROWTH))
        kbuf = like_k.new_empty(*like_k.shape[:-2], cap, like_k.shape[-1])
        vbuf = like_v.new_empty(*like_v.shape[:-2], cap, like_v.shape[-1])
        if held:
            kbuf[..., :held, :].copy_(self.keys)
            vbuf[..., :held, :].copy_(self.values)
        self._kbuf, self._vbuf = kbuf, vbuf

    def _set_views(self, length: int) -> None:
        self.keys = self._kview = self._kbuf[..., :length, :]
        self.values = self._vbuf[..., :length, :]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.get_seq_length()
        needed = held + key_states.shape[-2]
        if not self._owns_views() or needed > self._kbuf.shape[-2]:
            self._regrow(held, needed, key_states, value_states)
        self._kbuf[..., held:needed, :].copy_(key_states)
        self._vbuf[..., held:needed, :].copy_(value_states)
        self._set_views(needed)
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        # a crop slices our view from the start: still our buffer, so keep appending in place
        if self.is_initialized and self._kbuf is not None and self.keys.data_ptr() == self._kbuf.data_ptr():
            self._set_views(self.keys.shape[-2])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.get_seq_length() == 0:
            return
        if not self._owns_views():
            super().reorder_cache(beam_idx)
            return
        idx = beam_idx.to(self._kbuf.device)
        held = self.get_seq_length()
        self._kbuf = self._kbuf.index_select(0, idx)
        self._vbuf = self._vbuf.index_select(0, idx)
        self._set_views(held)


def new_cache(model: torch.nn.Module) -> DynamicCache:
    """An empty KV cache for ``model`` whose full-attention layers are :class:`GrowingLayer`."""
    cache = DynamicCache(config=model.config)
    # sliding-window and other special layers keep their own logic
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
