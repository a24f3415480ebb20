"""Property tests over the public entry points of the estimators, the rewards, the tokenization convention,
the players and the per-token advantages, fed random, malformed and extreme arguments.

Each test draws a valid call and then, about half of the time, replaces one argument with a bad value
(wrong type, out of range, NaN or infinite, huge, deeply nested, ...). The property, for every call: it
returns a well-formed result (finite where the function promises finite numbers, never a NaN that no
input asked for), or it raises TypeError or ValueError whose message names the offending argument. Any
other exception (IndexError, RuntimeError, OverflowError, RecursionError, MemoryError, KeyError,
AttributeError, ...) fails the test.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from scar.credit.advantages import dense_group_advantages
from scar.credit.rewards import DenseRewards, place_credit, shape_rewards
from scar.game.players import Player, hierarchy, segment, validate_players
from scar.game.tokens import as_token_ids, encode_pair, map_to_tokens, token_offsets
from scar.shapley import METHODS, ShapleyPlan, plan, shapley

from tiny_tokenizers import build_tokenizer, word_level_tokenizer

# SCAR_FUZZ_EXAMPLES raises the number of examples per test for a longer search (default: a fast run)
FUZZ = settings(
    max_examples=int(os.environ.get("SCAR_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def outcome(call: Callable[[], Any], names: Sequence[str]) -> Any:
    """The call's result, or None when it raised TypeError/ValueError naming one of ``names``."""
    try:
        result = call()
    except (TypeError, ValueError) as err:
        message = str(err)
        assert any(name in message for name in names), f"{type(err).__name__}({message!r}) names none of {names}"
        event(f"raised {type(err).__name__}")
        return None
    event("returned")
    return result


def corrupt(draw: st.DrawFn, args: dict[str, Any], bad: dict[str, st.SearchStrategy]) -> str | None:
    """Replace one argument of ``args`` by a draw from its bad values, about half of the time."""
    which = draw(st.sampled_from([None] * len(bad) + list(bad)))
    if which is not None:
        args[which] = draw(bad[which])
        event(f"corrupted {which}")
    return which


# --------------------------------------------------------------------------------------------------------
# shared strategies

HUGE_INTS = st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, 2**70, 10**30, -(2**63) - 1])
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.just([]),
    st.just({}),
    st.just(object()),
    st.just(np.array([1, 2])),
    st.just(torch.tensor([0.5])),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
EXTREME = st.sampled_from([1e300, -1e300, 1e308, 1e39, -1e39])


def nest(node: Any, depth: int) -> Any:
    for _ in range(depth):
        node = [node]
    return node


@st.composite
def partitions(draw: st.DrawFn, n: int) -> list:
    """A valid nested partition of range(n) (some groups wrapped in single-child lists)."""
    rest = list(draw(st.permutations(range(n))))
    tree: list = []
    while rest:
        k = draw(st.integers(1, len(rest)))
        group: Any = rest[:k]
        rest = rest[k:]
        if len(group) > 1 and draw(st.booleans()):
            cut = draw(st.integers(1, len(group) - 1))
            group = [group[:cut], group[cut:]]
        if len(group) == 1 and draw(st.booleans()):
            group = group[0]
        if draw(st.integers(0, 7)) == 0:
            group = nest(group, draw(st.integers(1, 3000)))
        tree.append(group)
    return tree


@st.composite
def bad_hierarchies(draw: st.DrawFn, n: int) -> Any:
    kind = draw(st.sampled_from(["random", "cyclic", "junk", "deep-bad", "empty"]))
    if kind == "random":
        leaves = st.one_of(st.integers(-3, n + 3), HUGE_INTS, JUNK)
        return draw(
            st.recursive(st.lists(leaves, max_size=4), lambda inner: st.lists(inner, max_size=4), max_leaves=12)
        )
    if kind == "cyclic":
        cyclic: list = list(range(min(n, 3)))
        cyclic.append(cyclic)
        return cyclic
    if kind == "deep-bad":
        return [nest(draw(st.sampled_from([[], "x", -1, n, [0, 0]])), draw(st.integers(500, 3000)))]
    if kind == "empty":
        return []
    return draw(JUNK)


# --------------------------------------------------------------------------------------------------------
# scar.shapley


def _game(coalitions: torch.Tensor) -> torch.Tensor:
    x = coalitions.double()
    return torch.sin(x @ torch.linspace(-1.0, 1.5, x.shape[1], dtype=torch.float64)) + 0.1 * x.sum(1) ** 2


SHAPLEY_NAMES = ("n_players", "method", "budget", "seed", "hierarchy", "batch_size")


@st.composite
def shapley_calls(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.one_of(st.integers(1, 10), st.integers(11, 40)))
    method = draw(st.sampled_from(METHODS))
    budget = None
    if method != "exact":
        budget = draw(
            st.one_of(
                st.none(), st.integers(1, 100).map(lambda k: 2 * k), st.sampled_from([2 * 10**7, 10**9, 2**70, 2**22])
            )
        )
    args = dict(
        n_players=n,
        method=method,
        budget=budget,
        seed=draw(st.one_of(st.none(), st.integers(0, 2**63 - 1))),
        hierarchy=draw(partitions(n)) if method == "owen" else None,
        batch_size=draw(st.one_of(st.none(), st.integers(1, 64))),
    )
    corrupt(
        draw,
        args,
        {
            "n_players": st.one_of(st.integers(-3, 0), st.sampled_from([10**6, 10**12, 2**70]), JUNK),
            "method": st.one_of(st.sampled_from(["banzhaf", "EXACT", "owen"]), JUNK),
            "budget": st.one_of(st.integers(-5, 3), st.integers(1, 50).map(lambda k: 2 * k + 1), HUGE_INTS, JUNK),
            "seed": st.one_of(st.integers(-(2**70), -1), st.integers(2**63, 2**70), JUNK),
            "hierarchy": bad_hierarchies(n),
            "batch_size": st.one_of(st.integers(-3, 0), HUGE_INTS, JUNK),
        },
    )
    return args


@FUZZ
@given(call=shapley_calls())
def test_shapley_plan_and_values(call):
    n = call["n_players"]
    kw = {k: call[k] for k in ("method", "budget", "seed", "hierarchy")}
    p = outcome(lambda: plan(n, **kw), SHAPLEY_NAMES)
    if p is None:
        return
    assert isinstance(p, ShapleyPlan) and p.n_players == n
    rows = p.coalitions
    assert rows.dtype == torch.bool and rows.shape == (p.n_evals, n)
    assert bool((~rows).all(1).any()) and bool(rows.all(1).any())  # ∅ and N are planned
    if p.n_evals > 5000:
        return
    res = outcome(lambda: shapley(_game, n, batch_size=call["batch_size"], **kw), ("batch_size",))
    if res is None:
        return
    assert res.values.shape == (n,) and bool(torch.isfinite(res.values).all())
    assert res.budget == p.budget and res.method == kw["method"]
    assert res.n_evals == p.n_evals or kw["seed"] is None  # (None: fresh entropy, another sample)
    assert abs(res.efficiency_gap) < 1e-6 * max(1.0, abs(res.full_value - res.base_value))
    if res.stderr is not None:
        assert res.stderr.shape == (n,) and not bool((res.stderr < 0).any())


@FUZZ
@given(n=st.integers(1, 10), method=st.sampled_from(["exact", "kernel", "permutation"]), data=st.data())
def test_plan_finish_with_random_values(n, method, data):
    p = plan(n, method=method, seed=0)
    values: Any = data.draw(st.lists(FINITE, min_size=p.n_evals, max_size=p.n_evals))
    bad = data.draw(st.sampled_from([None, "value", "length", "type"]))
    if bad == "value":
        values[data.draw(st.integers(0, p.n_evals - 1))] = data.draw(st.one_of(NON_FINITE, st.text(max_size=2)))
    elif bad == "length":
        values = values[: data.draw(st.integers(0, p.n_evals - 1))]
    elif bad == "type":
        values = data.draw(JUNK)
    res = outcome(lambda: p.finish(values), ("ShapleyPlan.finish",))
    if res is not None:  # (a junk value can still be U numbers)
        assert bad in (None, "type") and bool(torch.isfinite(res.values).all())


# --------------------------------------------------------------------------------------------------------
# scar.credit.rewards


@st.composite
def tilings(draw: st.DrawFn, n_tokens: int) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-empty ranges inside [0, n_tokens) (gaps allowed)."""
    cuts = sorted(draw(st.sets(st.integers(0, n_tokens), min_size=2, max_size=n_tokens + 1)))
    pairs = list(zip(cuts[:-1], cuts[1:]))
    keep = [pair for pair in pairs if draw(st.integers(0, 4)) > 0]
    return keep or pairs[:1]


REWARD_NAMES = ("values", "players", "player", "r", "alpha", "placement", "n_tokens")


@st.composite
def reward_calls(draw: st.DrawFn) -> dict[str, Any]:
    n_tokens = draw(st.integers(1, 12))
    ranges = draw(tilings(n_tokens))
    players: Any = [Player(a, b, 0, 0, "") for a, b in ranges] if draw(st.booleans()) else ranges
    values: Any = draw(st.lists(FINITE, min_size=len(ranges), max_size=len(ranges)))
    values = draw(st.sampled_from([values, torch.tensor(values, dtype=torch.float64), np.array(values)]))
    args = dict(
        values=values,
        players=players,
        r=draw(st.one_of(FINITE, st.just(torch.tensor(0.5)), st.just(np.float32(2.0)), st.just(3))),
        alpha=draw(st.floats(0.0, 1.0)),
        placement=draw(st.sampled_from(["last", "spread"])),
        n_tokens=draw(st.sampled_from([n_tokens, np.int64(n_tokens)])),
    )
    n = len(ranges)
    corrupt(
        draw,
        args,
        {
            "values": st.one_of(
                st.lists(st.one_of(FINITE, NON_FINITE, EXTREME), min_size=n, max_size=n),
                st.lists(FINITE, max_size=6),
                st.lists(FINITE, min_size=n, max_size=n).map(lambda v: torch.tensor(v, dtype=torch.complex64)),
                st.lists(st.lists(FINITE, max_size=3), min_size=1, max_size=3),
                st.lists(st.text(max_size=2), min_size=n, max_size=n),
                JUNK,
            ),
            "players": st.one_of(
                st.lists(st.tuples(st.integers(-3, 15), st.integers(-3, 15)), min_size=n, max_size=n),
                st.lists(st.one_of(st.tuples(st.integers(0, 5), st.integers(0, 5)), JUNK), min_size=n, max_size=n),
                st.lists(
                    st.builds(Player, FLOATS, st.integers(1, 6), st.just(0), st.just(0), st.just("")),
                    min_size=n,
                    max_size=n,
                ),
                JUNK,
            ),
            "r": st.one_of(NON_FINITE, EXTREME, HUGE_INTS, JUNK),
            "alpha": st.one_of(st.floats(-1, 2), NON_FINITE, JUNK),
            "placement": st.one_of(st.sampled_from(["first", "LAST"]), JUNK),
            "n_tokens": st.one_of(st.integers(-2, 14), st.sampled_from([2**63, 2**70]), JUNK),
        },
    )
    return args


@FUZZ
@given(call=reward_calls(), only_credit=st.booleans())
def test_shape_rewards_and_place_credit(call, only_credit):
    values, players, n_tokens = call["values"], call["players"], call["n_tokens"]
    if only_credit:
        out = outcome(
            lambda: place_credit(values, players, placement=call["placement"], n_tokens=n_tokens), REWARD_NAMES
        )
    else:
        out = outcome(
            lambda: shape_rewards(
                values, players, call["r"], alpha=call["alpha"], placement=call["placement"], n_tokens=n_tokens
            ),
            REWARD_NAMES,
        )
    if out is not None:
        assert out.dtype == torch.float64 and out.shape == (int(n_tokens),)
        assert bool(torch.isfinite(out).all())


@st.composite
def dense_rewards_calls(draw: st.DrawFn) -> tuple[dict[str, Any], Any, Any]:
    b = draw(st.integers(0, 3))
    n_players = [draw(st.integers(0, 3)) for _ in range(b)]
    lengths = [draw(st.integers(1, 5)) for _ in range(b)]
    fields = dict(
        token_rewards=[torch.tensor(draw(st.lists(FINITE, min_size=k, max_size=k))) for k in lengths],
        rewards=torch.tensor(draw(st.lists(FINITE, min_size=b, max_size=b)), dtype=torch.float64),
        base_values=torch.full((b,), math.nan),
        values=[torch.zeros(k) for k in n_players],
        stderr=[None if draw(st.booleans()) else torch.ones(k) for k in n_players],
        players=[[Player(j, j + 1, j, j + 1, "a") for j in range(k)] for k in n_players],
        method="scar",
    )
    entry = st.one_of(
        JUNK,
        st.just(torch.ones(2, 2)),
        st.just(torch.ones(2, dtype=torch.complex64)),
        st.lists(st.lists(FINITE, max_size=2), min_size=2, max_size=2),
    )
    corrupt(
        draw,
        fields,
        {
            "token_rewards": st.one_of(JUNK, st.lists(entry, min_size=b, max_size=b + 1)),
            "rewards": st.one_of(JUNK, st.lists(FINITE, max_size=4)),
            "values": st.one_of(JUNK, st.lists(entry, min_size=b, max_size=b)),
            "stderr": st.one_of(JUNK, st.lists(entry, min_size=b, max_size=b)),
            "players": st.one_of(JUNK, st.lists(JUNK, min_size=b, max_size=b)),
        },
    )
    pad = draw(st.one_of(FINITE, FINITE, NON_FINITE, EXTREME, HUGE_INTS, JUNK))
    length = draw(st.one_of(st.none(), st.integers(-3, 12), st.sampled_from([2**63, 2**70]), JUNK))
    return fields, pad, length


@FUZZ
@given(call=dense_rewards_calls())
def test_dense_rewards_and_to_tensor(call):
    fields, pad, length = call
    d = outcome(lambda: DenseRewards(**fields), ("DenseRewards",))
    if d is None:
        return
    t = outcome(lambda: d.to_tensor(pad_value=pad, length=length), ("pad_value", "length"))
    if t is not None:
        longest = max((x.numel() for x in d.token_rewards), default=0)
        assert t.dtype == torch.float32 and t.shape == (len(d), longest if length is None else length)
        if math.isfinite(float(pad)) and all(bool(torch.isfinite(x).all()) for x in d.token_rewards):
            assert bool(torch.isfinite(t).all())


# --------------------------------------------------------------------------------------------------------
# scar.game.tokens


@cache
def tokenizers() -> tuple[Any, Any]:
    return build_tokenizer(300), word_level_tokenizer(["review", "good", "bad", "film", "x"])


BAD_IDS = st.one_of(
    st.lists(st.one_of(st.integers(-(2**70), -1), HUGE_INTS), min_size=1, max_size=3).map(lambda v: [5, *v]),
    st.lists(FINITE, min_size=1, max_size=4).map(torch.tensor),
    st.lists(FINITE, min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=1, max_size=3),
    st.lists(st.lists(st.integers(0, 9), max_size=2), min_size=1, max_size=2),
    st.sets(st.integers(0, 9), min_size=1, max_size=3),
    st.binary(min_size=1, max_size=4),
    st.binary(min_size=1, max_size=4).map(bytearray),
    JUNK,
)
GOOD_IDS = st.one_of(
    st.lists(st.integers(0, 299), min_size=1, max_size=8),
    st.lists(st.integers(0, 299), min_size=1, max_size=6).map(lambda v: torch.tensor(v, dtype=torch.long)),
    st.lists(st.integers(0, 299), min_size=1, max_size=6).map(np.array),
)
WORDS = ["<pad>", "<eos>", "<unk>", " good", "review", " film", " é", "😀", " ", "x", ".", "bad"]
TEXT = st.one_of(st.text(max_size=20), st.lists(st.sampled_from(WORDS), max_size=8).map("".join))
TOKEN_NAMES = ("ids", "prompt", "response", "suffix_ids", "vocab_size", "text")


@FUZZ
@given(
    value=st.one_of(GOOD_IDS, BAD_IDS),
    vocab=st.one_of(st.none(), st.integers(-1, 400), HUGE_INTS, JUNK),
    allow_empty=st.booleans(),
)
def test_as_token_ids(value, vocab, allow_empty):
    ids = outcome(lambda: as_token_ids(value, "ids", vocab_size=vocab, allow_empty=allow_empty), TOKEN_NAMES)
    if ids is not None:
        assert all(type(i) is int and 0 <= i < 2**63 for i in ids)
        assert vocab is None or all(i < vocab for i in ids)
        assert ids or allow_empty


@st.composite
def pair_calls(draw: st.DrawFn) -> dict[str, Any]:
    args = dict(
        which=draw(st.integers(0, 1)),
        prompt=draw(st.one_of(st.sampled_from(["review", "Review: the film", "x <eos>"]), GOOD_IDS)),
        response=draw(st.one_of(TEXT, GOOD_IDS)),
        suffix_ids=draw(st.one_of(st.none(), st.just([1]))),
        allow_empty=draw(st.booleans()),
    )
    corrupt(
        draw,
        args,
        {
            "prompt": st.one_of(BAD_IDS, st.just("")),
            "response": st.one_of(BAD_IDS, st.lists(st.integers(300, 2**40), min_size=1, max_size=3)),
            "suffix_ids": BAD_IDS,
        },
    )
    return args


@FUZZ
@given(call=pair_calls())
def test_encode_pair(call):
    tok = tokenizers()[call["which"]]
    prompt, response = call["prompt"], call["response"]
    enc = outcome(
        lambda: encode_pair(tok, prompt, response, suffix_ids=call["suffix_ids"], allow_empty=call["allow_empty"]),
        TOKEN_NAMES,
    )
    if enc is None:
        return
    assert enc.prompt_ids and all(isinstance(i, int) for i in enc.ids)
    assert len(enc.offsets) == len(enc.response_ids)
    assert all(0 <= a <= b <= len(enc.text) for a, b in enc.offsets)
    if isinstance(response, str):
        # response text is read literally: it never becomes a pad or an EOS
        assert enc.text == response
        assert not {tok.pad_token_id, tok.eos_token_id} & set(enc.response_ids)


@FUZZ
@given(which=st.integers(0, 1), ids=st.one_of(GOOD_IDS, BAD_IDS), skip=st.booleans())
def test_token_offsets(which, ids, skip):
    tok = tokenizers()[which]
    out = outcome(lambda: token_offsets(tok, ids, skip_special_tokens=skip), ("ids",))
    if out is not None:
        text, offsets = out
        assert len(offsets) == len(as_token_ids(ids, "ids"))
        assert all(0 <= a <= b <= len(text) for a, b in offsets)


@st.composite
def map_calls(draw: st.DrawFn) -> dict[str, Any]:
    n_chars = draw(st.integers(1, 30))

    def cuts() -> list[tuple[int, int]]:
        c = sorted(draw(st.sets(st.integers(1, n_chars - 1), max_size=8)) | {0, n_chars}) if n_chars > 1 else [0, 1]
        return list(zip(c[:-1], c[1:]))

    src, dst = cuts(), cuts()
    values: Any = draw(st.lists(FINITE, min_size=len(src), max_size=len(src)))
    args = dict(
        token_rewards_src=draw(st.sampled_from([values, torch.tensor(values), np.array(values)])),
        src_offsets=src,
        dst_offsets=draw(st.sampled_from([dst, torch.tensor(dst)])),
    )
    bad_offsets = st.one_of(
        st.lists(st.tuples(st.integers(-3, 40), st.integers(-3, 40)), max_size=4),
        st.lists(st.tuples(FINITE, FINITE), min_size=1, max_size=3),
        st.lists(st.tuples(st.integers(0, 3), HUGE_INTS), min_size=1, max_size=2),
        st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=1, max_size=3),
        st.just(torch.zeros(2, 2)),
        st.just(torch.zeros(2, 3, dtype=torch.long)),
        JUNK,
    )
    n = len(src)
    corrupt(
        draw,
        args,
        {
            "token_rewards_src": st.one_of(
                st.lists(st.one_of(FINITE, NON_FINITE, EXTREME), min_size=n, max_size=n),
                st.lists(FINITE, max_size=4),
                st.just(torch.ones(n, dtype=torch.complex64)),
                st.lists(st.text(max_size=1), min_size=n, max_size=n),
                JUNK,
            ),
            "src_offsets": bad_offsets,
            "dst_offsets": bad_offsets,
        },
    )
    return args


@FUZZ
@given(call=map_calls())
def test_map_to_tokens(call):
    src = call["token_rewards_src"]
    out = outcome(lambda: map_to_tokens(**call), ("token_rewards_src", "src_offsets", "dst_offsets"))
    if out is None:
        return
    values = src.double() if isinstance(src, torch.Tensor) else torch.as_tensor(np.asarray(src, dtype=np.float64))
    assert out.dim() == 1
    if bool(torch.isfinite(values).all()):
        assert bool(torch.isfinite(out).all())
        # the total is kept, up to the summation order in the values' own precision
        tol = 1e-5 * float(values.abs().sum()) + 1e-9
        assert float(out.double().sum()) == pytest.approx(float(values.sum()), abs=tol)


# --------------------------------------------------------------------------------------------------------
# scar.game.players


def gpt2_like(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\s?\w+|\s?[^\w\s]|\s+", text)]


SENTENCES = st.lists(
    st.sampled_from(["Hi", " you", ".", ",", " Go", " now", "!", "\n", " Mr.", " Smith", " é", " 😀", " ok?"]),
    min_size=1,
    max_size=14,
).map("".join)


@st.composite
def segment_calls(draw: st.DrawFn) -> dict[str, Any]:
    text = draw(SENTENCES.filter(lambda t: t.strip()))
    offsets = gpt2_like(text)
    kind = draw(st.sampled_from(["token", "span", "sentence"]))
    args = dict(
        text=text,
        offsets=draw(st.sampled_from([offsets, torch.tensor(offsets)])),
        kind=kind,
        max_span_tokens=draw(st.one_of(st.none(), st.integers(1, 6))) if kind == "span" else None,
        n_tokens=draw(st.sampled_from([None, len(offsets)])),
    )
    corrupt(
        draw,
        args,
        {
            "text": st.one_of(st.just(""), JUNK),
            "offsets": st.one_of(
                st.lists(st.tuples(st.integers(-3, 60), st.integers(-3, 60)), max_size=5),
                st.lists(st.tuples(FINITE, FINITE), min_size=1, max_size=3),
                st.lists(st.tuples(st.integers(0, 3), HUGE_INTS), min_size=1, max_size=2),
                st.just(torch.zeros(2, 3, dtype=torch.long)),
                JUNK,
            ),
            "kind": st.one_of(st.sampled_from(["word", "Span"]), JUNK),
            "max_span_tokens": st.one_of(st.integers(-2, 0), st.integers(1, 3), JUNK),
            "n_tokens": st.one_of(st.integers(-2, 30), HUGE_INTS, JUNK),
        },
    )
    return args


@FUZZ
@given(call=segment_calls())
def test_segment(call):
    players = outcome(
        lambda: segment(
            call["text"],
            call["offsets"],
            call["kind"],
            max_span_tokens=call["max_span_tokens"],
            n_tokens=call["n_tokens"],
        ),
        ("text", "offsets", "kind", "max_span_tokens", "n_tokens", "response"),
    )
    if players is not None:
        n = len(call["offsets"])
        assert validate_players(players, n) == [] and players[-1].end == n
        assert all(p.text == call["text"][p.char_start : p.char_end] for p in players)


@st.composite
def validate_calls(draw: st.DrawFn) -> dict[str, Any]:
    n_tokens = draw(st.integers(1, 12))
    ranges = draw(tilings(n_tokens))
    args: dict[str, Any] = dict(
        players=draw(st.sampled_from([ranges, [Player(a, b, 0, 0, "") for a, b in ranges], torch.tensor(ranges)])),
        n_tokens=draw(st.sampled_from([n_tokens, np.int64(n_tokens)])),
    )
    corrupt(
        draw,
        args,
        {
            "players": st.one_of(
                st.lists(st.tuples(st.integers(-3, 15), st.integers(-3, 15)), max_size=5),
                st.lists(st.one_of(JUNK, st.tuples(st.integers(0, 2), HUGE_INTS)), min_size=1, max_size=3),
                st.just(torch.zeros(2, 2)),
                st.just(torch.zeros(2, 2, dtype=torch.bool)),
                JUNK,
            ),
            "n_tokens": st.one_of(st.integers(-2, 3), HUGE_INTS, JUNK),
        },
    )
    return args


@FUZZ
@given(call=validate_calls())
def test_validate_players(call):
    gaps = outcome(lambda: validate_players(call["players"], call["n_tokens"]), ("player", "players", "n_tokens"))
    if gaps is not None:
        assert all(0 <= a < b <= call["n_tokens"] for a, b in gaps)


@st.composite
def hierarchy_calls(draw: st.DrawFn) -> dict[str, Any]:
    text = draw(SENTENCES.filter(lambda t: t.strip()))
    offsets = gpt2_like(text)
    args: dict[str, Any] = {k: segment(text, offsets, k) for k in ("sentence", "span", "token")}
    if draw(st.booleans()):
        args["token"] = None
    bad = st.one_of(
        st.lists(st.tuples(st.integers(-3, 30), st.integers(-3, 30)), max_size=5),
        st.lists(JUNK, min_size=1, max_size=2),
        JUNK,
    )
    corrupt(draw, args, {"sentence": bad, "span": bad, "token": bad})
    return args


@FUZZ
@given(call=hierarchy_calls())
def test_hierarchy(call):
    tree = outcome(lambda: hierarchy(call["sentence"], call["span"], call["token"]), ("sentence", "span", "token"))
    if tree is not None:
        flat = [j for group in tree for j in group] if call["token"] is None else None
        assert flat is None or flat == sorted(flat)


# --------------------------------------------------------------------------------------------------------
# scar.credit.advantages


@st.composite
def advantage_calls(draw: st.DrawFn) -> dict[str, Any]:
    g = draw(st.integers(1, 4))
    n = g * draw(st.integers(0, 3))
    t = draw(st.integers(0, 6))
    lengths = draw(st.lists(st.integers(0, t), min_size=n, max_size=n))
    cells = draw(st.lists(FINITE, min_size=n * t, max_size=n * t))
    rewards = torch.tensor(cells, dtype=torch.float64).reshape(n, t)
    if n and t and draw(st.integers(0, 3)) == 0:  # an unscorable completion: NaN inside its length
        i = draw(st.integers(0, n - 1))
        rewards[i, draw(st.integers(0, t - 1))] = math.nan
    args: dict[str, Any] = dict(
        token_rewards=rewards.to(draw(st.sampled_from([torch.float32, torch.float64]))),
        lengths=draw(st.sampled_from([torch.tensor(lengths, dtype=torch.long), lengths])),
        num_generations=g,
        scale_rewards=draw(st.sampled_from(["group", "batch", "none"])),
        std_of=draw(st.sampled_from(["token", "sequence"])),
        baseline=draw(st.sampled_from(["position", "group"])),
    )

    def with_cell(value: float) -> torch.Tensor:
        out = rewards.clone().reshape(-1)
        if out.numel():
            out[draw(st.integers(0, out.numel() - 1))] = value
        return out.reshape(n, t)

    corrupt(
        draw,
        args,
        {
            "token_rewards": st.one_of(
                st.one_of(NON_FINITE, EXTREME).map(with_cell),
                st.just(rewards.reshape(-1)),
                st.just(rewards.tolist()),
                st.just(rewards.to(torch.complex64)),
                st.just(rewards.nan_to_num().bool()),
                st.just(rewards.nan_to_num().clamp(-9, 9).long()),
                JUNK,
            ),
            "lengths": st.one_of(
                st.lists(st.integers(-2, t + 2), max_size=n + 1),
                st.just(torch.tensor(lengths, dtype=torch.float32)),
                st.lists(st.one_of(FINITE, HUGE_INTS, st.booleans()), min_size=n, max_size=n),
                JUNK,
            ),
            "num_generations": st.one_of(st.integers(-1, 0), st.integers(1, 8), JUNK),
            "scale_rewards": st.one_of(st.just("sometimes"), JUNK),
            "std_of": st.one_of(st.just("tokens"), JUNK),
            "baseline": st.one_of(st.just("prompt"), JUNK),
        },
    )
    return args


@FUZZ
@given(call=advantage_calls())
def test_dense_group_advantages(call):
    names = ("token_rewards", "lengths", "num_generations", "scale_rewards", "std_of", "baseline")
    out = outcome(lambda: dense_group_advantages(**call), names)
    if out is None:
        return
    rewards = torch.as_tensor(call["token_rewards"])
    assert out.dtype == torch.float32 and out.shape == rewards.shape
    assert bool(torch.isfinite(out).all())  # never a NaN or infinity: unscorable completions get 0
    lengths = torch.as_tensor(call["lengths"])
    padding = torch.arange(rewards.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)
    assert bool((out[padding] == 0).all())
