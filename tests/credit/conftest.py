"""The random GPT-2 reward model (2 layers, vocabulary 300) and its tokenizer shared by the credit tests;
a module that needs another defines its own ``tokenizer`` / ``rm``."""

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from tiny_tokenizers import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(300)


@pytest.fixture(scope="module")
def rm():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=300, n_positions=128, num_labels=1,
                     pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return GPT2ForSequenceClassification(cfg).eval()
