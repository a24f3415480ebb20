"""Tests of the locally built sentiment world (scar.demo.sentiment) at size="tiny"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scar.demo import sentiment as S
from scar.demo import templates

# Held-out Pearson r between the tiny reward model and VADER that the test demands. The tiny model
# (1 layer, width 32, a few hundred steps) reaches about 0.4 on this fixed seed; 0.2 leaves margin for
# float differences across machines while still being far above chance (|r| ~ 0.06 for 256 samples).
TINY_MIN_PEARSON = 0.2


@pytest.fixture(scope="module")
def worlds(tiny_world, tmp_path_factory):
    """Two tiny worlds built from scratch in separate folders (the first is the session's)."""
    return tiny_world, S.build(tmp_path_factory.mktemp("world_b"), size="tiny", progress=False)


@pytest.fixture(scope="module")
def world(worlds):
    return worlds[0]


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_returns_a_fresh_world_in_the_versioned_folder(world):
    assert world.built is True
    assert world.size == "tiny"
    assert world.path.name == "sentiment-v1-tiny"
    assert (world.path / "manifest.json").is_file()
    assert set(world.metrics) >= {"reward_sign_accuracy", "reward_pearson", "reward_mse"}


def test_two_builds_are_identical(worlds):
    a, b = worlds
    assert (a.path / "corpus.json").read_bytes() == (b.path / "corpus.json").read_bytes()
    assert a.tokenizer().get_vocab() == b.tokenizer().get_vocab()
    for load in ("reward_model", "policy"):
        sa, sb = getattr(a, load)().state_dict(), getattr(b, load)().state_dict()
        assert sa.keys() == sb.keys()
        for name in sa:
            assert torch.equal(sa[name], sb[name]), f"{load}.{name} differs between two seeded builds"


def test_second_build_loads_from_cache_without_training(world, monkeypatch):
    before = _files(world.path)

    def no_training(*args, **kwargs):
        raise AssertionError("build trained although a valid cache exists")

    monkeypatch.setattr(S, "_build_into", no_training)
    again = S.build(world.path.parent, size="tiny", progress=False)
    assert again.built is False
    assert again.path == world.path
    assert again.metrics == world.metrics
    assert _files(world.path) == before


def test_changed_configuration_triggers_a_rebuild(world, tmp_path, monkeypatch):
    copy = tmp_path / world.path.name
    shutil.copytree(world.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"]["vocab_size"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))

    class Rebuilt(Exception):
        pass

    def rebuild(*args, **kwargs):
        raise Rebuilt

    monkeypatch.setattr(S, "_build_into", rebuild)
    with pytest.raises(Rebuilt):
        S.build(tmp_path, size="tiny", progress=False)
    # The failed build removed its temporary folder and left nothing that looks like a world.
    assert sorted(p.name for p in tmp_path.iterdir()) == [world.path.name]


def test_scar_cache_environment_variable_is_the_default_root(world, tmp_path, monkeypatch):
    shutil.copytree(world.path, tmp_path / world.path.name)
    monkeypatch.setenv("SCAR_CACHE", str(tmp_path))
    assert S.default_cache_root() == tmp_path
    loaded = S.build(size="tiny", progress=False)
    assert loaded.built is False
    assert loaded.path == tmp_path / "sentiment-v1-tiny"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown size"):
        S.build(size="huge")
    with pytest.raises(TypeError, match="size must be a str"):
        S.build(size=3)
    with pytest.raises(TypeError, match="cache_dir"):
        S.build(cache_dir=3, size="tiny")
    with pytest.raises(TypeError):
        S.vader_score("a single string")


def test_corpus_covers_both_signs_and_splits_prompts(world):
    labels = np.array([r["vader"] for r in world.reward_data("train")])
    assert np.mean(labels > S.VADER_NEUTRAL) > 0.25
    assert np.mean(labels < -S.VADER_NEUTRAL) > 0.25
    assert not set(world.prompts("train")) & set(world.prompts("test"))
    assert {r["prompt"] for r in world.reward_data("test")} <= set(world.prompts("test"))
    with pytest.raises(ValueError, match="split"):
        world.prompts("validation")


def test_labels_are_vader_of_the_response(world):
    rows = world.reward_data("test")[:50]
    assert [r["vader"] for r in rows] == world.vader_score([r["response"] for r in rows])


def test_vader_score_signs():
    texts = ["The film was wonderful.", "The film was not good at all.", "It has four chapters."]
    good, bad, plain = S.vader_score(texts)
    assert good > 0.5
    assert bad < -0.2
    assert plain == 0.0


def test_word_bank_follows_the_lexicon():
    lexicon = templates.read_vader_lexicon()
    bank = templates.word_bank()
    for part in (bank.adjectives, bank.feelings, bank.verbs, bank.nouns):
        assert part["pos"] and part["neg"]
        assert all(lexicon[w] >= templates.POLAR_MIN for w in part["pos"])
        assert all(lexicon[w] <= -templates.POLAR_MIN for w in part["neg"])
        assert not any(w in lexicon for w in part["neutral"])


def test_tokenizer_offsets_tile_the_text(world):
    tok = world.tokenizer()
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert 256 < len(tok) <= S.SIZES["tiny"].vocab_size
    texts = [r["prompt"] + r["response"] for r in world.reward_data("test")[:40]]
    texts.append("Unseen words: zebra quux 42!")
    for text in texts:
        enc = tok(text, return_offsets_mapping=True)
        assert enc["input_ids"][0] == tok.bos_token_id
        assert enc["offset_mapping"][0] == (0, 0)
        spans = enc["offset_mapping"][1:]
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        assert all(prev[1] == nxt[0] for prev, nxt in zip(spans, spans[1:])), text
        assert tok.decode(enc["input_ids"], skip_special_tokens=True) == text


def test_prompt_and_response_tokenise_separately_as_together(world):
    tok = world.tokenizer()
    for row in world.reward_data("test")[:40]:
        together = tok(row["prompt"] + row["response"])["input_ids"]
        apart = S.reward_input_ids(tok, [row["prompt"]], [row["response"]])[0]
        assert apart == together + [tok.eos_token_id]


def test_reward_model_tracks_vader_on_held_out_text(world):
    from transformers import GPT2ForSequenceClassification

    model, tok = world.reward_model(), world.tokenizer()
    assert isinstance(model, GPT2ForSequenceClassification)
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tok.pad_token_id
    rows = world.reward_data("test")
    scores = world.score([r["prompt"] for r in rows], [r["response"] for r in rows], model=model, tokenizer=tok)
    vader = np.array([r["vader"] for r in rows])
    r = float(np.corrcoef(scores, vader)[0, 1])
    assert r > TINY_MIN_PEARSON
    # The recorded metrics are those of the saved model.
    assert r == pytest.approx(world.metrics["reward_pearson"], abs=1e-4)


def test_reward_model_reads_out_at_eos_regardless_of_padding(world):
    model, tok = world.reward_model(), world.tokenizer()
    rows = S.reward_input_ids(tok, ["Review of the film:", "The book was"],
                              [" The plot was wonderful and I loved the ending.", " boring."])
    batched = S.score_ids(model, rows)
    alone = [S.score_ids(model, [row])[0] for row in rows]
    assert batched == pytest.approx(alone, abs=1e-5)
    with pytest.raises(ValueError, match="at most"):
        S.score_ids(model, [[tok.bos_token_id] * 1000])


def test_policy_generates_text_with_the_tokenizer(world):
    from transformers import GPT2LMHeadModel

    policy, tok = world.policy(), world.tokenizer()
    assert isinstance(policy, GPT2LMHeadModel)
    assert policy.config.vocab_size == len(tok)
    enc = tok(world.prompts("test")[:2], return_tensors="pt", padding=True, padding_side="left")
    torch.manual_seed(0)
    out = policy.generate(**enc, do_sample=True, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id)
    new = out[:, enc["input_ids"].shape[1]:]
    assert new.shape[1] >= 1
    text = tok.decode(new[0], skip_special_tokens=True)
    assert isinstance(text, str) and text.strip()


def test_policy_training_text_is_within_the_length_window(world):
    tok = world.tokenizer()
    lo, hi = S.POLICY_TOKENS
    lengths = [len(tok(r["response"], add_special_tokens=False)["input_ids"]) for r in world.policy_data("train")]
    assert lengths and all(lo <= n <= hi for n in lengths)


def test_reward_metrics_definition():
    vader = np.array([0.5, -0.5, 0.0, 0.8])
    pred = np.array([2.5, 1.0, -3.0, 4.0])
    m = S.reward_metrics(pred, vader)
    assert m["reward_sign_accuracy"] == pytest.approx(2 / 3)  # the neutral text is not counted
    assert m["reward_mse"] == pytest.approx(np.mean((pred - S.REWARD_SCALE * vader) ** 2))
    with pytest.raises(ValueError):
        S.reward_metrics(pred, vader[:2])
