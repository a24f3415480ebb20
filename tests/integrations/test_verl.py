"""verl integration: the "scar" reward manager and the "scar_grpo" advantage estimator, run for real on CPU.

A tiny random GPT-2 reward model with a byte-level BPE tokenizer (and one with the policy's word-level
tokenizer) is saved to a temporary folder and loaded by the manager the way verl's reward-loop workers load
it; the policy's tokenizer is a word-level one. verl's config is composed by Hydra from verl's own
``ppo_trainer`` config with the overrides the README documents. Runs in ``.venv-verl``
(``scripts/setup_verl_env.sh``); skipped where verl is not installed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "verl", reason="verl is not installed: the verl tests run in .venv-verl (scripts/setup_verl_env.sh)"
)

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict
from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from transformers.utils import logging as hf_logging
from verl import DataProto
from verl.trainer.ppo import core_algos

from scar.credit.advantages import dense_group_advantages
from scar.credit.rewarder import SCAR
from scar.integrations.verl import (
    ScarGRPOConfig,
    SCARRewardManager,
    VerlCreditConfig,
    check_colocated_route,
    compute_scar_grpo_advantage,
    compute_score,
)

from tiny_tokenizers import STORY_WORDS as WORDS
from tiny_tokenizers import WORD_PAD as PAD
from tiny_tokenizers import build_tokenizer, word_level_tokenizer

ROOT = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
SETTINGS = {"players": "span", "method": "kernel", "seed": 3, "batch_size": 8}

# (prompt words, response words, uid); "<eos>" is the policy's EOS. One response is only EOS (empty text).
ROWS = [
    ("the cat sat on", "the mat <eos>", "u0"),
    ("a dog ran under", "the big red log and then it was sad <eos>", "u0"),
    ("the big red", "cat sat <eos>", "u1"),
    ("a small happy", "dog ran on the log then", "u1"),  # no EOS: cut at the length limit
    ("the cat sat on", "<eos>", "u0"),
]


def overrides(rm_dir: Path, policy_dir: Path) -> list[str]:
    """The Hydra overrides of the README's launch command (paths filled in; trainer keys left out)."""
    return [
        "algorithm.adv_estimator=scar_grpo",
        "reward.reward_manager.name=scar",
        "reward.custom_reward_function.path=pkg://scar.integrations.verl",
        "reward.custom_reward_function.name=compute_score",
        "reward.reward_model.enable=True",
        "reward.reward_model.enable_resource_pool=False",
        f"reward.reward_model.model_path={rm_dir}",
        "reward.reward_model.rollout.name=vllm",
        "reward.num_workers=2",
        f"actor_rollout_ref.model.path={policy_dir}",
        *(f"+reward.scar.{k}={v}" for k, v in SETTINGS.items()),
        "+reward.scar.device=cpu",
    ]


def verl_config(rm_dir: Path, policy_dir: Path, extra: list[str] = ()) -> OmegaConf:
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=[*overrides(rm_dir, policy_dir), *extra])


@pytest.fixture(autouse=True)
def _quiet():
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    hf_logging.set_verbosity(verbosity)


def save_reward_model(directory: Path, tokenizer, seed: int) -> Path:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=4, num_labels=1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    GPT2ForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Saved reward models (BPE tokenizer with a chat template; the policy's word tokenizer) and policy tokenizer."""
    root = tmp_path_factory.mktemp("verl")
    policy = word_level_tokenizer(WORDS)
    policy.save_pretrained(root / "policy")
    rm_tokenizer = build_tokenizer(300)
    rm_tokenizer.chat_template = CHAT_TEMPLATE
    rm_dir = save_reward_model(root / "rm", rm_tokenizer, seed=0)
    words_dir = save_reward_model(root / "rm_words", word_level_tokenizer(WORDS), seed=1)
    return {"policy": policy, "policy_dir": root / "policy", "rm": rm_dir, "rm_words": words_dir}


@pytest.fixture(scope="module")
def config(world):
    return verl_config(world["rm"], world["policy_dir"])


def make_batch(policy, rows=ROWS) -> DataProto:
    """A reward-loop batch as the agent loop hands it over: left-padded prompts, right-padded responses."""
    prompts = [policy(p, add_special_tokens=False)["input_ids"] for p, _, _ in rows]
    responses = [policy(r, add_special_tokens=False)["input_ids"] for _, r, _ in rows]
    width_p, width_r = max(map(len, prompts)) + 1, max(map(len, responses)) + 2
    n = len(rows)
    prompt_t = torch.full((n, width_p), PAD, dtype=torch.long)
    response_t = torch.full((n, width_r), PAD, dtype=torch.long)
    mask = torch.zeros(n, width_p + width_r, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        prompt_t[i, width_p - len(p):] = torch.tensor(p)
        response_t[i, : len(r)] = torch.tensor(r)
        mask[i, width_p - len(p): width_p + len(r)] = 1
    raw = np.empty(n, dtype=object)
    raw[:] = [[{"role": "user", "content": p}] for p, _, _ in rows]
    return DataProto.from_dict(
        tensors={
            "prompts": prompt_t, "responses": response_t, "attention_mask": mask,
            "input_ids": torch.cat([prompt_t, response_t], dim=1),
        },
        non_tensors={
            "uid": np.array([u for _, _, u in rows], dtype=object),
            "data_source": np.array(["test"] * n, dtype=object),
            "raw_prompt": raw,
        },
    )


def run_rows(manager: SCARRewardManager, data: DataProto) -> list[dict]:
    """run_single on every row concurrently, as verl's RewardLoopWorker.compute_score_batch does."""

    async def all_rows():
        return await asyncio.gather(*(manager.run_single(data[i : i + 1]) for i in range(len(data))))

    return asyncio.run(all_rows())


def direct_scar(world, prompt_mode: str, rm_dir: Path) -> tuple[torch.Tensor, object]:
    """The dense rows by calling SCAR directly on the same rows, right-padded like ``rm_scores``."""
    policy = world["policy"]
    model = GPT2ForSequenceClassification.from_pretrained(rm_dir).eval()
    rm_tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    credit = SCAR(model, rm_tokenizer, policy_tokenizer=policy, suffix_ids=[rm_tokenizer.eos_token_id],
                  progress=False, **SETTINGS)
    ids = [policy(r, add_special_tokens=False)["input_ids"] for _, r, _ in ROWS]
    prompt_ids = [policy(p, add_special_tokens=False)["input_ids"] for p, _, _ in ROWS]
    if prompt_mode == "ids":
        prompts = prompt_ids
    elif prompt_mode == "text":
        prompts = [policy.decode(p, skip_special_tokens=True) for p in prompt_ids]
    else:
        prompts = [rm_tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                    tokenize=False) for p, _, _ in ROWS]
    responses = [policy.decode(c, skip_special_tokens=True) for c in ids]
    dense = credit(prompts, responses, ids)
    width = make_batch(policy).batch["responses"].size(1)
    out = torch.zeros(len(ROWS), width)
    for i, row in enumerate(dense.token_rewards):
        out[i, : row.numel()] = row.float()
    return out, dense


@pytest.mark.parametrize("prompt_mode", ["text", "chat", "ids"])
def test_manager_equals_scar_called_directly(world, config, prompt_mode):
    rm_dir = world["rm_words"] if prompt_mode == "ids" else world["rm"]
    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        cfg.reward.scar.prompt = prompt_mode
        cfg.reward.scar.model_path = str(rm_dir)
    manager = SCARRewardManager(cfg, world["policy"], compute_score=None)
    data = make_batch(world["policy"])
    outputs = run_rows(manager, data)
    rm_scores = SCARRewardManager.assemble_rm_scores(data, [o["reward_score"] for o in outputs])

    expected, dense = direct_scar(world, prompt_mode, rm_dir)
    torch.testing.assert_close(rm_scores, expected, rtol=1e-5, atol=1e-6)
    assert rm_scores[:4].abs().sum(1).gt(0).all()  # credit on every response with text
    assert manager.scar_calls == 1  # the 5 concurrent rows were scored in one SCAR call (batch_size 8)
    assert len(manager.credit.last_stats) == len(ROWS)
    for o, r, v0 in zip(outputs, dense.rewards.tolist(), dense.base_values.tolist()):
        assert o["reward_extra_info"] == pytest.approx({"scar_reward": r, "scar_base_value": v0})
    # nothing outside the valid response tokens, and the EOS-only response holds (1 - alpha) r = 0 here
    valid = data.batch["attention_mask"][:, data.batch["prompts"].size(1):].bool()
    assert not rm_scores[~valid].any()


def test_right_padded_prompts_give_the_same_rows(world, config):
    """The v1 trainer hands the reward loop right-padded prompts: the attention mask says which are tokens."""
    manager = SCARRewardManager(config, world["policy"], compute_score=None)
    left = make_batch(world["policy"])
    right = make_batch(world["policy"])
    width_p = right.batch["prompts"].size(1)
    for i in range(len(right)):
        mask = right.batch["attention_mask"][i, :width_p].bool()
        tokens = right.batch["prompts"][i][mask]
        right.batch["prompts"][i] = PAD
        right.batch["prompts"][i, : tokens.numel()] = tokens
        right.batch["attention_mask"][i, :width_p] = 0
        right.batch["attention_mask"][i, : tokens.numel()] = 1
    got = [SCARRewardManager.assemble_rm_scores(d, [o["reward_score"] for o in run_rows(manager, d)])
           for d in (left, right)]
    torch.testing.assert_close(got[0], got[1])


def test_rows_do_not_depend_on_how_they_are_batched(world, config):
    """batch_size=2: five concurrent rows make three SCAR calls, and the same rows as one call of five."""
    data = make_batch(world["policy"])
    one = SCARRewardManager(config, world["policy"], compute_score=None)
    rows_one = [o["reward_score"] for o in run_rows(one, data)]
    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        cfg.reward.scar.batch_size = 2
    three = SCARRewardManager(cfg, world["policy"], compute_score=None)
    rows_three = [o["reward_score"] for o in run_rows(three, data)]
    assert (one.scar_calls, three.scar_calls) == (1, 3)
    for a, b in zip(rows_one, rows_three):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_refusals(world, config):
    policy = world["policy"]
    for key, value, needle in [
        ("reward.reward_model.enable", False, "reward.reward_model.enable=True"),
        ("reward.reward_model.enable_resource_pool", True, "enable_resource_pool=False"),
        ("reward.custom_reward_function.path", None, "custom_reward_function.path"),
    ]:
        cfg = copy.deepcopy(config)
        OmegaConf.update(cfg, key, value)
        with pytest.raises(ValueError, match=re.escape(needle)):
            SCARRewardManager(cfg, policy, compute_score=None)
    check_colocated_route(config)

    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        cfg.reward.scar.playerz = "span"
    with pytest.raises(TypeError, match="unknown keys \\['playerz'\\]"):
        SCARRewardManager(cfg, policy, compute_score=None)
    with pytest.raises(ValueError, match="unknown method"):
        VerlCreditConfig.from_section({"method": "nope"})
    with pytest.raises(ValueError, match="give the suffix as 'suffix'"):
        VerlCreditConfig.from_section({"suffix_ids": [1]})
    with pytest.raises(ValueError, match="unknown prompt"):
        VerlCreditConfig(prompt="html")

    data = make_batch(policy)
    with pytest.raises(TypeError, match="scalar score"):  # a batch scored by the inference server's /classify
        SCARRewardManager.assemble_rm_scores(data, [0.5] * len(data))
    with pytest.raises(ValueError, match="valid response tokens"):
        SCARRewardManager.assemble_rm_scores(data, [[0.0]] * len(data))
    with pytest.raises(RuntimeError, match="not a reward function"):
        compute_score(data_source="x", solution_str="y", ground_truth=None)
    manager = SCARRewardManager(config, policy, compute_score=None)
    with pytest.raises(ValueError, match="one row per run_single call"):
        asyncio.run(manager.run_single(data[0:2]))

    # a checkpoint without a sequence-classification head would be scored through random weights
    lm_dir = world["rm"].parent / "causal_lm"
    GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(lm_dir)
    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        cfg.reward.scar.model_path = str(lm_dir)
        cfg.reward.scar.tokenizer_path = str(world["rm"])
    with pytest.raises(ValueError, match="no trained sequence-classification head"):
        SCARRewardManager(cfg, policy, compute_score=None)


def test_import_verl_registers_both_names():
    """The verl.plugins entry point: a fresh `import verl` registers "scar" and "scar_grpo"."""
    code = (
        "import verl\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
        "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
        "print(get_reward_manager_cls('scar').__name__, get_adv_estimator_fn('scar_grpo').__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_PLUGINS"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=ROOT)
    assert run.returncode == 0, (
        "import verl did not register the SCAR plugin; is the package installed with its verl.plugins entry "
        f"point (pip install -e .)?\n{run.stderr[-2000:]}"
    )
    assert run.stdout.split()[-2:] == ["SCARRewardManager", "compute_scar_grpo_advantage"]


def test_reward_loop_manager_gives_the_managers_rows(world, config):
    """verl's batched path: RewardLoopManager starts reward.num_workers=2 Ray actors (RewardLoopWorker), splits
    the batch, runs run_single concurrently in each, then assemble_rm_scores; the rows equal the manager's.

    The manager is verl's RewardLoopManager except that it does not start the reward model's inference server
    (a vLLM/SGLang server that SCAR does not use and that needs a GPU): its __init__ below is verl's with that
    one step left out; the workers, compute_rm_score and the config are verl's and the README's.
    """
    ray = pytest.importorskip("ray")
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager, RewardLoopWorker
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    class RewardLoopManagerWithoutServer(RewardLoopManager):
        def __init__(self, config):
            self.config = config
            self.reward_model_manager = None
            self.reward_router_address = None
            self.reward_loop_workers_class = ray.remote(RewardLoopWorker)
            self.reward_manager_cls = resolve_reward_manager_cls(config)
            self._init_reward_loop_workers()

    data = make_batch(world["policy"])
    alone = SCARRewardManager(config, world["policy"], compute_score=None)
    expected = SCARRewardManager.assemble_rm_scores(data, [o["reward_score"] for o in run_rows(alone, data)])

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    try:
        manager = RewardLoopManagerWithoutServer(config)
        assert manager.reward_manager_cls is SCARRewardManager
        assert manager.reward_loop_worker_handles is None  # the agent loop does not score: the trainer does
        out = manager.compute_rm_score(data)
    finally:
        ray.shutdown()
    torch.testing.assert_close(out.batch["rm_scores"], expected)
    assert out.meta_info["reward_extra_keys"] == ["scar_reward", "scar_base_value"]
    assert out.non_tensor_batch["scar_reward"].shape == (len(data),)


# ---------------------------------------------------------------------- advantages


def dispatch_advantage(data: DataProto, estimator: str, config) -> DataProto:
    """verl's compute_advantage dispatch for these estimators (verl/trainer/ppo/ray_trainer.py lines 214-281):
    GAE calls compute_gae_advantage_return; any other registered estimator gets token_level_rewards,
    response_mask, config and index=uid. Used where the trainer module cannot be imported (see
    test_compute_advantage_of_the_trainer_module)."""
    if estimator == "gae":
        adv, ret = core_algos.compute_gae_advantage_return(
            token_level_rewards=data.batch["token_level_rewards"], values=data.batch["values"],
            response_mask=data.batch["response_mask"], gamma=1.0, lam=1.0,
        )
    else:
        adv, ret = core_algos.get_adv_estimator_fn(estimator)(
            token_level_rewards=data.batch["token_level_rewards"], response_mask=data.batch["response_mask"],
            config=config, index=data.non_tensor_batch["uid"],
        )
    data.batch["advantages"], data.batch["returns"] = adv, ret
    return data


def dense_rows(sizes: list[int], length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Grouped rows: dense rewards, lengths 1..length (a size-0 group entry means a padding row), uids."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    rewards = torch.randn(n, length, generator=g)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    uids = [f"g{k}" for k, size in enumerate(sizes) for _ in range(size)]
    return rewards, lengths, uids


def as_batch(rewards, lengths, uids, order) -> DataProto:
    mask = (torch.arange(rewards.size(1)) < lengths.unsqueeze(1)).float()
    return DataProto.from_dict(
        tensors={"token_level_rewards": (rewards * mask)[order], "response_mask": mask[order],
                 "values": torch.zeros_like(rewards)},
        non_tensors={"uid": np.array([uids[i] for i in order.tolist()], dtype=object)},
    )


def algorithm(**section):
    base = {"adv_estimator": "scar_grpo", "norm_adv_by_std_in_grpo": True, "use_pf_ppo": False}
    if section:
        base["scar_grpo"] = section
    return OmegaConf.create(base)


@pytest.mark.parametrize("section", [{}, {"std_of": "sequence", "baseline": "group"}, {"scale_rewards": "batch"}])
def test_scar_grpo_on_shuffled_rows_equals_the_grouped_computation(section):
    rewards, lengths, uids = dense_rows([4, 4, 4], 7, seed=0)
    order = torch.randperm(len(uids), generator=torch.Generator().manual_seed(1))
    data = dispatch_advantage(as_batch(rewards, lengths, uids, order), "scar_grpo", algorithm(**section))

    settings = ScarGRPOConfig.from_algorithm(algorithm(**section))
    expected = dense_group_advantages(rewards, lengths, 4, settings.scale_rewards, settings.std_of, settings.baseline)
    torch.testing.assert_close(data.batch["advantages"], expected[order])
    mask = data.batch["response_mask"].bool()
    returns = (rewards * mask[order.argsort()]).flip(1).cumsum(1).flip(1)[order]
    torch.testing.assert_close(data.batch["returns"], returns * mask)


def test_scar_grpo_handles_groups_of_different_sizes():
    """Groups of 4, 3 and 1 rows and verl's padding rows (their own uid, no response tokens), shuffled."""
    rewards, lengths, uids = dense_rows([4, 3, 1, 2], 6, seed=2)
    lengths[-2:] = 0  # the padding group
    order = torch.randperm(len(uids), generator=torch.Generator().manual_seed(3))
    data = dispatch_advantage(as_batch(rewards, lengths, uids, order), "scar_grpo", algorithm())
    got = data.batch["advantages"][order.argsort()]
    start = 0
    for size in (4, 3, 1, 2):
        rows = slice(start, start + size)
        expected = dense_group_advantages(rewards[rows], lengths[rows], size)
        torch.testing.assert_close(got[rows], expected)
        start += size
    assert not got[7:].any()  # a group of one and the padding rows: nothing to compare with
    with pytest.raises(ValueError, match="groups of equal size"):
        dispatch_advantage(as_batch(rewards, lengths, uids, order), "scar_grpo", algorithm(scale_rewards="batch"))
    with pytest.raises(TypeError, match="unknown keys"):
        ScarGRPOConfig.from_algorithm(algorithm(std="token"))
    assert ScarGRPOConfig.from_algorithm(OmegaConf.create({"norm_adv_by_std_in_grpo": False})).scale_rewards == "none"
    with pytest.raises(ValueError, match="groups rows by uid"):
        compute_scar_grpo_advantage(rewards, torch.ones_like(rewards), index=None, config=algorithm())


def test_gae_on_dense_token_level_scores_differs_from_sparse(world, config):
    """The manager's rows as token_level_scores (what the trainer does with rm_scores): GAE runs on them, and
    differs from GAE on the sparse scores (each row's total on its last token)."""
    manager = SCARRewardManager(config, world["policy"], compute_score=None)
    data = make_batch(world["policy"])
    dense = SCARRewardManager.assemble_rm_scores(data, [o["reward_score"] for o in run_rows(manager, data)])
    mask = data.batch["attention_mask"][:, data.batch["prompts"].size(1):].float()
    last = mask.sum(1).long() - 1
    sparse = torch.zeros_like(dense)
    sparse[torch.arange(len(dense)), last] = dense.sum(1)

    results = {}
    for name, scores in (("dense", dense), ("sparse", sparse)):
        batch = DataProto.from_dict(tensors={"token_level_rewards": scores, "response_mask": mask,
                                             "values": torch.zeros_like(scores)},
                                    non_tensors={"uid": data.non_tensor_batch["uid"]})
        results[name] = dispatch_advantage(batch, "gae", config.algorithm).batch
    for key in ("advantages", "returns"):
        assert torch.isfinite(results["dense"][key]).all()
        assert not torch.allclose(results["dense"][key], results["sparse"][key])
    # equal totals: the first token's return is the same; the later ones differ by the credit already earned
    torch.testing.assert_close(results["dense"]["returns"][:, 0], results["sparse"]["returns"][:, 0])


def test_compute_advantage_of_the_trainer_module():
    """verl's own compute_advantage (the function both trainers call) on "scar_grpo" and GAE."""
    # its imports (cachetools, fastapi, uvicorn) are in verl's [verl-core] extra; setup_verl_env.sh installs them
    from verl.trainer.ppo.ray_trainer import compute_advantage

    rewards, lengths, uids = dense_rows([3, 3], 5, seed=4)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(5))
    for estimator in ("scar_grpo", "gae"):
        got = compute_advantage(as_batch(rewards, lengths, uids, order), adv_estimator=estimator, config=algorithm())
        want = dispatch_advantage(as_batch(rewards, lengths, uids, order), estimator, algorithm())
        torch.testing.assert_close(got.batch["advantages"], want.batch["advantages"])


def test_readme_documents_these_overrides():
    """Every config key of the launch command used here is in the README's verl section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.find("## verl (PPO with dense rewards)")
    if start < 0:
        start = readme.find("verl (PPO with dense rewards)")
    assert start >= 0, "README has no 'verl (PPO with dense rewards)' section"
    section = readme[start:]
    for item in overrides(Path("RM"), Path("POLICY")):
        key = item.split("=", 1)[0].lstrip("+")
        assert key in section, f"README's verl section does not mention {key}"
