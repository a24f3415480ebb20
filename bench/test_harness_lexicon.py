"""The word-level sentiment world (scar_bench.lexicon): score semantics, samplers, training, cache, workloads."""
import math
import random

import numpy as np
import pytest

from scar_bench import lexicon as L
from scar_bench import workloads as W

LEX = L.default_lexicon()
POS = max(LEX.positive, key=lambda t: LEX.valence[t])  # a +3 word
NEG = min(LEX.negative, key=lambda t: LEX.valence[t])  # a -3 word
NOT, VERY, NEUTRAL = LEX.negators[0], LEX.intensifiers[0], LEX.neutral[0]


def squash(x: float) -> float:
    return 4 * x / math.sqrt(x * x + 15)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("scar-cache")


@pytest.fixture(scope="module")
def world(cache):
    return L.build("tiny", cache_dir=cache, progress=False)


def test_lexicon_classes_partition_the_words():
    assert (len(LEX.positive), len(LEX.negative), len(LEX.negators), len(LEX.intensifiers)) == (80, 80, 8, 8)
    classes = [LEX.positive, LEX.negative, LEX.negators, LEX.intensifiers, LEX.neutral]
    ids = sorted(t for part in classes for t in part)
    assert ids == list(range(L.N_SPECIAL, L.VOCAB_SIZE))
    assert all(1 <= LEX.valence[t] <= 3 for t in LEX.positive)
    assert all(-3 <= LEX.valence[t] <= -1 for t in LEX.negative)
    assert not LEX.valence[list(LEX.neutral + LEX.negators + LEX.intensifiers)].any()


def test_lexicon_is_deterministic_per_seed():
    again, other = L.build_lexicon(0), L.build_lexicon(1)
    assert again.positive == LEX.positive and np.array_equal(again.valence, LEX.valence)
    assert other.positive != LEX.positive


def test_polar_words_add_up_before_saturation():
    assert L.true_score([]) == 0.0
    assert L.true_score([NEUTRAL] * 5) == 0.0
    assert L.true_score([POS]) == pytest.approx(squash(3.0))
    assert L.true_score([POS, NEUTRAL, NEG]) == pytest.approx(0.0)


def test_negator_flips_the_next_polar_word_within_three_tokens():
    assert L.true_score([NOT, POS]) == pytest.approx(squash(-0.74 * 3))
    assert L.true_score([NOT, NEUTRAL, NEUTRAL, NEG]) == pytest.approx(squash(0.74 * 3))
    # Out of reach: the fourth token after the negator is unaffected.
    assert L.true_score([NOT, NEUTRAL, NEUTRAL, NEUTRAL, POS]) == pytest.approx(squash(3.0))
    # Used up by the first polar word: the second keeps its sign.
    assert L.true_score([NOT, POS, POS]) == pytest.approx(squash(3 - 0.74 * 3))


def test_intensifier_scales_and_composes_with_negation():
    assert L.true_score([VERY, POS]) == pytest.approx(squash(1.3 * 3))
    assert L.true_score([NOT, VERY, POS]) == pytest.approx(squash(-0.74 * 1.3 * 3))
    # Non-additive: deleting the negator changes the polar word's contribution, not just its own.
    assert L.true_score([NOT, POS]) - L.true_score([POS]) != pytest.approx(L.true_score([NOT]) - L.true_score([]))


def test_score_saturates_inside_four():
    assert 3.9 < L.true_score([VERY, POS] * 200) < 4.0
    assert -4.0 < L.true_score([NEG] * 300) < -3.9


def test_running_scores_end_in_the_true_score():
    ids = L.sample_response(50, 3)
    running = LEX.running_scores(ids)
    assert running[-1] == pytest.approx(L.true_score(ids))
    assert [pytest.approx(LEX.true_score(ids[: t + 1])) for t in range(50)] == list(running)


def test_samplers_are_deterministic_and_draw_the_stated_mix():
    assert L.sample_response(40, np.random.default_rng(5)) == L.sample_response(40, np.random.default_rng(5))
    assert L.sample_prompt(40, random.Random(5)) == L.sample_prompt(40, random.Random(5))
    assert L.sample_response(40, 1) != L.sample_response(40, 2)
    assert set(L.sample_prompt(500, 0)) <= set(LEX.neutral)
    response = np.array(L.sample_response(20000, 0))
    polar = np.isin(response, LEX.polar).mean()
    negators = np.isin(response, LEX.negators).mean()
    assert 0.18 < polar < 0.22 and 0.03 < negators < 0.05
    assert len(L.sample_response(0, 0)) == 0


@pytest.mark.parametrize("call, error, match", [
    (lambda: L.true_score([5000]), ValueError, "outside the vocabulary"),
    (lambda: L.true_score("abc"), TypeError, "sequence of int"),
    (lambda: L.true_score([1.5]), TypeError, "must be an int"),
    (lambda: L.sample_prompt(-1, 0), ValueError, "n_tokens"),
    (lambda: L.sample_response(3, "seed"), TypeError, "rng"),
    (lambda: L.build_lexicon(0, 100), ValueError, "vocab_size"),
    (lambda: L.build("huge"), ValueError, "unknown size"),
    (lambda: L.build(3), TypeError, "size"),
    (lambda: L.build("tiny", cache_dir=3), TypeError, "cache_dir"),
])
def test_bad_arguments_are_refused(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_tiny_model_beats_a_constant_predictor(world):
    assert world.built and world.model.training is False
    g = np.random.default_rng(1234)
    prompts = [world.sample_prompt(int(n), g) for n in g.integers(0, 20, 200)]
    responses = [world.sample_response(int(n), g) for n in g.integers(1, 20, 200)]
    pred = np.array([world.score(p, [r])[0] for p, r in zip(prompts, responses)])
    truth = np.array([world.true_score(r) for r in responses])
    assert np.mean((pred - truth) ** 2) < 0.8 * np.var(truth)
    assert np.corrcoef(pred, truth)[0, 1] > 0.45
    assert world.metrics["mse"] < world.metrics["constant_mse"]


def test_cache_round_trip_and_force_rebuild(world, cache):
    probe = [L.sample_response(12, 0), L.sample_response(7, 1)]
    prompt = L.sample_prompt(9, 0)
    loaded = L.build("tiny", cache_dir=cache, progress=False)
    assert not loaded.built and loaded.path == world.path == cache / "lexicon-v1-tiny"
    assert loaded.metrics == pytest.approx(world.metrics)
    np.testing.assert_allclose(loaded.score(prompt, probe), world.score(prompt, probe), atol=1e-6)
    assert not list(cache.glob(".*tmp*"))  # the temporary build folder was renamed into place
    rebuilt = L.build("tiny", cache_dir=cache, force=True, progress=False)
    assert rebuilt.built  # trained again (same seed: the same model)
    np.testing.assert_allclose(rebuilt.score(prompt, probe), world.score(prompt, probe), atol=1e-4)


def test_trained_workload_instance(world):
    w = W.Workload("small", 16, 8, 4, 2, weights="trained")
    assert w.name == "small_p16_r8_n4_k2_trained"
    assert W.Workload("small", 16, 8, 4, 2).name == "small_p16_r8_n4_k2"
    assert W.TRAINED_TARGET_WORKLOAD.name == "small_p256_r64_n16_k32_trained"
    inst = W.make_instance(w, world=world)
    again = W.make_instance(w, world=world)
    assert inst.model is world.model and inst.suffix_ids == [W.EOS_ID]
    assert set(inst.prompt_ids) <= set(LEX.neutral) and len(inst.response_ids) == 8
    assert (inst.prompt_ids, inst.response_ids) == (again.prompt_ids, again.response_ids)
    g = np.random.default_rng(w.seed + 1)
    assert inst.prompt_ids == L.sample_prompt(16, g) and inst.response_ids == L.sample_response(8, g)
    full, _ = W.full_and_empty_values(inst)
    assert full == pytest.approx(world.score(inst.prompt_ids, [inst.response_ids])[0], abs=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"weights": "pretrained"}, "weights"), ({"model": "tiny", "weights": "trained"}, "small"),
    ({"prompt_tokens": 400, "response_tokens": 128, "weights": "trained"}, "positions"),
])
def test_trained_workload_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        W.Workload(**{"model": "small", **kwargs})


def test_world_applies_to_trained_workloads_only(world):
    with pytest.raises(ValueError, match="trained workloads only"):
        W.make_instance(W.Workload("tiny", 4, 4, 2, 2), world=world)
