"""Summaries, tables and plots of the GRPO experiment's results (:func:`grpo.train.run`).

Steps and wall time to the threshold: the seed-mean training-reward curve of a method, smoothed by a
trailing moving average of ``smooth`` steps, must reach ``start + fraction * (best - start)``, where
``start`` is the mean reward of the first step over all runs (the same pre-trained policy) and ``best`` the
highest smoothed final value of any method; the wall time is the seed-mean training time (generation,
credit, optimisation) at that step. Ratios are to sparse GRPO of the same run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["summarise", "format_table", "plot", "plot_levers", "PLOT_FILE", "LEVERS_PLOT_FILE"]

PLOT_FILE = "training_reward.png"
LEVERS_PLOT_FILE = "levers.png"


def _trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter windows at the start)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def _curves(runs: list[dict[str, Any]], method: str, key: str) -> np.ndarray:
    """``[seeds, steps]`` of ``key`` for ``method`` (runs cut to the shortest)."""
    rows = [[s[key] for s in r["steps"]] for r in runs if r["method"] == method]
    n = min(len(row) for row in rows)
    return np.array([row[:n] for row in rows], dtype=np.float64)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per method: held-out reward, VADER, length and coherence (mean, sd over seeds), steps and wall time to
    the threshold (see the module docstring) and their ratio to sparse GRPO, time per step and per credit."""
    config, runs = results["config"], results["runs"]
    if not runs:
        raise ValueError("no runs to summarise")
    methods = [m for m in config["methods"] if any(r["method"] == m for r in runs)]
    window, fraction = config["smooth"], config["fraction"]
    smoothed = {m: _trailing_mean(_curves(runs, m, "reward").mean(axis=0), window) for m in methods}
    start = float(np.mean([r["steps"][0]["reward"] for r in runs]))
    best = max(float(c[-1]) for c in smoothed.values())
    threshold = start + fraction * (best - start)

    def first_step(curve: np.ndarray) -> int | None:
        hit = np.nonzero(curve >= threshold)[0] if best > start else np.array([], dtype=int)
        return int(hit[0]) + 1 if hit.size else None

    per_method = {}
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        wall = _curves(runs, m, "wall_s").mean(axis=0)
        step = first_step(smoothed[m])
        per_seed = [first_step(_trailing_mean(np.array([s["reward"] for s in r["steps"]]), window)) for r in mine]
        final = {
            key: _mean_sd([r["final"][key] for r in mine])
            for key in (
                "reward_mean",
                "vader_mean",
                "tokens_mean",
                "eos_fraction",
                "reference_perplexity",
                "distinct_bigrams",
            )
        }
        last = {
            key: float(np.mean([np.mean([s[key] for s in r["steps"][-window:]]) for r in mine]))
            for key in ("kl", "completion_length")
        }
        per_method[m] = {
            "seeds": [r["seed"] for r in mine],
            **{f"final_{k}": v[0] for k, v in final.items()},
            **{f"final_{k}_sd": v[1] for k, v in final.items()},
            "final_vader_positive_fraction": float(np.mean([r["final"]["vader_positive_fraction"] for r in mine])),
            "last_kl": last["kl"],
            "last_completion_length": last["completion_length"],
            "train_reward_last": float(smoothed[m][-1]),
            "steps_to_threshold": step,
            "wall_to_threshold": float(wall[step - 1]) if step is not None else None,
            "steps_to_threshold_per_seed": per_seed,
            "wall_to_threshold_per_seed": [
                float(r["steps"][k - 1]["wall_s"]) if k is not None else None for r, k in zip(mine, per_seed)
            ],
            "step_s_mean": float(np.mean([s["step_s"] for r in mine for s in r["steps"]])),
            "credit_s_mean": float(np.mean([s["credit_s"] for r in mine for s in r["steps"]])),
            "advantage_spread_mean": float(np.nanmean([s["advantage_spread"] for r in mine for s in r["steps"]])),
        }
    sparse = per_method.get("sparse")
    for s in per_method.values():
        for key in ("steps", "wall"):
            ours, theirs = s[f"{key}_to_threshold"], sparse[f"{key}_to_threshold"] if sparse else None
            s[f"{key}_ratio_to_sparse"] = ours / theirs if ours is not None and theirs else None
    initial = results.get("initial") or {}
    return {
        "threshold": {"start": start, "best": best, "fraction": fraction, "value": threshold, "smooth": window},
        "initial": initial,
        "methods": per_method,
    }


def _num(x: float | None, spec: str = ".2f", none: str = "–") -> str:
    return none if x is None else format(x, spec)


def format_table(results: dict[str, Any], summary: dict[str, Any] | None = None) -> str:
    """The summary as Markdown: the training table (speed to the threshold, cost) and the quality table
    (held-out reward, VADER, length, KL, coherence), one row per method plus the pre-trained policy."""
    summary = summary or summarise(results)
    th, steps = summary["threshold"], results["config"]["steps"]
    lines = [
        f"| credit | steps to {th['fraction']:.0%} of best gain (per seed) | wall s to it (per seed) | "
        "steps / sparse | wall / sparse | s / step | credit s / step | advantage spread |",
        "|" + "---|" * 8,
    ]
    for m, s in summary["methods"].items():
        seeds_steps = ", ".join(_num(x, "d") for x in s["steps_to_threshold_per_seed"])
        seeds_wall = ", ".join(_num(x, ".0f") for x in s["wall_to_threshold_per_seed"])
        reached = s["steps_to_threshold"]
        lines.append(
            f"| {m} | {reached if reached is not None else f'not in {steps}'} ({seeds_steps}) | "
            f"{_num(s['wall_to_threshold'], '.1f')} ({seeds_wall}) | {_num(s['steps_ratio_to_sparse'])} | "
            f"{_num(s['wall_ratio_to_sparse'])} | {s['step_s_mean']:.3f} | {s['credit_s_mean']:.3f} | "
            f"{s['advantage_spread_mean']:.3f} |"
        )
    lines += [
        "",
        "| credit | held-out reward | VADER | VADER > 0.05 | length (tokens) | EOS before the cap | KL (last steps) "
        "| perplexity under the pre-trained policy | distinct bigrams |",
        "|" + "---|" * 9,
    ]
    initial = summary.get("initial") or {}
    if initial:
        lines.append(
            f"| pre-trained policy | {initial['reward_mean']:.3f} | {initial['vader_mean']:.3f} | "
            f"{initial['vader_positive_fraction']:.2f} | {initial['tokens_mean']:.1f} | "
            f"{initial.get('eos_fraction', float('nan')):.2f} | 0 | "
            f"{initial.get('reference_perplexity', float('nan')):.1f} "
            f"| {initial.get('distinct_bigrams', float('nan')):.3f} |"
        )
    for m, s in summary["methods"].items():
        lines.append(
            f"| {m} | {s['final_reward_mean']:.3f} ± {s['final_reward_mean_sd']:.3f} | "
            f"{s['final_vader_mean']:.3f} ± {s['final_vader_mean_sd']:.3f} | "
            f"{s['final_vader_positive_fraction']:.2f} | {s['final_tokens_mean']:.1f} | "
            f"{s['final_eos_fraction']:.2f} | {s['last_kl']:.2f} | {s['final_reference_perplexity']:.1f} | "
            f"{s['final_distinct_bigrams']:.3f} |"
        )
    lines.append("")
    lines.append(
        f"Threshold: smoothed (trailing {th['smooth']}-step mean) training reward >= {th['value']:.3f} = first-step "
        f"reward {th['start']:.3f} + {th['fraction']:.0%} of the way to the best method's final smoothed reward "
        f"{th['best']:.3f}; mean ± sd over seeds {results['config']['seeds']}."
    )
    return "\n".join(lines)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders created) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(results: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Training reward against step and against wall time, and completion length against step: seed mean
    with a ±1 sd band, per method."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the project's machines
    import matplotlib.pyplot as plt

    runs, config = results["runs"], results["config"]
    methods = [m for m in config["methods"] if any(r["method"] == m for r in runs)]
    fig, (ax_step, ax_time, ax_len) = plt.subplots(1, 3, figsize=(16, 4.4))
    for m in methods:
        reward = np.array([_trailing_mean(row, config["smooth"]) for row in _curves(runs, m, "reward")])
        length = np.array([_trailing_mean(row, config["smooth"]) for row in _curves(runs, m, "completion_length")])
        wall = _curves(runs, m, "wall_s").mean(axis=0)
        steps = np.arange(1, reward.shape[1] + 1)
        for ax, x, y in ((ax_step, steps, reward), (ax_time, wall, reward), (ax_len, steps, length)):
            mean, sd = y.mean(axis=0), y.std(axis=0)
            (line,) = ax.plot(x, mean, label=f"{m} ({y.shape[0]} seeds)")
            ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)
    if results.get("initial"):
        for ax in (ax_step, ax_time):
            ax.axhline(results["initial"]["reward_mean"], color="grey", ls=":", lw=1, label="pre-trained (held-out)")
    ax_step.set_xlabel("GRPO step")
    ax_time.set_xlabel("wall time (s)")
    ax_len.set_xlabel("GRPO step")
    for ax in (ax_step, ax_time):
        ax.set_ylabel(f"reward of sampled completions ({config['smooth']}-step mean)")
    ax_len.set_ylabel("completion length (tokens)")
    for ax in (ax_step, ax_time, ax_len):
        ax.grid(alpha=0.3)
    ax_step.legend(loc="lower right", fontsize=7)
    fig.suptitle(title or f"GRPO on the sentiment task ({config['size']} world): mean ± sd over seeds")
    return _save(fig, path)


def plot_levers(
    summary: dict[str, Any],
    cost: dict[str, Any],
    path: str | os.PathLike[str],
    goals: tuple[float, float] = (0.4, 0.5),
) -> Path:
    """What each credit method costs and gains: its steps and its wall time to the threshold over sparse
    GRPO's (from :func:`summarise` of a training run) against its credit cost per batch in plain reward-model
    passes (from :func:`grpo.credit_cost.credit_cost`, the point's label adds its correlation with exact
    Shapley values). ``goals``: the steps and wall ratios drawn as dashed lines. Methods missing from either
    record are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = [m for m, s in summary["methods"].items() if m in cost["methods"] and s["steps_ratio_to_sparse"]]
    if not names:
        raise ValueError("no method has both a cost and a steps-to-threshold ratio")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, goal in zip(axes, ("steps", "wall"), goals):
        for m in names:
            x, y = cost["methods"][m]["cost"], summary["methods"][m][f"{key}_ratio_to_sparse"]
            if y is None:
                continue
            ax.scatter(x, y, s=28)
            ax.annotate(
                f"{m} (r={cost['methods'][m]['corr']:.2f})",
                (x, y),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        ax.axhline(1.0, color="grey", lw=1, label="sparse GRPO")
        ax.axhline(goal, color="grey", ls="--", lw=1, label=f"goal {goal:g}x")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([2, 3, 5, 10, 20, 50])
        ax.set_xlabel("credit cost per GRPO batch (plain reward-model passes)")
        ax.set_ylabel(f"{key} to the threshold / sparse GRPO's")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle("Credit methods: cost per batch against steps and wall time to the threshold")
    return _save(fig, path)
