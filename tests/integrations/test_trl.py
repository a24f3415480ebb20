"""TRL integration: DenseRewardFunction in GRPO/RLOO, DenseGRPOTrainer's per-token advantages.

Real training steps on CPU with a tiny random GPT-2 policy and a word-level tokenizer built in the test
(no downloads). Credit providers here are small deterministic functions of the completion ids that
return real ``scar.credit.rewards.DenseRewards``.
"""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch

from datasets import Dataset
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from advantage_reference import padded, reference_advantages
from tiny_tokenizers import word_level_tokenizer
from scar.integrations.trl import (
    DenseGRPOConfig,
    DenseGRPOTrainer,
    DenseRewardFunction,
)
from scar.game.players import Player
from scar.credit.rewarder import SCAR
from scar.credit.rewards import DenseRewards, shape_rewards

WORDS = "the a cat dog sat ran on under mat log red blue big small happy sad and then it was".split()
PAD, EOS = 0, 1  # word_level_tokenizer's special ids
NUM_GENERATIONS = 4
MAX_COMPLETION = 10


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


def make_tokenizer() -> PreTrainedTokenizerFast:
    return word_level_tokenizer(WORDS)


def make_policy(vocab_size: int, directory, seed: int = 0) -> GPT2LMHeadModel:
    """A random 2-layer GPT-2, saved to ``directory`` so TRL can load its reference copy from there."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        # Give EOS a logit near +2 whatever the context (through the final layer norm's bias), so that
        # completions end at different lengths and the padding paths are exercised.
        bias = torch.randn(config.n_embd)
        model.transformer.ln_f.weight.fill_(0.5)
        model.transformer.ln_f.bias.copy_(bias)
        model.lm_head.weight[EOS] = 2.0 * bias / bias.dot(bias)
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(directory)
    model.config._name_or_path = str(directory)  # TRL builds the KL reference model from this path
    return model


def make_dataset() -> Dataset:
    prompts = ["the cat sat on", "a dog ran under", "the big red", "a small happy"]
    return Dataset.from_dict({"prompt": prompts})


def dense_credit(prompts, completions, completion_ids):
    """Non-uniform per-token credit; the sequence reward r is *not* the sum of the token rewards."""
    token_rewards, rewards = [], []
    for ids in completion_ids:
        t = torch.tensor([((tid * 7 + pos * 3) % 11 - 5) / 5.0 for pos, tid in enumerate(ids)])
        token_rewards.append(t)
        rewards.append(float(len(ids)) / MAX_COMPLETION)
    return _dense(token_rewards, rewards, "test-dense")


def sparse_credit(prompts, completions, completion_ids):
    """All reward r on the last token (what GRPO does with a sequence reward)."""
    token_rewards, rewards = [], []
    for ids in completion_ids:
        r = ((sum(ids) * 13) % 17) / 4.0 - 2.0
        t = torch.zeros(len(ids))
        t[-1] = r
        token_rewards.append(t)
        rewards.append(r)
    return _dense(token_rewards, rewards, "sparse")


def _dense(token_rewards, rewards, method) -> DenseRewards:
    b = len(token_rewards)
    return DenseRewards(
        token_rewards=token_rewards,
        rewards=torch.tensor(rewards, dtype=torch.float64),
        base_values=torch.full((b,), math.nan, dtype=torch.float64),
        values=[torch.zeros(0) for _ in range(b)],
        stderr=[None] * b,
        players=[[] for _ in range(b)],
        method=method,
    )


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
        token_rewards=token_rewards, rewards=torch.tensor(rewards), base_values=torch.tensor(base),
        values=values, stderr=[None] * len(values), players=players, method="scar",
    )


def length_reward(prompts, completions, completion_ids, **kwargs):
    """A plain sequence reward function, to mix with the dense one."""
    return [0.25 * len(ids) for ids in completion_ids]


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
        return _dense([torch.zeros(len(c) - 1) for c in completion_ids], [0.0] * len(completion_ids), "bad")

    fn = DenseRewardFunction(short, name="short")
    with pytest.raises(ValueError, match=r"token_rewards\[0\] must have one reward per completion token \(3\)"):
        fn(prompts=["p"], completions=["x"], completion_ids=[[3, 4, 1]])
    with pytest.raises(TypeError, match="conversational"):
        fn(prompts=[[{"role": "user", "content": "p"}]], completions=["x"], completion_ids=[[3]])
    with pytest.raises(TypeError, match="callable"):
        DenseRewardFunction(42)


# ---------------------------------------------------------------- real training steps


def grpo_args(tmp_path, config_cls=DenseGRPOConfig, **kw) -> GRPOConfig:
    base = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        fp16=False,
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_COMPLETION,
        learning_rate=5e-2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return config_cls(**base)


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
        model=model, reward_funcs=[fn_spy], args=grpo_args(tmp_path / "grpo"),
        train_dataset=make_dataset(), processing_class=tokenizer,
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
    rloo_args = RLOOConfig(
        output_dir=str(tmp_path / "rloo"), use_cpu=True, bf16=False, fp16=False, max_steps=2,
        per_device_train_batch_size=4, num_generations=NUM_GENERATIONS, max_completion_length=MAX_COMPLETION,
        learning_rate=5e-2, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
    )
    trainer = RLOOTrainer(
        model=model, reward_funcs=[fn], args=rloo_args, train_dataset=make_dataset(), processing_class=tokenizer,
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
        model=model, reward_funcs=[DenseRewardFunction(dense_credit), length_reward], args=args,
        train_dataset=make_dataset(), processing_class=tokenizer,
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
    want = padded(reference_advantages(rows, NUM_GENERATIONS, "group"), gen["dense"].shape[1])
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
        model=model, reward_funcs=[DenseRewardFunction(sparse_credit)], args=grpo_args(tmp_path, max_steps=2, std_of=std_of),
        train_dataset=make_dataset(), processing_class=tokenizer,
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
        model=model, reward_funcs=[DenseRewardFunction(additive_shapley_credit)], args=grpo_args(tmp_path, max_steps=1, std_of="sequence", baseline="group"),
        train_dataset=make_dataset(), processing_class=tokenizer,
    )
    trainer.train()
    (gen,) = trainer.generated
    grpo, dense = gen["grpo"], gen["dense"]
    assert bool((grpo != 0).any())
    torch.testing.assert_close(dense[:, 0], grpo, rtol=1e-5, atol=1e-5)
    prompts = trainer.processing_class.batch_decode(gen["prompt_ids"], skip_special_tokens=True)
    credit = additive_shapley_credit(prompts, None, gen["scored_ids"])
    std = torch.tensor(credit.rewards.tolist(), dtype=torch.float32).view(-1, NUM_GENERATIONS).std(1)
    for i, ids in enumerate(gen["scored_ids"]):
        prefix = torch.cumsum(0.5 * credit.values[i], 0)[:-1]  # alpha * credit of the tokens before t
        want = grpo[i].double() - prefix / (float(std[i // NUM_GENERATIONS]) + 1e-4)
        torch.testing.assert_close(dense[i, 1 : len(ids)].double(), want, rtol=1e-4, atol=1e-4)


def test_dense_grpo_trainer_with_scar_provider(tmp_path):
    """The real credit provider: scar.SCAR on a random GPT-2 reward model sharing the policy's tokenizer.

    The policy stops at once in about a fifth of its completions: those are only EOS, decode to "", and
    are scored as v(∅) with their reward on the EOS."""
    tokenizer = make_tokenizer()
    model = make_policy(len(tokenizer), tmp_path / "policy", seed=3)
    before = snapshot(model)
    torch.manual_seed(4)
    reward_model = GPT2ForSequenceClassification(
        GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2, num_labels=1,
                   pad_token_id=PAD, eos_token_id=EOS)
    ).eval()
    credit = SCAR(reward_model, tokenizer, players="span", method="exact", alpha=0.5, progress=False, seed=0)
    calls = []

    def spy(prompts, completions, completion_ids):
        calls.append((completions, completion_ids, credit(prompts, completions, completion_ids)))
        return calls[-1][2]

    trainer = RecordingDenseGRPOTrainer(
        model=model, reward_funcs=[DenseRewardFunction(spy, name="SCAR")], args=grpo_args(tmp_path, max_steps=1, std_of="sequence"),
        train_dataset=make_dataset(), processing_class=tokenizer,
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
            model=make_policy(len(tokenizer), tmp_path / "policy"), reward_funcs=[length_reward],
            args=grpo_args(tmp_path), train_dataset=make_dataset(), processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="std_of"):
        grpo_args(tmp_path, std_of="tokens")
    with pytest.raises(ValueError, match="baseline"):
        grpo_args(tmp_path, baseline="prompt")
    plain = grpo_args(tmp_path, GRPOConfig)
    with pytest.raises(TypeError, match="DenseGRPOConfig"):
        DenseGRPOTrainer(
            model=make_policy(len(tokenizer), tmp_path / "policy"), reward_funcs=[DenseRewardFunction(dense_credit)],
            args=plain, train_dataset=make_dataset(), processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="sum_then_normalize"):
        DenseGRPOTrainer(
            model=make_policy(len(tokenizer), tmp_path / "policy"), reward_funcs=[DenseRewardFunction(dense_credit)],
            args=grpo_args(tmp_path, multi_objective_aggregation="normalize_then_sum"),
            train_dataset=make_dataset(), processing_class=tokenizer,
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
