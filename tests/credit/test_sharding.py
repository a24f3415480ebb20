"""Credit does not depend on sharding: a response's credit is a function of (reward model, prompt, response,
settings, seed) alone, whichever call, batch, order or process scores it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scar.credit.rewarder import SCAR, response_seed

PROMPTS = ["Review:", "Q: opinion?", "Tell me:", "Review:"]
RESPONSES = [" It was great, and lovely! The end was sad.", " Boring, slow and long.",
             " I did not like the ending; the plot is thin.", " Fine, I guess; nothing more."]


@pytest.mark.parametrize("backend, tol", [("loop", 0.0), ("trie", 1e-5)])
@pytest.mark.parametrize("method, budget", [("permutation", 4), ("kernel", 10)])
def test_credit_is_the_same_alone_in_any_batch_and_order(rm, tokenizer, backend, tol, method, budget):
    def credit(prompts, responses, batch_size):
        scar = SCAR(rm, tokenizer, players="token", method=method, budget=budget, seed=7, backend=backend,
                    batch_size=batch_size, progress=False)
        return scar(prompts, responses).values

    together = credit(PROMPTS, RESPONSES, 4)
    one_by_one = credit(PROMPTS, RESPONSES, 1)
    reversed_order = credit(PROMPTS[::-1], RESPONSES[::-1], 3)[::-1]
    for i in range(len(RESPONSES)):
        alone = credit(PROMPTS[i : i + 1], RESPONSES[i : i + 1], 1)[0]
        for other in (one_by_one[i], reversed_order[i], alone):
            torch.testing.assert_close(other, together[i], atol=tol, rtol=tol)
    # the same response under two prompts is a different game: its sampling differs
    assert response_seed(7, [1, 2], [3, 4]) != response_seed(7, [1, 3], [3, 4])
    assert response_seed(7, [1, 2], [3, 4]) != response_seed(8, [1, 2], [3, 4])


def test_seed_is_stable_across_processes():
    """The per-response seed is a content hash, not Python's salted hash(): another process agrees."""
    code = ("from scar.credit.rewarder import response_seed; "
            "print(response_seed(3, [10, 11, 12], [5, 6, 7, 8]))")
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.strip()) == response_seed(3, [10, 11, 12], [5, 6, 7, 8])
    assert 0 <= response_seed(3, [10, 11, 12], [5, 6, 7, 8]) < 2**63
