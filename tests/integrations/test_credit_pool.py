"""CreditPool: Shapley credit on a pool of Ray workers equals a local SCAR, keeps prompt groups whole, names
the failing response, and has an async form.

Real Ray with 2 CPUs (the pool starts it and shuts it down on close); the reward model is a tiny random GPT-2
saved to a temporary folder and loaded by path in each worker, or built there by a factory.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from transformers import GPT2Config, GPT2ForSequenceClassification  # noqa: E402

from scar.credit.rewarder import SCAR  # noqa: E402
from scar.distributed import CreditPool, CreditPoolError, plan_shards  # noqa: E402

import tiny_tokenizers  # noqa: E402
from tiny_tokenizers import build_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = dict(players="span", method="permutation", budget=2, seed=0, progress=False)

# 4 prompts in groups of 3, 4, 2 and 5 completions (GRPO lays a prompt's completions out next to each other)
GROUPS = [
    ("Review:", [" It was great, and lovely!", " Boring, slow and long.", " The music is lovely."]),
    ("Q: opinion?", [" I did not like the ending; it was slow.", " Never again.", " What a film!",
                     " The plot is thin. The actors were wonderful."]),
    ("Tell me:", [" The movie was great.", " It was terrible, boring and slow; the ending was sad."]),
    ("Review:", [" Lovely.", " The end was sad.", " What a terrible film!", " Great, and the music is lovely.",
                 " I did not like it."]),
]
PROMPTS = [p for p, rs in GROUPS for _ in rs]
RESPONSES = [r for _, rs in GROUPS for r in rs]


def make_reward_model() -> GPT2ForSequenceClassification:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=300, n_positions=128, num_labels=1,
                     pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return GPT2ForSequenceClassification(cfg).eval()


def factory() -> tuple:
    """Run inside each worker (it travels by value: the test modules are not importable there)."""
    return make_reward_model(), build_tokenizer(300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny reward model and its tokenizer saved to one folder."""
    folder = tmp_path_factory.mktemp("reward_model")
    make_reward_model().save_pretrained(folder)
    build_tokenizer(300).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def local():
    return SCAR(make_reward_model(), build_tokenizer(300), **SETTINGS)


@pytest.fixture(scope="module", autouse=True)
def _shut_ray_down():
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def pool2(saved):
    """Two workers loading the model by path; the pool starts a local Ray with 2 CPUs."""
    with CreditPool(str(saved), num_workers=2, num_cpus=2, startup_timeout=120, **SETTINGS) as pool:
        yield pool
    assert not ray.is_initialized()  # the pool started Ray, so it shut it down


def assert_same_credit(got, want, tol=1e-5):
    assert len(got) == len(want)
    torch.testing.assert_close(got.rewards, want.rewards, atol=tol, rtol=tol)
    torch.testing.assert_close(got.base_values, want.base_values, atol=tol, rtol=tol)
    for i in range(len(want)):
        torch.testing.assert_close(got.token_rewards[i], want.token_rewards[i], atol=tol, rtol=tol)
        torch.testing.assert_close(got.values[i], want.values[i], atol=tol, rtol=tol)
        assert got.players[i] == want.players[i]


def group_of(i: int) -> int:
    bounds = [0]
    for _, rs in GROUPS:
        bounds.append(bounds[-1] + len(rs))
    return max(g for g, b in enumerate(bounds[:-1]) if b <= i)


# ---------------------------------------------------------------- without Ray running


def test_plan_shards_keeps_groups_whole_and_balances_length():
    # the two "Review:" groups are not adjacent, so they are separate groups
    assert plan_shards(PROMPTS, RESPONSES, 100) == [range(0, 3), range(3, 7), range(7, 9), range(9, 14)]
    weight = lambda r: sum(len(PROMPTS[i]) + len(RESPONSES[i]) + 1 for i in r)
    bounds = [0, 3, 7, 9, 14]
    for k in (1, 2, 3):
        shards = plan_shards(PROMPTS, RESPONSES, k)
        assert len(shards) == k and shards[0].start == 0 and shards[-1].stop == 14
        assert all(s.start in bounds and s.stop in bounds for s in shards)  # whole groups
        assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))  # contiguous, in order
        # balanced: the heaviest shard is as light as any split into k runs of whole groups makes it
        splits = itertools.combinations(bounds[1:-1], k - 1)
        best = min(max(weight(range(a, b)) for a, b in zip((0, *cut), (*cut, 14))) for cut in splits)
        assert max(weight(s) for s in shards) == best
    # token ids group by value; one group is one shard; an empty batch has none
    assert plan_shards([[1, 2], (1, 2), [3]], [[5], [6, 7], [8]], 4) == [range(0, 2), range(2, 3)]
    assert plan_shards(["p"] * 5, ["x"] * 5, 3) == [range(0, 5)]
    assert plan_shards([], [], 2) == []
    with pytest.raises(ValueError, match="n_shards"):
        plan_shards(PROMPTS, RESPONSES, 0)


def test_import_without_ray_names_the_extra():
    code = "import sys; sys.modules['ray'] = None; import scar.distributed"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode != 0
    assert "ImportError: scar.distributed needs Ray: pip install 'scar-rlhf[ray]'" in run.stderr


def test_bad_settings_fail_before_any_worker_starts():
    with pytest.raises(TypeError, match=r"unknown settings \['player'\]"):
        CreditPool("unused", player="span")
    with pytest.raises(ValueError, match="method"):
        CreditPool("unused", method="shap")
    with pytest.raises(TypeError, match="save_pretrained"):
        CreditPool(make_reward_model())
    with pytest.raises(ValueError, match="num_cpus"):
        CreditPool("unused", address="auto", num_cpus=2)
    assert not ray.is_initialized()


# ---------------------------------------------------------------- real Ray


def test_one_worker_from_a_factory_equals_local_scar(local):
    """A factory worker; the responses on the policy's tokens (another tokenizer) with completion ids."""
    by_value = [sys.modules[__name__], tiny_tokenizers]
    for module in by_value:
        ray.cloudpickle.register_pickle_by_value(module)
    try:
        policy_tokenizer = build_tokenizer(280)
        completion_ids = [policy_tokenizer(r, add_special_tokens=False)["input_ids"] for r in RESPONSES]
        with CreditPool(factory, num_workers=1, num_cpus=2, policy_tokenizer=policy_tokenizer, startup_timeout=120,
                        **SETTINGS) as pool:
            assert ray.is_initialized()
            got = pool(PROMPTS, RESPONSES, completion_ids)
            assert pool.last_workers == [0] * len(PROMPTS)
            assert len(pool.tokenizer) == len(build_tokenizer(300))  # the worker's tokenizer, fetched
        assert not ray.is_initialized()
    finally:
        for module in by_value:
            ray.cloudpickle.unregister_pickle_by_value(module)
    want = SCAR(make_reward_model(), build_tokenizer(300), policy_tokenizer=policy_tokenizer, **SETTINGS)(
        PROMPTS, RESPONSES, completion_ids
    )
    assert [t.numel() for t in got.token_rewards] == [len(c) for c in completion_ids]
    assert_same_credit(got, want)


def test_joins_a_running_ray_and_leaves_it_running(saved, local, capsys):
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        pool = CreditPool(str(saved), num_workers=1, **{**SETTINGS, "progress": True})
        assert_same_credit(pool(PROMPTS[:4], RESPONSES[:4]), local(PROMPTS[:4], RESPONSES[:4]))
        assert "SCAR credit pool: 100%" in capsys.readouterr().err  # the progress bar over shards
        assert len(pool([], [])) == 0
        pool.close()
        pool.close()  # idempotent
        assert ray.is_initialized()  # the pool did not start this runtime
        with pytest.raises(RuntimeError, match="closed"):
            pool(PROMPTS, RESPONSES)
    finally:
        ray.shutdown()


def test_two_workers_equal_local_scar_and_keep_groups_together(pool2, local):
    got = pool2(PROMPTS, RESPONSES)
    assert_same_credit(got, local(PROMPTS, RESPONSES))
    # every group on one worker, both workers used
    workers = pool2.last_workers
    assert len(workers) == len(PROMPTS) and set(workers) == {0, 1}
    for g in range(len(GROUPS)):
        assert len({w for i, w in enumerate(workers) if group_of(i) == g}) == 1
    # the scorer statistics of every response came back (responses of a chunk share one object)
    assert all(s is not None and s.coalitions > 0 for s in pool2.last_stats)
    assert len(pool2.last_seconds) == len(pool2.last_cpu_seconds) == 4  # 2 shards per worker
    assert all(s > 0 for s in pool2.last_seconds + pool2.last_cpu_seconds)


def test_worker_error_names_the_response(pool2, local):
    responses = list(RESPONSES)
    responses[10] = [5, 6, 299, 300]  # token ids; 300 is outside the reward model's vocabulary
    with pytest.raises(CreditPoolError, match=r"credit of response 10 of the batch failed on worker \d") as info:
        pool2(PROMPTS, responses)
    assert info.value.index == 10
    assert "response 10: the response has token id 300 outside the reward model's vocabulary" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    # the pool still works afterwards
    assert_same_credit(pool2(PROMPTS[:3], RESPONSES[:3]), local(PROMPTS[:3], RESPONSES[:3]))


def test_async_form(pool2, local):
    async def both():
        return await asyncio.gather(pool2.acall(PROMPTS, RESPONSES), pool2.acall(PROMPTS[3:9], RESPONSES[3:9]))

    whole, part = asyncio.run(both())
    assert_same_credit(whole, local(PROMPTS, RESPONSES))
    assert_same_credit(part, local(PROMPTS[3:9], RESPONSES[3:9]))

    async def failing():
        responses = list(RESPONSES)
        responses[1] = [300]
        return await pool2.acall(PROMPTS, responses)

    with pytest.raises(CreditPoolError, match="response 1 of the batch") as info:
        asyncio.run(failing())
    assert info.value.index == 1
