"""Correctness of the benchmark workloads, peer adapters, methods, accuracy study and engine rows
(scar_bench), on a tiny model."""
import numpy as np
import pytest
import torch

from scar_bench import accuracy, measure, methods, peers, tables, vocab
from scar_bench import workloads as W

WORKLOAD = W.Workload("tiny", 12, 8, 4, 8)


@pytest.fixture(scope="module")
def inst():
    return W.make_instance(WORKLOAD)


@pytest.fixture(scope="module")
def exact(inst):
    return methods.exact_shapley(inst)


def test_tokenizer_is_one_token_per_word_and_round_trips(inst):
    text = inst.response_text
    assert len(text.split()) == len(inst.response_ids)
    assert inst.tokenizer(text, add_special_tokens=False)["input_ids"] == inst.response_ids
    assert all(t >= vocab.N_SPECIAL for t in inst.prompt_ids + inst.response_ids)


def test_span_players_cover_the_response_in_near_equal_chunks():
    spans = W.span_players(10, 4)
    assert spans[0][0] == 0 and spans[-1][1] == 10
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert {e - s for s, e in spans} <= {2, 3}
    with pytest.raises(ValueError, match="n_players"):
        W.span_players(3, 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "huge"}, "model"), ({"n_players": 0}, "n_players"), ({"n_perms": 3}, "even"),
    ({"response_tokens": 4, "n_players": 8}, "exceeds"),
])
def test_workload_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        W.Workload(**{"model": "tiny", **kwargs})


def test_exact_table_matches_the_model(inst, exact):
    values, table = exact
    full, empty = W.full_and_empty_values(inst)
    assert table[0] == pytest.approx(empty, abs=1e-5) and table[-1] == pytest.approx(full, abs=1e-5)
    assert values.sum() == pytest.approx(full - empty, abs=1e-5)
    # Coalition {player 1} (bitmask 0b10) scored on its own, by deletion.
    seq = inst.sequence(inst.token_mask(np.array([False, True, False, False])))
    assert table[2] == pytest.approx(W.score_sequences(inst.model, [seq])[0][0], abs=1e-5)


def test_score_sequences_batches_under_the_token_budget(inst):
    seqs = [inst.sequence(inst.token_mask(np.array(bits, dtype=bool)))
            for bits in ([1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0])]
    widths = sorted((len(s) for s in seqs), reverse=True)
    scores, tokens, calls = W.score_sequences(inst.model, seqs, max_tokens=2 * widths[0])
    # Longest first, two rows a batch; each batch padded to its longest row.
    assert calls == 2 and tokens == 2 * widths[0] + 2 * widths[2]
    with torch.inference_mode():  # the same numbers as the model's own read-out, one sequence at a time
        direct = [float(inst.model(input_ids=torch.tensor([s])).logits[0, 0]) for s in seqs]
    np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-6)
    assert scores.dtype == np.float64


@pytest.mark.parametrize("method", ["captum-exact", "shapiq-exact"])
def test_peers_exact_settings_equal_exact_shapley(inst, exact, method):
    result = methods.run_method(inst, method)
    np.testing.assert_allclose(result.values, exact[0], rtol=1e-4, atol=1e-6)


def test_shapiq_kernel_with_every_coalition_is_exact(inst, exact):
    result = methods.run_method(inst, "shapiq-kernel", budget=2 ** len(inst.players))
    np.testing.assert_allclose(result.values, exact[0], rtol=1e-3, atol=1e-6)


def _additive_game(n: int):
    """v(S) = sum of w_j over S + c * [0 in S and 1 in S]; Shapley values w_j (+ c/2 for players 0 and 1)."""
    w = np.linspace(-1.0, 1.5, n)
    c = 0.8
    masks = np.arange(2**n)[:, None] >> np.arange(n) & 1
    table = masks @ w + c * masks[:, 0] * masks[:, 1]
    phi = w.copy()
    phi[:2] += c / 2
    return table, phi


@pytest.mark.parametrize("method, budget", [
    ("shap-permutation", 40), ("captum-svs", 40), ("shapiq-permutation", 2000),
])
def test_sampling_peers_converge_to_exact_shapley(inst, method, budget):
    # A game with known Shapley values served from a table (the random tiny model's game is dominated by
    # interactions, so its sampled estimates need huge budgets to converge).
    table, phi = _additive_game(len(inst.players))
    result = methods.run_method(inst, method, budget=budget, seed=3,
                                value_table=lambda bits: table[methods.bitmask(bits)],
                                token_cost=lambda bits: methods.plain_tokens(inst, bits))
    err = np.linalg.norm(result.values - phi) / np.linalg.norm(phi)
    assert err < 0.05, f"{method}: relative L2 error {err:.3f}"
    assert result.tokens == sum(methods.plain_tokens(inst, rows) for rows in [result.feature_coalitions])


def test_authors_path_calls_the_model_once_per_coalition(inst):
    batch_sizes = []
    handle = inst.model.register_forward_pre_hook(
        lambda m, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        result = methods.run_method(inst, "shap-partition", budget=60)
    finally:
        handle.remove()
    assert batch_sizes and set(batch_sizes) == {1}
    assert len(batch_sizes) == result.calls == result.coalitions <= 60
    # Token-level Owen values, summed onto the span players; efficient over the whole response.
    spans = [result.token_values[s:e].sum() for s, e in inst.players]
    np.testing.assert_allclose(result.values, spans)
    full, empty = W.full_and_empty_values(inst)
    assert result.token_values.sum() == pytest.approx(full - empty, abs=1e-5)


def test_captum_forward_deletes_absent_players(inst, exact):
    rec = peers.Recorder(inst)
    forward = peers.captum_forward(inst, rec)
    ids = torch.tensor([inst.response_ids, inst.response_ids])
    s, e = inst.players[0]
    ids[1, s:e] = vocab.ABSENT_ID
    out = forward(ids).numpy()
    table = exact[1]
    assert out[0] == pytest.approx(table[-1], abs=1e-5)
    assert out[1] == pytest.approx(table[-2], abs=1e-5)  # every player but player 0: bitmask 2**n - 2
    assert rec.coalitions == 2


def test_scar_engines_agree_and_trie_hits_the_lower_bound(inst):
    results = {m: methods.run_method(inst, m, seed=5) for m in methods.SCAR_METHODS}
    for m, r in results.items():
        np.testing.assert_allclose(r.values, results["scar-loop"].values, rtol=1e-4, atol=1e-6, err_msg=m)
    lb = results["scar-trie"].lower_bound
    assert results["scar-trie"].tokens == results["scar-trie-kernel"].tokens == lb
    assert results["scar-loop"].tokens > lb
    assert results["scar-loop"].calls == results["scar-loop"].coalitions


def test_trie_lower_bound_of_one_coalition_is_its_length(inst):
    everything = np.ones((1, len(inst.players)), dtype=bool)
    n = len(inst.prompt_ids) + len(inst.response_ids) + len(inst.suffix_ids)
    assert methods.trie_lower_bound(inst, everything) == methods.plain_tokens(inst, everything) == n
    two = np.array([[True, False, False, False], [True, True, False, False]])
    # Shared prompt and first span: the second coalition adds its second span and a suffix.
    s1 = inst.players[0][1] - inst.players[0][0]
    s2 = inst.players[1][1] - inst.players[1][0]
    assert methods.trie_lower_bound(inst, two) == len(inst.prompt_ids) + s1 + 1 + s2 + 1


def test_accuracy_study_and_summary(inst, exact, tmp_path):
    rows = accuracy.accuracy_study(inst, budgets={"scar-permutation": [2, 16], "shapiq-kernel": [16]}, seeds=[0, 1],
                            exact=exact)
    assert len(rows) == 6
    summary = accuracy.summarize_accuracy(rows)
    perm = [r for r in summary if r["method"] == "scar-permutation"]
    assert [r["budget"] for r in perm] == [2, 16] and perm[1]["tokens"] > perm[0]["tokens"]
    kern = next(r for r in summary if r["method"] == "shapiq-kernel")
    assert kern["rel_l2_error"] < 1e-3  # a budget of all 2**4 coalitions: KernelSHAP is exact
    # The kernel peer is charged plain tokens: one full sequence per coalition, shorter than the full one.
    assert kern["tokens"] <= kern["coalitions"] * (len(inst.prompt_ids) + len(inst.response_ids) + 1)
    accuracy.plot_accuracy(summary, str(tmp_path / "acc.png"))
    assert (tmp_path / "acc.png").stat().st_size > 0
    with pytest.raises(ValueError, match="unknown accuracy method"):
        accuracy.accuracy_study(inst, budgets={"nope": [2]}, exact=exact)


def test_run_method_rejects_unknown_methods(inst):
    with pytest.raises(ValueError, match="unknown method"):
        methods.run_method(inst, "scar-magic")
    with pytest.raises(ValueError, match="unknown method"):
        methods.run_method(inst, "lime")


def test_engine_row_figures(inst, exact):
    result = methods.run_method(inst, "scar-trie")
    authors = measure.Timing(5.0, 4.0, 0, result)
    row = tables.engine_row(inst, "scar-trie", measure.Timing(0.5, 0.25, 2**20, result), reference=exact[0],
                            authors=authors)
    assert row["tokens_over_lb"] == 1.0
    assert row["speedup_vs_authors"] == 10.0 and row["cpu_speedup_vs_authors"] == 16.0
    assert row["coalitions_per_s"] == result.coalitions / 0.5
    assert row["peak_mib"] == 1.0
    assert 0 <= row["rel_l2_error"] < 10
    assert "scar-trie" in tables.format_engine_table([row])
