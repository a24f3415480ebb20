"""TRL integration: DenseRewardFunction in GRPO/RLOO, DenseGRPOTrainer's per-token advantages.

Real training steps on CPU with a tiny random GPT-2 policy and a word-level tokenizer built in the test
(no downloads). Credit providers here are small deterministic functions of the completion ids that
return real ``scar.credit.rewards.DenseRewards``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from scar.credit.advantages import dense_group_advantages
from scar.credit.rewarder import SCAR
from scar.credit.rewards import DenseRewards, shape_rewards
from scar.game.players import Player
from scar.integrations.trl import (
    AsyncDenseRewardFunction,
    DenseGRPOTrainer,
    DenseRewardFunction,
)

from advantage_reference import padded, reference_advantages
from trl_world import (
    EOS,
    NUM_GENERATIONS,
    dense_credit,
    grpo_args,
    length_reward,
    make_dataset,
    make_dense,
    make_policy,
    make_reward_model,
    make_tokenizer,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _quiet():
    """Silence transformers/TRL chatter (progress, deprecation notes) for these tests only."""
    verbosity, trl_logger = hf_logging.get_verbosity(), logging.getLogger("trl")
    trl_level = trl_logger.level
    hf_logging.set_verbosity_error()
    trl_logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    hf_logging.set_verbosity(verbosity)
    trl_logger.setLevel(trl_level)


def sparse_credit(prompts, completions, completion_ids):
    """All reward r on the last token (what GRPO does with a sequence reward)."""
    token_rewards, rewards = [], []
    for ids in completion_ids:
        r = ((sum(ids) * 13) % 17) / 4.0 - 2.0
        t = torch.zeros(len(ids))
        t[-1] = r
        token_rewards.append(t)
        rewards.append(r)
    return make_dense(token_rewards, rewards, "sparse")


def additive_shapley_credit(prompts, completions, completion_ids, alpha=0.5):
    """SCAR's shaping of exact Shapley values for an additive game, one player per token.

    ``v(S) = v(∅) + sum_{t in S} w(token_t)`` with ``v(∅)`` depending on the prompt only, so
    ``phi_t = w(token_t)`` exactly and ``r = v(∅) + sum(phi)``.
    """
    token_rewards, rewards, base, values, players = [], [], [], [], []
    for prompt, ids in zip(prompts, completion_ids):
        v_empty = len(prompt) / 3.0
        phi = torch.tensor([((tid * 5) % 9 - 4) / 4.0 for tid in ids], dtype=torch.float64)
        r = v_empty + float(phi.sum())
        ps = [Player(t, t + 1, 0, 0, "") for t in range(len(ids))]
        token_rewards.append(shape_rewards(phi, ps, r, alpha=alpha, placement="last", n_tokens=len(ids)))
        rewards.append(r)
        base.append(v_empty)
        values.append(phi)
        players.append(ps)
    return DenseRewards(
        token_rewards=token_rewards,
        rewards=torch.tensor(rewards),
        base_values=torch.tensor(base),
        values=values,
        stderr=[None] * len(values),
        players=players,
        method="scar",
    )


# ---------------------------------------------------------------- DenseRewardFunction on its own


def test_reward_function_returns_r_and_keeps_dense():
    fn = DenseRewardFunction(dense_credit)
    assert fn.__name__ == "dense_credit"
    ids = [[3, 4, 1], [5, 6, 7, 8]]
    out = fn(prompts=["p", "q"], completions=["x", "y"], completion_ids=ids, trainer_state=None)
    assert out == [0.3, 0.4]
    with pytest.raises(RuntimeError, match="other completions"):
        fn.take(list(reversed(ids)))
    dense = fn.take(ids)
    assert [t.numel() for t in dense.token_rewards] == [3, 4]
    with pytest.raises(RuntimeError, match="already taken"):
        fn.take(ids)


def test_reward_function_rejects_misaligned_credit():
    def short(prompts, completions, completion_ids):
        return make_dense([torch.zeros(len(c) - 1) for c in completion_ids], [0.0] * len(completion_ids), "bad")

    fn = DenseRewardFunction(short, name="short")
    with pytest.raises(ValueError, match=r"token_rewards\[0\] must have one reward per completion token \(3\)"):
        fn(prompts=["p"], completions=["x"], completion_ids=[[3, 4, 1]])
    with pytest.raises(TypeError, match="chat-message lists"):
        fn(prompts=[[{"role": "user", "content": "p"}]], completions=["x"], completion_ids=[[3]])
    with pytest.raises(TypeError, match="callable"):
        DenseRewardFunction(42)


# ---------------------------------------------------------------- real training steps


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def moved(model, before) -> bool:
    return any(not torch.equal(p.detach(), q) for p, q in zip(model.parameters(), before))


class RecordingDenseGRPOTrainer(DenseGRPOTrainer):
    """Records, per generation batch, the dense and the plain GRPO advantages, and every loss input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generated: list[dict] = []
        self.loss_inputs: list[dict] = []

    def _dense_advantages(self, output, pending):
        grpo = output["advantages"].clone()  # GRPO's own (B,) sequence advantages, before the override
        dense = super()._dense_advantages(output, pending)
        self.generated.append(
            {
                "grpo": grpo,
                "dense": dense.clone(),
                "completion_ids": output["completion_ids"].clone(),
                "completion_mask": output["completion_mask"].clone(),
                "prompt_ids": output["prompt_ids"].clone(),
                "prompt_mask": output["prompt_mask"].clone(),
                "scored_ids": [list(c) for c in pending.completion_ids],
            }
        )
        return dense

    def _compute_loss(self, model, inputs):
        keys = ("advantages", "completion_ids", "completion_mask", "prompt_ids", "prompt_mask")
        self.loss_inputs.append({k: inputs[k].clone() for k in keys})
        return super()._compute_loss(model, inputs)


def test_reward_function_in_grpo_and_rloo(tmp_path):
    tokenizer = make_tokenizer()
    fn = DenseRewardFunction(dense_credit)
    seen = []

    def spy(prompts, completions, completion_ids):
        dense = dense_credit(prompts, completions, completion_ids)
        seen.append(dense.rewards.clone())
        return dense

    fn_spy = DenseRewardFunction(spy, name="scar_spy")
    model = make_policy(len(tokenizer), tmp_path / "policy_grpo")
    before = snapshot(model)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[fn_spy],
        args=grpo_args(tmp_path / "grpo"),
        train_dataset=make_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    assert moved(model, before)
    assert trainer.reward_func_names == ["scar_spy"]
    logged = [h["rewards/scar_spy/mean"] for h in trainer.state.log_history if "rewards/scar_spy/mean" in h]
    assert len(seen) == 2 and len(logged) == 2
    for r, mean in zip(seen, logged):
        assert mean == pytest.approx(float(r.mean()), abs=1e-6)  # TRL trained on r, the sequence reward

    model = make_policy(len(tokenizer), tmp_path / "policy_rloo")
    before = snapshot(model)
    rloo_args = grpo_args(tmp_path / "rloo", config_cls=RLOOConfig)
    trainer = RLOOTrainer(
        model=model,
        reward_funcs=[fn],
        args=rloo_args,
        train_dataset=make_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    assert moved(model, before)
    assert any("rewards/dense_credit/mean" in h for h in trainer.state.log_history)


def row_key(batch, i, n_completion):
    """(prompt tokens, completion tokens) of row i: identifies a row across TRL's shuffling."""
    prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist()
    return tuple(prompt), tuple(batch["completion_ids"][i, :n_completion].tolist())


def check_alignment(trainer: RecordingDenseGRPOTrainer):
    """Loss inputs carry (B, T) advantages equal, row for row, to the ones built at generation time."""
    pad = trainer.processing_class.pad_token_id
    generated_rows = {}
    for gen in trainer.generated:
        ids, mask, dense = gen["completion_ids"], gen["completion_mask"], gen["dense"]
        assert dense.shape == ids.shape  # (B, T) exactly like completion_ids
        for i, scored in enumerate(gen["scored_ids"]):
            n = len(scored)
            assert ids[i, :n].tolist() == scored
            assert bool((ids[i, n:] == pad).all())
            assert mask[i].tolist() == [1] * n + [0] * (ids.shape[1] - n)
            assert bool((dense[i, n:] == 0).all())
            key = row_key(gen, i, n)
            # identical completions of one prompt share a group, hence their advantages
            assert key not in generated_rows or torch.equal(generated_rows[key], dense[i])
            generated_rows[key] = dense[i]
    for inputs in trainer.loss_inputs:
        adv, ids, mask = inputs["advantages"], inputs["completion_ids"], inputs["completion_mask"]
        assert adv.dim() == 2 and adv.shape == ids.shape
        for i in range(ids.shape[0]):
            torch.testing.assert_close(adv[i], generated_rows[row_key(inputs, i, int(mask[i].sum()))])


def test_dense_grpo_trainer_dense_advantages_reach_loss(tmp_path):
    tokenizer = make_tokenizer()
    model = make_policy(len(tokenizer), tmp_path / "policy")
    before = snapshot(model)
    # two reward functions: the dense one (weight 1) and a sequence reward (weight 0.5, on the last token)
    args = grpo_args(tmp_path, steps_per_generation=2, reward_weights=[1.0, 0.5], beta=0.04)
    trainer = RecordingDenseGRPOTrainer(
        model=model,
        reward_funcs=[DenseRewardFunction(dense_credit), length_reward],
        args=args,
        train_dataset=make_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    assert moved(model, before)
    assert len(trainer.generated) == 1 and len(trainer.loss_inputs) == 2  # one generation batch, two steps

    gen = trainer.generated[0]
    scored = gen["scored_ids"]
    assert len({len(s) for s in scored}) > 1, "completions of equal length: padding not exercised"
    dense_rows = dense_credit(None, None, scored).token_rewards
    rows = []
    for ids, tok in zip(scored, dense_rows):
        r = tok.double().tolist()
        r[-1] += 0.5 * 0.25 * len(ids)
        rows.append(r)
    ended = [ids[-1] == EOS for ids in scored]  # the ending EOS token gets the sequence advantage (default)
    want = padded(reference_advantages(rows, NUM_GENERATIONS, "group", ended=ended), gen["dense"].shape[1])
    torch.testing.assert_close(gen["dense"].double(), want, rtol=1e-5, atol=1e-5)
    # the credit is non-uniform: advantages vary along the tokens of a completion
    assert any(len(set(gen["dense"][i, : len(s)].tolist())) > 1 for i, s in enumerate(scored))
    check_alignment(trainer)
    # the logged advantage is each completion's first-token advantage
    assert list(trainer._logs["advantages"]) == pytest.approx(gen["dense"][:, 0].tolist())


@pytest.mark.parametrize("std_of", ["sequence", "token"])
def test_dense_grpo_trainer_sparse_credit_equals_grpo(tmp_path, std_of):
    tokenizer = make_tokenizer()
    model = make_policy(len(tokenizer), tmp_path / "policy", seed=1)
    trainer = RecordingDenseGRPOTrainer(
        model=model,
        reward_funcs=[DenseRewardFunction(sparse_credit)],
        args=grpo_args(tmp_path, max_steps=2, std_of=std_of),
        train_dataset=make_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    assert len(trainer.generated) == 2
    for gen in trainer.generated:
        grpo, dense = gen["grpo"], gen["dense"]
        assert grpo.dim() == 1 and bool((grpo != 0).any())
        for i, s in enumerate(gen["scored_ids"]):
            n = len(s)
            torch.testing.assert_close(dense[i, :n], grpo[i].expand(n), rtol=1e-5, atol=1e-5)
            assert bool((dense[i, n:] == 0).all())
    check_alignment(trainer)


def test_dense_grpo_trainer_shapley_first_token_keeps_grpo_advantage(tmp_path):
    """With SCAR's shaping (alpha=0.5) of exact Shapley values and v(∅) fixed per prompt, the sequence return
    is r - alpha*v(∅): with GRPO's std the first token's advantage is GRPO's advantage of r, and with the
    group baseline later tokens drop earlier credit."""
    tokenizer = make_tokenizer()
    model = make_policy(len(tokenizer), tmp_path / "policy", seed=2)
    trainer = RecordingDenseGRPOTrainer(
        model=model,
        reward_funcs=[DenseRewardFunction(additive_shapley_credit)],
        args=grpo_args(tmp_path, max_steps=1, std_of="sequence", baseline="group"),
        train_dataset=make_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    (gen,) = trainer.generated
    grpo, dense = gen["grpo"], gen["dense"]
    assert bool((grpo != 0).any())
    torch.testing.assert_close(dense[:, 0], grpo, rtol=1e-5, atol=1e-5)
    prompts = trainer.processing_class.batch_decode(gen["prompt_ids"], skip_special_tokens=True)
    credit = additive_shapley_credit(prompts, None, gen["scored_ids"])
    std = torch.tensor(credit.rewards.tolist(), dtype=torch.float32).view(-1, NUM_GENERATIONS).std(1)
    ended = 0
    for i, ids in enumerate(gen["scored_ids"]):
        prefix = torch.cumsum(0.5 * credit.values[i], 0)[:-1]  # alpha * credit of the tokens before t
        want = grpo[i].double() - prefix / (float(std[i // NUM_GENERATIONS]) + 1e-4)
        if ids[-1] == EOS and len(ids) > 1:  # eos_advantage="sequence": the ending token has GRPO's advantage
            want[-1], ended = grpo[i], ended + 1
        torch.testing.assert_close(dense[i, 1 : len(ids)].double(), want, rtol=1e-4, atol=1e-4)
    assert ended  # the case was exercised


def test_dense_grpo_trainer_eos_advantage_credit_keeps_the_token_formula(tmp_path):
    """``eos_advantage="credit"``: every token, the ending EOS too, has its return-to-go advantage."""
    tokenizer = make_tokenizer()
    model = make_policy(len(tokenizer), tmp_path / "policy", seed=2)
    trainer = RecordingDenseGRPOTrainer(
        model=model,
        reward_funcs=[DenseRewardFunction(additive_shapley_credit)],
        args=grpo_args(tmp_path, max_steps=1, std_of="sequence", baseline="group", eos_advantage="credit"),
        train_dataset=make_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    (gen,) = trainer.generated
    prompts = trainer.processing_class.batch_decode(gen["prompt_ids"], skip_special_tokens=True)
    credit = additive_shapley_credit(prompts, None, gen["scored_ids"])
    lengths = torch.tensor([len(ids) for ids in gen["scored_ids"]])
    rows = padded([t.tolist() for t in credit.token_rewards], gen["dense"].shape[1])
    want = dense_group_advantages(rows, lengths, NUM_GENERATIONS, "group", "sequence", "group")
    assert any(ids[-1] == EOS for ids in gen["scored_ids"])
    torch.testing.assert_close(gen["dense"], want, rtol=1e-5, atol=1e-5)


def test_dense_grpo_trainer_with_scar_provider(tmp_path):
    """The real credit provider: scar.SCAR on a random GPT-2 reward model sharing the policy's tokenizer.

    The policy stops at once in about a fifth of its completions: those are only EOS, decode to "", and
    are scored as v(∅) with their reward on the EOS."""
    tokenizer = make_tokenizer()
    model = make_policy(len(tokenizer), tmp_path / "policy", seed=3)
    before = snapshot(model)
    reward_model = make_reward_model(len(tokenizer))
    credit = SCAR(reward_model, tokenizer, players="span", method="exact", alpha=0.5, progress=False, seed=0)
    calls = []

    def spy(prompts, completions, completion_ids):
        calls.append((completions, completion_ids, credit(prompts, completions, completion_ids)))
        return calls[-1][2]

    trainer = RecordingDenseGRPOTrainer(
        model=model,
        reward_funcs=[DenseRewardFunction(spy, name="SCAR")],
        args=grpo_args(tmp_path, max_steps=1, std_of="sequence"),
        train_dataset=make_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    assert moved(model, before)
    (gen,) = trainer.generated
    grpo, dense = gen["grpo"], gen["dense"]
    assert bool((grpo != 0).any())
    # exact Shapley values: sum_t R_t = r - alpha * v(∅), and v(∅) is the same for a prompt's group
    torch.testing.assert_close(dense[:, 0], grpo, rtol=1e-4, atol=1e-4)
    assert any(len(set(dense[i, : len(s)].tolist())) > 1 for i, s in enumerate(gen["scored_ids"]))
    check_alignment(trainer)

    ((texts, ids, rewards),) = calls
    empty = [i for i, t in enumerate(texts) if t == ""]
    assert empty and all(ids[i] == [EOS] for i in empty)
    for i, row in enumerate(ids):
        r = rewards.rewards[i].item()
        if row[-1] == EOS:  # the sequence part (1 - alpha) * r sits on the EOS, the last completion token
            assert rewards.token_rewards[i][-1].item() == pytest.approx(0.5 * r, abs=1e-6)
        if i in empty:  # r = v(∅), no players
            assert rewards.base_values[i].item() == r and rewards.players[i] == []


def test_dense_grpo_trainer_needs_dense_reward(tmp_path):
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match="at least one DenseRewardFunction"):
        DenseGRPOTrainer(
            model=make_policy(len(tokenizer), tmp_path / "policy"),
            reward_funcs=[length_reward],
            args=grpo_args(tmp_path),
            train_dataset=make_dataset(),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="std_of"):
        grpo_args(tmp_path, std_of="tokens")
    with pytest.raises(ValueError, match="baseline"):
        grpo_args(tmp_path, baseline="prompt")
    with pytest.raises(ValueError, match="eos_advantage"):
        grpo_args(tmp_path, eos_advantage="token")
    plain = grpo_args(tmp_path, GRPOConfig)
    with pytest.raises(TypeError, match="DenseGRPOConfig"):
        DenseGRPOTrainer(
            model=make_policy(len(tokenizer), tmp_path / "policy"),
            reward_funcs=[DenseRewardFunction(dense_credit)],
            args=plain,
            train_dataset=make_dataset(),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="sum_then_normalize"):
        DenseGRPOTrainer(
            model=make_policy(len(tokenizer), tmp_path / "policy"),
            reward_funcs=[DenseRewardFunction(dense_credit)],
            args=grpo_args(tmp_path, multi_objective_aggregation="normalize_then_sum"),
            train_dataset=make_dataset(),
            processing_class=tokenizer,
        )


def test_trl_version_check(monkeypatch):
    import scar.integrations.trl as integration

    monkeypatch.setattr(integration.metadata, "version", lambda name: "1.16.4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the tested range: no warning
        assert integration._check_trl_version() == "1.16.4"
    monkeypatch.setattr(integration.metadata, "version", lambda name: "1.17.0")
    with pytest.warns(UserWarning, match=r"tested with trl>=1.16,<1.17 but trl 1.17.0 is installed"):
        integration._check_trl_version()

    def missing(name):
        raise integration.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(integration.metadata, "version", missing)
    with pytest.raises(ImportError, match=r"scar-rlhf\[trl\]"):
        integration._check_trl_version()


# ---------------------------------------------------------------- several processes (torchrun, gloo, CPU)


def test_dense_grpo_trainer_two_processes_equals_the_one_process_formula(tmp_path):
    """Two processes under torchrun, each group split across them: the advantages each process used are
    the rows of dense_group_advantages over every process's rewards."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        "0",
        str(HERE / "trl_two_process.py"),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The log goes to a file, not a pipe: torchrun starts each worker in a session of its own, so a worker that
    # outlived torchrun would hold a pipe open (and communicate() would wait for it) beyond any kill of
    # torchrun's process group.
    log_path = tmp_path / "torchrun.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True
        )
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun (its workers give up on their collectives' timeout)
            proc.wait()
            pytest.fail(f"the two-process training did not finish in 240 s:\n{log_path.read_text()[-4000:]}")
    log = log_path.read_text()
    assert proc.returncode == 0, log[-4000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [(d["rank"], d["world_size"], d["backend"]) for d in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert len(ranks[0]["generated"]) == len(ranks[1]["generated"]) == 2  # two steps, one generation each
    for step in range(2):
        gens = [d["generated"][step] for d in ranks]
        rows = gens[0]["scored_ids"] + gens[1]["scored_ids"]  # the gather order: process 0's rows, then 1's
        prompts = gens[0]["prompt_ids"] + gens[1]["prompt_ids"]
        assert len(rows) == NUM_GENERATIONS and len({tuple(p) for p in prompts}) == 1  # one group, split in two
        # the per-token rewards, built here from the completions: dense credit + 0.5 * the length reward at T
        token_rewards = []
        for ids, tok in zip(rows, dense_credit(None, None, rows).token_rewards):
            r = tok.double().clone()
            r[-1] += 0.5 * 0.25 * len(ids)
            token_rewards.append(r)
        length = max(len(r) for r in rows)
        gathered = torch.zeros(len(rows), length, dtype=torch.float64)
        for i, r in enumerate(token_rewards):
            gathered[i, : r.numel()] = r
        lengths = torch.tensor([len(r) for r in rows])
        ended = [ids[-1] == EOS for ids in rows]
        want = dense_group_advantages(
            gathered, lengths, NUM_GENERATIONS, "group", "token", "position", ended=torch.tensor(ended)
        ).double()
        torch.testing.assert_close(
            want,
            padded(
                reference_advantages([r.tolist() for r in token_rewards], NUM_GENERATIONS, "group", ended=ended),
                length,
            ),
        )
        for r, gen in enumerate(gens):
            used = gen["advantages"].double()
            width = used.shape[1]
            assert width == max(len(c) for c in gen["scored_ids"])  # each process keeps its own (B, T)
            torch.testing.assert_close(used, want[2 * r : 2 * r + 2, :width], rtol=1e-5, atol=1e-5)
    # what the loss saw is what was built at generation time, row for row
    for d in ranks:
        assert len(d["losses"]) == 2
        for gen, loss in zip(d["generated"], d["losses"]):  # one generation per step
            built = {tuple(ids): adv[: len(ids)] for ids, adv in zip(gen["scored_ids"], gen["advantages"])}
            assert sorted(map(tuple, loss["completion_ids"])) == sorted(map(tuple, gen["scored_ids"]))
            for ids, adv in zip(loss["completion_ids"], loss["advantages"]):
                torch.testing.assert_close(adv[: len(ids)], built[tuple(ids)])


# ---------------------------------------------------------------- async reward function


class Overlap:
    """Two reward functions that can finish only if they run at the same time (timeouts, never a hang)."""

    def __init__(self):
        self.credit_running = threading.Event()
        self.other_ran = threading.Event()
        self.overlapped: list[bool] = []
        self.threads: list[str] = []

    def credit(self, prompts, completions, completion_ids):
        self.threads.append(threading.current_thread().name)
        self.credit_running.set()
        self.overlapped.append(self.other_ran.wait(timeout=20))
        self.other_ran.clear()
        return dense_credit(prompts, completions, completion_ids)

    async def judge(self, prompts, completions, completion_ids, **kwargs):
        deadline = time.monotonic() + 20
        while not self.credit_running.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self.credit_running.clear()
        self.other_ran.set()
        return [0.25 * len(ids) for ids in completion_ids]


def test_async_reward_function_overlaps_other_async_rewards_in_grpo(tmp_path):
    tokenizer = make_tokenizer()
    overlap = Overlap()
    fn = AsyncDenseRewardFunction(overlap.credit, name="dense_async")
    model = make_policy(len(tokenizer), tmp_path / "policy")
    trainer = RecordingDenseGRPOTrainer(
        model=model,
        reward_funcs=[fn, overlap.judge],
        args=grpo_args(tmp_path, max_steps=2, reward_weights=[1.0, 0.5]),
        train_dataset=make_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    fn.close()
    assert overlap.overlapped == [True, True]  # the credit waited for the judge, which ran meanwhile
    assert all(name.startswith("credit-dense_async") for name in overlap.threads)  # in the function's executor
    for gen in trainer.generated:  # the dense advantages, as with a synchronous reward function
        rows = []
        for ids, tok in zip(gen["scored_ids"], dense_credit(None, None, gen["scored_ids"]).token_rewards):
            r = tok.double().tolist()
            r[-1] += 0.5 * 0.25 * len(ids)
            rows.append(r)
        ended = [ids[-1] == EOS for ids in gen["scored_ids"]]
        want = padded(reference_advantages(rows, NUM_GENERATIONS, "group", ended=ended), gen["dense"].shape[1])
        torch.testing.assert_close(gen["dense"].double(), want, rtol=1e-5, atol=1e-5)
    check_alignment(trainer)
    assert sum("credit/dense_async/seconds" in h for h in trainer.state.log_history) == 2


def test_async_reward_function_awaits_a_provider_with_acall():
    class Provider:
        tokenizer = None

        def __call__(self, *args):
            raise AssertionError("the async reward function should await acall")

        async def acall(self, prompts, completions, completion_ids):
            await asyncio.sleep(0)
            return dense_credit(prompts, completions, completion_ids)

    fn = AsyncDenseRewardFunction(Provider(), name="pool")
    ids = [[3, 4, 1], [5, 6, 7, 8]]
    assert asyncio.run(fn(prompts=["p", "q"], completions=["x", "y"], completion_ids=ids)) == [0.3, 0.4]
    assert [t.numel() for t in fn.take(ids).token_rewards] == [3, 4]
    # without acall: the provider runs in the executor; the function pickles without it
    plain = AsyncDenseRewardFunction(dense_credit)
    assert asyncio.run(plain(prompts=["p"], completions=["x"], completion_ids=[[3]])) == [0.1]
    import pickle

    assert pickle.loads(pickle.dumps(plain))._executor is None
    plain.close()


# ---------------------------------------------------------------- conversational datasets

CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}then{% endif %}"
)


def chat_tokenizer(adds_bos: bool = False):
    """The word-level tokenizer with a tiny chat template; optionally a BOS that encoding adds by itself."""
    from tokenizers import processors

    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    if adds_bos:
        tokenizer.add_special_tokens({"bos_token": "<bos>"})
        bos = tokenizer.bos_token_id
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", bos)]
        )
    return tokenizer


def test_conversational_prompts_through_the_chat_template():
    seen = []

    def spy(prompts, completions, completion_ids):
        seen.append((prompts, completions))
        return dense_credit(prompts, completions, completion_ids)

    chat = [[{"role": "system", "content": "a"}, {"role": "user", "content": "the cat sat on"}]]
    answer = [[{"role": "assistant", "content": "the mat"}]]
    fn = DenseRewardFunction(spy, tokenizer=chat_tokenizer())
    assert fn(prompts=chat, completions=answer, completion_ids=[[3, 11, 1]]) == [0.3]
    assert seen[-1] == (["a the cat sat on then"], ["the mat"])
    # a tokenizer that adds its BOS by itself: the template's BOS is dropped (one BOS when encoded)
    tokenizer = chat_tokenizer(adds_bos=True)
    DenseRewardFunction(spy, tokenizer=tokenizer)(prompts=chat, completions=answer, completion_ids=[[3]])
    assert seen[-1][0] == ["a the cat sat on then"]
    assert tokenizer(seen[-1][0][0])["input_ids"][:1] == [tokenizer.bos_token_id]
    # content blocks; the tokenizer found on the credit provider
    spy.tokenizer = chat_tokenizer()
    blocks = [[{"role": "assistant", "content": [{"type": "text", "text": "the "}, {"type": "text", "text": "mat"}]}]]
    DenseRewardFunction(spy)(prompts=chat, completions=blocks, completion_ids=[[3]])
    assert seen[-1] == (["a the cat sat on then"], ["the mat"])
    # a user formatting function, for any form
    fmt = DenseRewardFunction(spy, format_fn=lambda p, c: (p[-1]["content"], " " + c[0]["content"]))
    fmt(prompts=chat, completions=answer, completion_ids=[[3]])
    assert seen[-1] == (["the cat sat on"], [" the mat"])

    with pytest.raises(TypeError, match="no chat template"):
        DenseRewardFunction(spy, tokenizer=make_tokenizer())(prompts=chat, completions=answer, completion_ids=[[3]])
    with pytest.raises(TypeError, match="no reward tokenizer"):
        DenseRewardFunction(dense_credit)(prompts=chat, completions=answer, completion_ids=[[3]])
    two = [[{"role": "assistant", "content": "the"}, {"role": "tool", "content": "mat"}]]
    with pytest.raises(TypeError, match=r"completion 0: .* one message with text content, got 2"):
        DenseRewardFunction(spy)(prompts=chat, completions=two, completion_ids=[[3]])
    with pytest.raises(TypeError, match="format_fn must return"):
        DenseRewardFunction(spy, format_fn=lambda p, c: "x")(prompts=["p"], completions=["x"], completion_ids=[[3]])


def test_dense_grpo_trainer_on_a_conversational_dataset_logs_credit_statistics(tmp_path):
    """Chat prompts in, SCAR on the templated text, credit statistics in TRL's logs."""
    from datasets import Dataset

    tokenizer = chat_tokenizer()
    reward_model = make_reward_model(len(tokenizer))
    credit = SCAR(
        reward_model, tokenizer, players="token", method="permutation", budget=2, alpha=0.5, progress=False, seed=0
    )
    fn = DenseRewardFunction(credit, name="SCAR")
    dataset = Dataset.from_dict(
        {
            "prompt": [
                [{"role": "user", "content": p}]
                for p in ["the cat sat on", "a dog ran under", "the big red", "a small happy"]
            ]
        }
    )
    model = make_policy(len(tokenizer), tmp_path / "policy", seed=3)
    trainer = RecordingDenseGRPOTrainer(
        model=model,
        reward_funcs=[fn],
        args=grpo_args(tmp_path, max_steps=1),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    (gen,) = trainer.generated
    check_alignment(trainer)
    # the credit provider scored the templated prompt and the decoded completion
    prompts = [tokenizer.decode(p[m.bool()]) for p, m in zip(gen["prompt_ids"], gen["prompt_mask"])]
    assert all(p.endswith(" then") for p in prompts)  # templated: the generation prompt is there
    completions = tokenizer.batch_decode([torch.tensor(c) for c in gen["scored_ids"]], skip_special_tokens=True)
    want = credit(prompts, completions, gen["scored_ids"])
    (logged,) = [h for h in trainer.state.log_history if "credit/SCAR/seconds" in h]
    assert set(fn.last_metrics) == {"seconds", "coalitions", "tokens_computed", "stderr_mean"}
    for key in ("coalitions", "tokens_computed", "stderr_mean"):
        assert logged[f"credit/SCAR/{key}"] == pytest.approx(fn.last_metrics[key], rel=1e-6)
    assert fn.last_metrics["coalitions"] > 0 and fn.last_metrics["tokens_computed"] > 0
    assert logged["rewards/SCAR/mean"] == pytest.approx(float(want.rewards.mean()), abs=1e-5)
