"""Training the sentiment world's models: the byte-level BPE tokenizer, the GPT-2 reward model and policy."""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import numpy as np
import torch

from scar.demo.sentiment_task import (
    BOS,
    EOS,
    PAD,
    POLICY_TOKENS,
    REWARD_SCALE,
    SPLITS,
    SizeConfig,
    reward_input_ids,
    reward_metrics,
    score_ids,
    vader_score,
)
from scar.demo.training import optimizer_step, warmup_cosine_lr
from scar.scoring.padded import pad_right

logger = logging.getLogger(__name__)


def train_tokenizer(corpus: dict[str, Any], config: SizeConfig):
    """Byte-level BPE trained on the prompts and reward texts, wrapped for ``transformers``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p["text"] for split in SPLITS for p in corpus["prompts"][split]]
    texts += [r["prompt"] + r["response"] for r in corpus["reward"]["train"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    # Untrimmed offsets: each token's character span includes its leading space, so spans tile the text.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=config.n_positions,
        padding_side="right",
    )


# ---------------------------------------------------------------- training


def _gpt2_config(tokenizer, config: SizeConfig, layers: int, width: int, heads: int, **extra):
    from transformers import GPT2Config

    # No dropout: the data are generated in abundance, and without it training is a pure
    # function of the seed and the batch order.
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _fit(
    model,
    rows: list[list[int]],
    targets: list[list[tuple[int, float]]] | None,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    pad_id: int,
    progress: bool,
    desc: str,
    prefix_weight: float = 0.0,
) -> float:
    """AdamW over shuffled right-padded batches; regression on ``targets``, else causal LM loss.

    For regression, ``targets[i]`` lists ``(position, value)`` pairs of row ``i``: the last pair is the
    read-out (EOS) target, the others prefix targets whose mean squared error is added with weight
    ``prefix_weight``. Returns the mean loss of the last epoch.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n_batches = math.ceil(len(rows) / batch_size)
    total = epochs * n_batches
    model.train()
    step, last_epoch_losses = 0, list[float]()
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for _epoch in range(epochs):
            last_epoch_losses = []
            order = torch.randperm(len(rows), generator=generator).tolist()
            for b in range(n_batches):
                index = order[b * batch_size : (b + 1) * batch_size]
                ids, mask = pad_right([rows[i] for i in index], pad_id)
                if targets is None:
                    labels = ids.masked_fill(mask == 0, -100)
                    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                else:
                    loss = _regression_loss(model, ids, mask, [targets[i] for i in index], prefix_weight)
                optimizer_step(
                    model, optimizer, loss, warmup_cosine_lr(step, total, lr, warmup_fraction=0.05, floor=0.1)
                )
                step += 1
                last_epoch_losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return float(np.mean(last_epoch_losses))


def _regression_loss(
    model, ids: torch.Tensor, mask: torch.Tensor, targets: list[list[tuple[int, float]]], prefix_weight: float
) -> torch.Tensor:
    """MSE at each row's read-out plus ``prefix_weight`` times the MSE at its prefix positions.

    The score head is applied to every position (the same weights ``GPT2ForSequenceClassification``
    uses at the read-out), so each sequence supervises many positions in one forward.
    """
    hidden = model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    scores = model.score(hidden)[..., 0]
    last = [(b, *pairs[-1]) for b, pairs in enumerate(targets)]
    rows_, cols, values = zip(*last)
    loss = torch.nn.functional.mse_loss(scores[list(rows_), list(cols)], torch.tensor(values))
    inner = [(b, pos, value) for b, pairs in enumerate(targets) for pos, value in pairs[:-1]]
    if prefix_weight > 0 and inner:
        rows_, cols, values = zip(*inner)
        loss = loss + prefix_weight * torch.nn.functional.mse_loss(
            scores[list(rows_), list(cols)], torch.tensor(values)
        )
    return loss


def _prefix_targets(
    rng: random.Random, tokenizer, example: dict[str, Any], row: list[int], n_prefixes: int
) -> list[tuple[int, float]]:
    """Up to ``n_prefixes`` (position, scaled VADER of the response up to there) pairs, then the read-out.

    Prefixes end at word ends (the next token starts with a space), where the text so far is a
    sequence of whole words -- the kind of text SCAR's span coalitions produce.
    """
    response = example["response"]
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    start = len(row) - 1 - len(offsets)  # index of the first response token in ``row``
    ends = [j for j in range(len(offsets) - 1) if response[offsets[j + 1][0]] == " "]
    chosen = sorted(rng.sample(ends, min(n_prefixes, len(ends))))
    labels = vader_score([response[: offsets[j][1]] for j in chosen])
    pairs = [(start + j, REWARD_SCALE * label) for j, label in zip(chosen, labels)]
    return pairs + [(len(row) - 1, REWARD_SCALE * example["vader"])]


def train_reward_model(corpus: dict[str, Any], tokenizer, config: SizeConfig, progress: bool):
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(config.seed + 10)
    model = GPT2ForSequenceClassification(
        _gpt2_config(
            tokenizer,
            config,
            config.reward_layers,
            config.reward_width,
            config.reward_heads,
            num_labels=1,
            problem_type="regression",
        )
    )
    train, test = corpus["reward"]["train"], corpus["reward"]["test"]
    rows = reward_input_ids(tokenizer, [r["prompt"] for r in train], [r["response"] for r in train])
    rng = random.Random(config.seed + 12)
    targets = [_prefix_targets(rng, tokenizer, ex, row, config.reward_prefixes) for ex, row in zip(train, rows)]
    train_loss = _fit(
        model,
        rows,
        targets,
        epochs=config.reward_epochs,
        lr=config.reward_lr,
        batch_size=config.batch_size,
        seed=config.seed + 11,
        pad_id=tokenizer.pad_token_id,
        progress=progress,
        desc="reward model",
        prefix_weight=config.reward_prefix_weight,
    )
    test_rows = reward_input_ids(tokenizer, [r["prompt"] for r in test], [r["response"] for r in test])
    pred = np.array(score_ids(model, test_rows))
    vader = np.array([r["vader"] for r in test])
    return model, {"reward_train_mse": train_loss, **reward_metrics(pred, vader)}


def train_policy(corpus: dict[str, Any], tokenizer, config: SizeConfig, progress: bool):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(config.seed + 20)
    model = GPT2LMHeadModel(
        _gpt2_config(tokenizer, config, config.policy_layers, config.policy_width, config.policy_heads)
    )

    def rows(split: str) -> list[list[int]]:
        data = corpus["policy"][split]
        return reward_input_ids(tokenizer, [r["prompt"] for r in data], [r["response"] for r in data])

    train_loss = _fit(
        model,
        rows("train"),
        None,
        epochs=config.policy_epochs,
        lr=config.policy_lr,
        batch_size=config.batch_size,
        seed=config.seed + 21,
        pad_id=tokenizer.pad_token_id,
        progress=progress,
        desc="policy",
    )
    test = rows("test")
    losses, counts = [], []
    with torch.no_grad():
        for start in range(0, len(test), config.batch_size):
            ids, mask = pad_right(test[start : start + config.batch_size], tokenizer.pad_token_id)
            n = int(mask[:, 1:].sum())
            losses.append(
                model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.item() * n
            )
            counts.append(n)
    return model, {"policy_train_loss": train_loss, "policy_test_loss": sum(losses) / sum(counts)}


@torch.no_grad()
def sample_policy(policy, reward_model, tokenizer, corpus: dict[str, Any], config: SizeConfig) -> dict[str, float]:
    """Statistics of completions sampled (temperature 1) from held-out prompts."""
    rng = random.Random(config.seed + 30)
    prompts = [rng.choice(corpus["prompts"]["test"])["text"] for _ in range(config.n_policy_samples)]
    torch.manual_seed(config.seed + 31)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    out = policy.generate(
        **enc,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        max_new_tokens=2 * POLICY_TOKENS[1],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :].tolist()
    lengths, finished, completions, rows = [], [], [], []
    for prompt_ids, row in zip(tokenizer(prompts)["input_ids"], new):
        done = tokenizer.eos_token_id in row
        row = row[: row.index(tokenizer.eos_token_id)] if done else row
        lengths.append(len(row))
        finished.append(done)
        completions.append(tokenizer.decode(row))
        # Score the sampled ids themselves: re-tokenising decoded text need not give them back.
        rows.append(prompt_ids + row + [tokenizer.eos_token_id])
    lo, hi = POLICY_TOKENS
    rewards = score_ids(reward_model, rows)
    return {
        "policy_sample_tokens": float(np.mean(lengths)),
        "policy_sample_eos_rate": float(np.mean(finished)),
        "policy_sample_in_length_window": float(np.mean([lo <= n <= hi for n in lengths])),
        "policy_sample_vader": float(np.mean(vader_score(completions))),
        "policy_sample_reward": float(np.mean(rewards)),
    }
