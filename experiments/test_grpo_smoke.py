"""Smoke test of the sentiment GRPO experiment (experiments/grpo): tiny world, 1 seed, 2 steps.

Each credit method trains the tiny world's policy for two real GRPO steps (TRL, CPU). The settings are
shrunk (short completions, small groups) so that the runs take seconds; the tiny world itself is built once
into a temporary cache folder.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from grpo import credit_cost as C
from grpo import methods as M
from grpo import policy_scale as P
from grpo import report as R
from grpo import train as E

STEPS = 2
METHODS = ("sparse", "abc-0.5", "scar-perm2", "scar-amortized", "scar-training")
TINY = E.TrainConfig(
    prompts_per_step=2,
    num_generations=2,
    min_tokens=4,
    max_tokens=10,
    learning_rate=1e-3,
    eval_samples_per_prompt=1,
    smooth=1,
    threads=1,
)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cache = tmp_path_factory.mktemp("scar_cache")
    out = tmp_path_factory.mktemp("experiment")
    res = E.run(
        METHODS, seeds=(0,), steps=STEPS, size="tiny", out_dir=out, progress=False, cache_dir=cache, config=TINY
    )
    return res, out


def test_result_structure(results, tmp_path):
    res, out = results
    assert set(res) == {"config", "world", "initial", "runs"}
    assert [(r["method"], r["seed"]) for r in res["runs"]] == [(m, 0) for m in METHODS]
    for run in res["runs"]:
        assert [s["step"] for s in run["steps"]] == list(range(1, STEPS + 1))
        for step in run["steps"]:
            assert math.isfinite(step["reward"]) and step["step_s"] > 0 and step["wall_s"] > 0
            assert step["credit_s"] > 0  # every method scores its completions with the reward model
            assert step["completion_length"] > 0
        final = run["final"]
        assert final["n"] == res["initial"]["n"] > 0  # every policy is judged on the same held-out prompts
        assert final["examples"] and all(isinstance(e["completion"], str) for e in final["examples"])
        assert -1.0 <= final["vader_mean"] <= 1.0 and math.isfinite(final["reward_mean"])
        assert final["reference_perplexity"] > 1 and 0 < final["distinct_bigrams"] <= 1
    assert json.loads((out / E.RESULTS_FILE).read_text()) == json.loads(json.dumps(res))
    summary = R.summarise(res)
    assert set(summary["methods"]) == set(METHODS)
    table = R.format_table(res, summary)
    assert all(f"| {m} |" in table for m in METHODS)
    path = R.plot(res, tmp_path / R.PLOT_FILE)
    assert path.stat().st_size > 1000


def test_same_seed_same_first_batch(results):
    """Every method starts from the same policy and seed, so the first sampled batch (and r) is shared."""
    res, _ = results
    first = {r["method"]: r["steps"][0]["reward"] for r in res["runs"]}
    for m in METHODS:
        assert first[m] == pytest.approx(first["sparse"], abs=1e-6)


def test_dense_methods_have_per_token_advantages(results):
    res, _ = results
    spread = {r["method"]: [s["advantage_spread"] for s in r["steps"]] for r in res["runs"]}
    assert spread["sparse"] == [0.0] * STEPS  # GRPO: one advantage per completion
    for m in METHODS[1:]:
        assert any(x > 1e-6 for x in spread[m]), f"{m} advantages are constant along completions"


def test_policy_parameters_moved(results):
    res, _ = results
    for run in res["runs"]:
        assert run["param_change"] > 0, f"{run['method']}: the policy did not change"


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        E.run(("dense",), steps=1)
    with pytest.raises(ValueError, match="steps"):
        E.run(("sparse",), steps=0)
    with pytest.raises(TypeError, match="seeds"):
        E.run(("sparse",), seeds=3)
    with pytest.raises(ValueError, match="min_tokens"):
        E.TrainConfig(min_tokens=9, max_tokens=8)
    with pytest.raises(ValueError, match="num_generations"):
        E.TrainConfig(num_generations=1)
    with pytest.raises(ValueError, match="unknown method"):
        M.method("dense")


def test_every_registered_method_builds_a_provider(tiny_world):
    rm, tok = tiny_world.reward_model(), tiny_world.tokenizer()
    for name, spec in M.METHODS.items():
        provider = spec.make(rm, tok, seed=0)
        dense = provider(["Review:"], [" a fine film."])
        assert len(dense) == 1 and math.isfinite(float(dense.rewards[0])), name


def test_timed_credit_measures_and_laps():
    calls = []

    def credit(prompts, completions, completion_ids):
        calls.append(len(prompts))
        return "dense"

    timed = E.TimedCredit(credit, "reward")
    assert timed(["p"], ["c"], [[1]]) == "dense" and calls == [1]
    first = timed.lap()
    assert first > 0 and timed.lap() == 0.0
    assert timed.__name__ == "reward"


def test_advantage_spread():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert E._advantage_spread(torch.tensor([0.5, -0.5]), mask) == 0.0
    dense = torch.tensor([[1.0, 1.0, 1.0, 9.0], [0.0, 2.0, 7.0, 7.0]])
    # row 0 is constant on its tokens (padding ignored); row 1 has std 1 on its two tokens
    assert E._advantage_spread(dense, mask) == pytest.approx(0.5)


def test_credit_cost_and_fit_with_exact_shapley(tiny_world):
    """The cost table: every method is timed against a plain pass and compared with exact Shapley values;
    more permutations cost more coalitions and fit the exact values at least as well on the same batch."""
    config = E.TrainConfig(prompts_per_step=2, num_generations=2, min_tokens=6, max_tokens=12, threads=1)
    record = C.credit_cost(tiny_world, config, ("scar-perm2", "scar-perm16", "scar-amortized"), n_batches=2)
    assert [b["responses"] for b in record["batches"]] == [4, 4]
    perm2, perm16 = record["methods"]["scar-perm2"], record["methods"]["scar-perm16"]
    for m in record["methods"].values():
        assert m["cost"] > 0 and len(m["per_batch"]) == 2
    # (the amortized head may have seen no label yet in two tiny batches: an even split has no correlation)
    assert -1.0 <= perm2["corr"] <= 1.0
    for a, b in zip(perm2["per_batch"], perm16["per_batch"]):
        assert b["coalitions"] > a["coalitions"] > 0
    assert perm16["corr"] > 0.9  # 16 permutations of a handful of players: nearly exact
    table = C.format_cost_table(record)
    assert table.count("| scar-") == 3
    with pytest.raises(ValueError, match="held-out prompts"):
        C.sample_batches(tiny_world, config, n_batches=1000)


def test_plot_levers(results, tmp_path):
    """The cost-versus-benefit plot is drawn from a training summary and a cost record; without a method
    in both it refuses."""
    res, _ = results
    summary = R.summarise(res)
    summary["methods"]["scar-perm2"]["steps_ratio_to_sparse"] = 0.5  # two tiny steps may miss the threshold
    summary["methods"]["scar-perm2"]["wall_ratio_to_sparse"] = 0.7
    cost = {"methods": {"scar-perm2": {"cost": 5.0, "corr": 0.8}}}
    path = R.plot_levers(summary, cost, tmp_path / R.LEVERS_PLOT_FILE)
    assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no method"):
        R.plot_levers(summary, {"methods": {"scar-perm16": {"cost": 5.0, "corr": 0.8}}}, tmp_path / "x.png")


def test_policy_scale_times_each_size_and_method(tiny_world):
    """Step timing by policy size: a bigger random policy really replaces the world's (more parameters, the
    world's vocabulary), every method is timed at every size, and the derived wall ratio is steps x step."""
    config = E.TrainConfig(prompts_per_step=2, num_generations=2, min_tokens=4, max_tokens=8, threads=1)
    sizes = (P.SIZES[0], P.PolicySize("2 x 64", 2, 64, 2))
    record = P.policy_scale(tiny_world, config, ("sparse", "scar-perm2"), sizes, steps=2, warmup=1)
    small, big = record["sizes"]
    assert big["policy_parameters"] != small["policy_parameters"]
    for row in record["sizes"]:
        assert set(row["methods"]) == {"sparse", "scar-perm2"}
        assert row["step_ratio"]["sparse"] == 1.0
        for m in row["methods"].values():
            assert m["step_s"] > 0 and m["credit_s"] > 0 and len(m["step_s_all"]) == 2
    table = P.format_scale_table(record, {"scar-perm2": 0.5})
    want = 0.5 * big["step_ratio"]["scar-perm2"]
    assert table.splitlines()[-1].endswith(f"| {want:.2f} |")
    with pytest.raises(ValueError, match="sparse"):
        P.policy_scale(tiny_world, config, ("scar-perm2",), sizes, steps=2)
    with pytest.raises(ValueError, match="warmup"):
        P.policy_scale(tiny_world, config, ("sparse",), sizes, steps=1, warmup=1)


def test_world_variants_register_as_sizes():
    """--world small-reward: the default world with a smaller reward model, cached under its own folder."""
    from dataclasses import asdict

    from grpo import worlds
    from scar.demo import sentiment

    worlds.register()
    worlds.register()  # idempotent
    small, default = sentiment.SIZES["small-reward"], sentiment.SIZES["default"]
    changed = {k for k, v in asdict(small).items() if asdict(default)[k] != v}
    assert changed == {"reward_layers", "reward_width", "reward_heads"}
    assert small.reward_layers * small.reward_width**2 < default.reward_layers * default.reward_width**2 / 4
    assert sentiment.folder_name("small-reward") == "sentiment-v1-small-reward"
