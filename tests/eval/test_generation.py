"""svdecode.eval.generation: greedy generation at zero strength is the adapted model's."""

from __future__ import annotations

import pytest
from evalkit import (
    CS_EXAMPLES,
    _one_thread,  # noqa: F401 (autouse fixture)
    make_steered,
)

from svdecode import eval as ev
from svdecode.eval import generation
from svdecode.model.steered_model import SteeredModel


@pytest.fixture(scope="module")
def model() -> SteeredModel:
    return make_steered()


def test_greedy_generation_at_zero_strength_is_shared_with_the_adapted_model():
    """A guard that turned steering off leaves mu = 0: greedy output is the adapted model's (the
    argmax is always kept), so the evaluation generates it once."""
    peft = ev.MethodSpec("peft", "adapted")
    off = ev.MethodSpec("peft+svdecode", "svdecode", mu=0.0)
    assert off.key(scoring=False) == peft.key(scoring=False)
    assert off.key(scoring=True) != peft.key(scoring=True)  # scoring still differs (mask renormalises)
    assert ev.MethodSpec("a", "svdecode", mu=0.5).key(False) != peft.key(False)
    assert ev.MethodSpec("b", "svdecode", mu=0.0, lam=-10.0).key(False) != peft.key(False)
    beam = ev.DECODINGS["beam4"]
    assert ev.MethodSpec("c", "svdecode", mu=0.0, decoding=beam).key(False) != ev.MethodSpec(
        "d", "adapted", decoding=beam
    ).key(False)


def test_zero_strength_greedy_generation_equals_the_adapted_model(model):
    off = ev.MethodSpec("peft+svdecode", "svdecode", mu=0.0)
    prompts = [ex.prompt for ex in CS_EXAMPLES]
    ids = [ex.id for ex in CS_EXAMPLES]
    steered = [
        t
        for _, texts in generation.generate_batches(model, off, prompts, ids, 2, 6, False, "x")
        for t in texts
    ]
    plain = [
        t
        for _, texts in generation.generate_batches(
            model, ev.MethodSpec("peft", "adapted"), prompts, ids, 2, 6, False, "x"
        )
        for t in texts
    ]
    assert steered == plain
