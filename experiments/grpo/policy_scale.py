"""How the cost of a GRPO step changes with the policy's size while the reward model stays fixed.

Credit costs reward-model passes; generation and the policy update cost policy passes. So the wall-time
balance between sparse GRPO and a dense-credit method depends on the ratio of the two models' sizes, and
this module measures it: the world's GRPO step (same prompts, batch, completion window, KL reference and
reward model) with the world's pre-trained policy and with wider and deeper GPT-2 policies of random
weights, each trained for a few steps with each method, timing every step and its credit.

A random-weight policy writes random tokens until ``max_tokens`` (its EOS probability is about one over the
vocabulary), so its completions are at least as long as a trained policy's and have at least as many
players: the credit measured here is, if anything, dearer than in training.

What it reports per policy size and method: the mean seconds per step, of which credit, after ``warmup``
steps; and per size, the ratio of a dense method's step to the sparse step. With the steps-to-threshold
ratio ``s`` measured in a training run (:mod:`grpo.report`), the wall-time ratio at a size is
``s x step ratio``; that product is derived, not measured, and is labelled so by :func:`format_scale_table`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grpo.train import TrainConfig, quiet_and_threads, train_one

__all__ = ["PolicySize", "SIZES", "SizedWorld", "policy_scale", "format_scale_table"]


@dataclass(frozen=True)
class PolicySize:
    """A GPT-2 policy shape (``None`` fields: the world's pre-trained policy as it is)."""

    name: str
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None


SIZES = (
    PolicySize("world policy (pre-trained)"),
    PolicySize("6 x 256", 6, 256, 4),
    PolicySize("12 x 512", 12, 512, 8),
    PolicySize("12 x 768 (GPT-2 small shape)", 12, 768, 12),
)


class SizedWorld:
    """The sentiment world with its policy replaced by a random-weight GPT-2 of ``size`` (seeded).

    Every other loader (tokenizer, reward model, prompts) is the world's own. The policy is saved under
    ``work_dir`` once and loaded from there, as TRL builds the KL reference model from the policy's path.
    """

    def __init__(self, world: Any, size: PolicySize, work_dir: str | os.PathLike[str], seed: int = 0) -> None:
        self._world, self.size, self.seed = world, size, seed
        self._path = Path(work_dir) / "policy"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._world, name)

    def policy(self) -> Any:
        """The world's policy (``size`` with no shape), else a random-weight GPT-2 of that shape."""
        from transformers import GPT2LMHeadModel

        if self.size.n_layer is None:
            return self._world.policy()
        if not self._path.exists():
            self._build().save_pretrained(self._path)
        return GPT2LMHeadModel.from_pretrained(self._path).eval()

    def _build(self) -> Any:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        base = self._world.policy()
        config = GPT2Config(
            **{k: v for k, v in base.config.to_dict().items() if k in ("vocab_size", "n_positions")},
            n_layer=self.size.n_layer,
            n_embd=self.size.n_embd,
            n_head=self.size.n_head,
            bos_token_id=base.config.bos_token_id,
            eos_token_id=base.config.eos_token_id,
            pad_token_id=base.config.pad_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = GPT2LMHeadModel(config)
        model.generation_config.pad_token_id = base.generation_config.pad_token_id
        return model


def _parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def policy_scale(
    world: Any,
    config: TrainConfig,
    methods: Sequence[str] = ("sparse", "scar-training"),
    sizes: Sequence[PolicySize] = SIZES,
    steps: int = 6,
    warmup: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Time ``steps`` GRPO steps of every method at every policy size; the first ``warmup`` are not counted.

    Returns:
        ``{"config", "reward_model_parameters", "sizes": [{"name", "policy_parameters", "methods": {method:
        {"step_s", "credit_s", "step_s_all"}}, "step_ratio": {method: step_s / sparse step_s}}]}``.
    """
    if not isinstance(steps, int) or not isinstance(warmup, int) or not 0 <= warmup < steps:
        raise ValueError(f"need integers 0 <= warmup < steps, got warmup={warmup!r}, steps={steps!r}")
    if "sparse" not in methods:
        raise ValueError("methods must include 'sparse' (the step ratios are taken against it)")
    record: dict[str, Any] = {
        "config": {"steps": steps, "warmup": warmup, "seed": seed, "methods": list(methods)},
        "reward_model_parameters": _parameters(world.reward_model()),
        "sizes": [],
    }
    with quiet_and_threads(config.threads), tempfile.TemporaryDirectory() as work:
        for k, size in enumerate(sizes):
            sized = SizedWorld(world, size, Path(work) / f"size-{k}", seed)
            row: dict[str, Any] = {
                "name": size.name,
                "policy_parameters": _parameters(sized.policy()),
                "methods": {},
            }
            for name in methods:
                run = train_one(sized, name, seed, steps, config, Path(work) / f"run-{k}-{name}", evaluate=False)
                counted = run["steps"][warmup:]
                row["methods"][name] = {
                    "step_s": float(np.mean([s["step_s"] for s in counted])),
                    "credit_s": float(np.mean([s["credit_s"] for s in counted])),
                    "step_s_all": [s["step_s"] for s in run["steps"]],
                }
                if progress:
                    m = row["methods"][name]
                    print(f"{size.name}, {name}: {m['step_s']:.2f} s / step (credit {m['credit_s']:.2f} s)", flush=True)
            sparse = row["methods"]["sparse"]["step_s"]
            row["step_ratio"] = {name: m["step_s"] / sparse for name, m in row["methods"].items()}
            record["sizes"].append(row)
    return record


def format_scale_table(record: dict[str, Any], steps_ratio: dict[str, float] | None = None) -> str:
    """The record as Markdown: seconds per step and credit per size and method, the step ratio to sparse,
    and, for each method in ``steps_ratio`` (its steps-to-threshold over sparse's, from a training run), the
    derived wall-time ratio ``steps ratio x step ratio``."""
    steps_ratio = steps_ratio or {}
    methods = [m for m in record["config"]["methods"] if m != "sparse"]
    header = ["policy", "policy parameters / reward model's", "sparse s / step"]
    for m in methods:
        header += [f"{m} s / step (credit)", f"{m} step / sparse step"]
        if m in steps_ratio:
            header.append(f"{m} wall / sparse, derived (steps ratio {steps_ratio[m]:.2f})")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rm = record["reward_model_parameters"]
    for row in record["sizes"]:
        cells = [row["name"], f"{row['policy_parameters'] / rm:.1f}", f"{row['methods']['sparse']['step_s']:.2f}"]
        for m in methods:
            s = row["methods"][m]
            cells += [f"{s['step_s']:.2f} ({s['credit_s']:.2f})", f"{row['step_ratio'][m]:.2f}"]
            if m in steps_ratio:
                cells.append(f"{steps_ratio[m] * row['step_ratio'][m]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
