"""The tiny TRL world shared by the TRL tests and the two-process training script (no downloads).

A word-level tokenizer, a random 2-layer GPT-2 policy whose completions end at different lengths, four
prompts, deterministic credit providers returning real ``scar.credit.rewards.DenseRewards``, a plain
sequence reward and the GRPO settings of a short CPU run.
"""

from __future__ import annotations

import math

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast
from trl import GRPOConfig

from scar.credit.rewards import DenseRewards
from scar.integrations.trl import DenseGRPOConfig

from tiny_tokenizers import STORY_WORDS as WORDS
from tiny_tokenizers import WORD_EOS as EOS
from tiny_tokenizers import WORD_PAD as PAD
from tiny_tokenizers import word_level_tokenizer

NUM_GENERATIONS = 4
MAX_COMPLETION = 10
PROMPTS = ["the cat sat on", "a dog ran under", "the big red", "a small happy"]


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


def make_reward_model(vocab_size: int, seed: int = 4) -> GPT2ForSequenceClassification:
    """A random 2-layer GPT-2 reward model over the same vocabulary, in eval mode."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2, num_labels=1,
        pad_token_id=PAD, eos_token_id=EOS,
    )
    return GPT2ForSequenceClassification(config).eval()


def make_dataset() -> Dataset:
    return Dataset.from_dict({"prompt": list(PROMPTS)})


def dense_token_rewards(completion_ids) -> list[torch.Tensor]:
    """The non-uniform per-token credit of :func:`dense_credit`."""
    return [torch.tensor([((tid * 7 + pos * 3) % 11 - 5) / 5.0 for pos, tid in enumerate(ids)])
            for ids in completion_ids]


def dense_credit(prompts, completions, completion_ids):
    """Non-uniform per-token credit; the sequence reward r is *not* the sum of the token rewards."""
    rewards = [float(len(ids)) / MAX_COMPLETION for ids in completion_ids]
    return make_dense(dense_token_rewards(completion_ids), rewards, "test-dense")


def make_dense(token_rewards, rewards, method) -> DenseRewards:
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


def length_reward(prompts, completions, completion_ids, **kwargs):
    """A plain sequence reward function, to mix with the dense one."""
    return [0.25 * len(ids) for ids in completion_ids]


def grpo_args(output_dir, config_cls=DenseGRPOConfig, **kw) -> GRPOConfig:
    base = dict(
        output_dir=str(output_dir),
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
