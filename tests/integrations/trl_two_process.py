"""DenseGRPOTrainer in several processes: the script ``test_trl.py`` runs under ``torchrun`` (gloo, CPU).

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 trl_two_process.py OUT_DIR``.

Each process trains the tiny policy of :mod:`trl_world` for two steps with a dense reward function and a
sequence reward; 2 completions per process and 4 per prompt, so every group is split across the two
processes. Each process saves to ``OUT_DIR/rank<r>.pt`` what it scored and used: per generation batch its
scored completion ids, prompt ids and ``(B, T)`` advantages, and per loss call the loss inputs.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # trl_world, tiny_tokenizers

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from scar.integrations.trl import DenseGRPOTrainer, DenseRewardFunction  # noqa: E402

from trl_world import dense_credit, grpo_args, length_reward, make_dataset, make_policy, make_tokenizer  # noqa: E402

REWARD_WEIGHTS = [1.0, 0.5]


class RecordingTrainer(DenseGRPOTrainer):
    """Keeps what each generation batch scored and what each loss call saw."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generated: list[dict] = []
        self.losses: list[dict] = []

    def _dense_advantages(self, output, pending):
        advantages = super()._dense_advantages(output, pending)
        self.generated.append({
            "scored_ids": [list(c) for c in pending.completion_ids],
            "prompt_ids": [row[m.bool()].tolist() for row, m in zip(output["prompt_ids"], output["prompt_mask"])],
            "advantages": advantages.clone(),
        })
        return advantages

    def _compute_loss(self, model, inputs):
        mask = inputs["completion_mask"]
        self.losses.append({
            "advantages": inputs["advantages"].clone(),
            "completion_ids": [row[: int(m.sum())].tolist() for row, m in zip(inputs["completion_ids"], mask)],
        })
        return super()._compute_loss(model, inputs)


def main(out: Path) -> None:
    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    model = make_policy(len(tokenizer), out / "policy", seed=5)
    args = grpo_args(
        out / "run", max_steps=2, per_device_train_batch_size=2, reward_weights=REWARD_WEIGHTS, beta=0.04,
        ddp_timeout=60,  # a process that waits on a collective gives up instead of hanging
    )
    trainer = RecordingTrainer(
        model=model, reward_funcs=[DenseRewardFunction(dense_credit), length_reward], args=args,
        train_dataset=make_dataset(), processing_class=tokenizer,
    )
    trainer.train()
    state = trainer.accelerator.state
    record = {
        "rank": state.process_index,
        "world_size": state.num_processes,
        "device": str(trainer.accelerator.device),
        "backend": str(getattr(state, "backend", None)),
        "generated": trainer.generated,
        "losses": trainer.losses,
    }
    torch.save(record, out / f"rank{state.process_index}.pt")
    if torch.distributed.is_initialized():
        # Without it the process group's threads can outlive the interpreter's shutdown and abort the worker.
        torch.distributed.destroy_process_group()
    # The record is saved: leave without the interpreter's shutdown, whose joins of library threads have hung a
    # worker (asleep on a futex after both records were written), which torchrun then never reaps.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
