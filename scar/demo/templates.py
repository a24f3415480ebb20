"""Template grammar for the local sentiment task: word banks chosen by VADER valence, prompts, responses.

Nothing here is downloaded. Candidate words are grouped by part of speech in this file (the VADER
lexicon has no part-of-speech tags), and the lexicon shipped inside the ``vaderSentiment`` package
decides which candidates are positive, negative or neutral: a candidate is *positive* when its mean
valence is at least ``POLAR_MIN``, *negative* when at most ``-POLAR_MIN``, *neutral* when it is absent
from the lexicon, and it is dropped otherwise (weakly polar words would blur the labels).

Responses are built from clauses: an aspect judged by an adjective ("the plot was not very exciting"),
an opinion verb ("I really loved the soundtrack", "we never enjoyed the service"), a noun judgement
("it was a total disaster") or a neutral fact ("we sat near the back"), with negation, boosters,
dampeners, contrast ("but") and several sentences. The grammar only *aims* at a tone; the label of a
text is always VADER's compound score, computed elsewhere.

Every function takes a ``random.Random`` so that a seed fixes the whole corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

# |valence| below this (VADER's scale is -4..4) makes a candidate too weak to carry sentiment.
POLAR_MIN = 1.3

MOODS = ("positive", "negative", "neutral", "mixed")

# Candidates by part of speech; the lexicon sorts them (see module docstring).
ADJECTIVES = [
    "good",
    "great",
    "excellent",
    "wonderful",
    "amazing",
    "fantastic",
    "brilliant",
    "beautiful",
    "lovely",
    "pleasant",
    "delightful",
    "charming",
    "enjoyable",
    "perfect",
    "superb",
    "outstanding",
    "impressive",
    "exciting",
    "thrilling",
    "inspiring",
    "elegant",
    "gorgeous",
    "magnificent",
    "marvelous",
    "splendid",
    "terrific",
    "awesome",
    "nice",
    "glorious",
    "fascinating",
    "interesting",
    "entertaining",
    "remarkable",
    "admirable",
    "fabulous",
    "flawless",
    "clever",
    "heartwarming",
    "stunning",
    "satisfying",
    "bad",
    "terrible",
    "awful",
    "horrible",
    "dreadful",
    "poor",
    "boring",
    "dull",
    "disappointing",
    "frustrating",
    "annoying",
    "irritating",
    "painful",
    "ugly",
    "weak",
    "useless",
    "worthless",
    "miserable",
    "depressing",
    "unpleasant",
    "lousy",
    "pathetic",
    "ridiculous",
    "hopeless",
    "stupid",
    "flawed",
    "chaotic",
    "messy",
    "disgusting",
    "tragic",
    "careless",
    "inferior",
    "long",
    "short",
    "old",
    "new",
    "small",
    "large",
    "quiet",
    "busy",
    "simple",
    "plain",
    "ordinary",
    "usual",
    "typical",
    "modern",
    "narrow",
    "wide",
    "early",
    "late",
    "brief",
    "recent",
    "loud",
    "familiar",
]
FEELINGS = [
    "happy",
    "cheerful",
    "glad",
    "joyful",
    "peaceful",
    "proud",
    "grateful",
    "thankful",
    "pleased",
    "excited",
    "thrilled",
    "hopeful",
    "sad",
    "miserable",
    "upset",
    "angry",
    "tired",
    "nervous",
    "frustrated",
    "annoyed",
    "disappointed",
    "bored",
    "scared",
    "hungry",
    "sleepy",
    "curious",
    "busy",
]
VERBS = [
    "loved",
    "enjoyed",
    "liked",
    "admired",
    "adored",
    "appreciated",
    "praised",
    "treasured",
    "hated",
    "disliked",
    "regretted",
    "dreaded",
    "despised",
    "loathed",
    "resented",
    "noticed",
    "watched",
    "remembered",
    "described",
    "mentioned",
]
NOUNS = [
    "joy",
    "delight",
    "pleasure",
    "treat",
    "success",
    "triumph",
    "masterpiece",
    "blessing",
    "win",
    "disaster",
    "mess",
    "failure",
    "waste",
    "disappointment",
    "tragedy",
    "pain",
    "problem",
    "mistake",
    "surprise",
    "change",
    "routine",
    "habit",
]
# Degree adverbs VADER scales by (boosters add, dampeners subtract intensity).
BOOSTERS = ("very", "extremely", "really", "incredibly", "so", "totally", "quite", "truly")
DAMPENERS = ("slightly", "somewhat", "barely", "kind of")
NEGATIONS = ("not", "never")
SUBJECTS = ("I", "we", "my friend", "my family", "everyone")
LINKING = ("was", "felt", "seemed")


@dataclass(frozen=True)
class Domain:
    """One topic: what a review can be about, how a prompt names it, what it has, neutral facts."""

    name: str
    objects: tuple[str, ...]  # what the prompt names: "film", "new movie"
    aspects: tuple[str, ...]  # judged parts: "the acting"
    facts: tuple[str, ...]  # neutral sentences without sentiment words


DOMAINS: tuple[Domain, ...] = (
    Domain(
        "film",
        ("film", "movie", "new film"),
        ("the acting", "the plot", "the soundtrack", "the ending", "the dialogue", "the camera work"),
        (
            "it runs for about two hours",
            "we watched it on a Sunday evening",
            "the story is set in a small town",
            "the cinema was half full",
            "the director also wrote the script",
        ),
    ),
    Domain(
        "restaurant",
        ("restaurant", "dinner", "new cafe"),
        ("the food", "the service", "the soup", "the dessert", "the menu", "the waiter"),
        (
            "we ordered soup and bread",
            "the table was near the window",
            "it opened last year",
            "we paid at the counter",
            "the kitchen closes at ten",
        ),
    ),
    Domain(
        "book",
        ("book", "novel", "new novel"),
        ("the writing", "the main character", "the story", "the ending", "the first chapter", "the cover"),
        (
            "it has twelve chapters",
            "I read it over a weekend",
            "the author lives in Canada",
            "it was published in the spring",
            "the story follows two brothers",
        ),
    ),
    Domain(
        "hotel",
        ("hotel", "stay at the hotel", "room"),
        ("the room", "the staff", "the breakfast", "the bed", "the view", "the lobby"),
        (
            "we stayed for three nights",
            "the hotel is near the station",
            "our room was on the fourth floor",
            "we checked in after lunch",
            "breakfast is served until ten",
        ),
    ),
    Domain(
        "park",
        ("day at the park", "walk in the park", "picnic"),
        ("the weather", "the lake", "the trail", "the picnic", "the garden", "the playground"),
        (
            "we walked along the river",
            "the park has two entrances",
            "we sat under a tree",
            "there is a pond in the middle",
            "we left before sunset",
        ),
    ),
    Domain(
        "concert",
        ("concert", "show", "gig"),
        ("the band", "the singer", "the sound", "the crowd", "the opening act", "the encore"),
        (
            "the show started at eight",
            "we stood near the stage",
            "they played for ninety minutes",
            "the hall holds about a thousand people",
            "we took the bus home",
        ),
    ),
    Domain(
        "phone",
        ("phone", "new phone", "laptop"),
        ("the screen", "the battery", "the camera", "the keyboard", "the speakers", "the software"),
        (
            "it comes in three colors",
            "I bought it last month",
            "it weighs about a pound",
            "the box includes a charger",
            "I use it every day",
        ),
    ),
    Domain(
        "trip",
        ("trip", "train journey", "holiday"),
        ("the journey", "the guide", "the hotel", "the beach", "the weather", "the food"),
        (
            "we took the early train",
            "the trip lasted a week",
            "we visited two cities",
            "we packed the night before",
            "the train stopped at every station",
        ),
    ),
    Domain(
        "class",
        ("class", "course", "workshop"),
        ("the teacher", "the lessons", "the homework", "the exam", "the textbook", "the classroom"),
        (
            "it meets twice a week",
            "there are twenty students",
            "the course lasts ten weeks",
            "the classroom is on the second floor",
            "we had a test on Friday",
        ),
    ),
    Domain(
        "game",
        ("game", "video game", "board game"),
        ("the graphics", "the story", "the controls", "the music", "the levels", "the characters"),
        (
            "it takes about ten hours to finish",
            "I played it with my brother",
            "there are four worlds",
            "it came out last autumn",
            "you can save at any time",
        ),
    ),
)

# Prompts: a header is followed by whole sentences, a stem ("... was") by an adjective phrase.
HEADER_PATTERNS = (
    "Review of the {o}:",
    "My thoughts on the {o}:",
    "A short review of the {o}:",
    "Notes on the {o}:",
    "What I think of the {o}:",
)
STEM_PATTERNS = ("My {o} was", "The {o} was", "Honestly, the {o} was", "Overall, the {o} was", "I thought the {o} was")


@dataclass(frozen=True)
class WordBank:
    """Candidate words sorted by VADER valence: ``pos``, ``neg`` and ``neutral`` per part of speech."""

    adjectives: dict[str, tuple[str, ...]]
    feelings: dict[str, tuple[str, ...]]
    verbs: dict[str, tuple[str, ...]]
    nouns: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Prompt:
    """A prompt string, its domain, and whether it is a header (``kind="header"``) or a stem."""

    text: str
    domain: str
    kind: str


def read_vader_lexicon() -> dict[str, float]:
    """Mean valence (-4..4) of every token in ``vader_lexicon.txt`` of the installed ``vaderSentiment``."""
    return dict(_lexicon_items())


@lru_cache(maxsize=1)
def _lexicon_items() -> tuple[tuple[str, float], ...]:
    text = resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text(encoding="utf-8")
    items = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            items.append((fields[0], float(fields[1])))
    return tuple(items)


def _sort_by_valence(words: list[str], lexicon: dict[str, float]) -> dict[str, tuple[str, ...]]:
    pos = tuple(w for w in words if lexicon.get(w, 0.0) >= POLAR_MIN)
    neg = tuple(w for w in words if lexicon.get(w, 0.0) <= -POLAR_MIN)
    neutral = tuple(w for w in words if w not in lexicon)
    return {"pos": pos, "neg": neg, "neutral": neutral}


@lru_cache(maxsize=1)
def word_bank() -> WordBank:
    """The candidate words of this module sorted by the VADER lexicon (see module docstring)."""
    lexicon = read_vader_lexicon()
    return WordBank(
        adjectives=_sort_by_valence(ADJECTIVES, lexicon),
        feelings=_sort_by_valence(FEELINGS, lexicon),
        verbs=_sort_by_valence(VERBS, lexicon),
        nouns=_sort_by_valence(NOUNS, lexicon),
    )


def all_prompts() -> list[Prompt]:
    """Every prompt the grammar can make (domains x objects x patterns), in a fixed order."""
    prompts = []
    for domain in DOMAINS:
        for obj in domain.objects:
            for pattern in HEADER_PATTERNS:
                prompts.append(Prompt(pattern.format(o=obj), domain.name, "header"))
            for pattern in STEM_PATTERNS:
                prompts.append(Prompt(pattern.format(o=obj), domain.name, "stem"))
    return prompts


def _domain(name: str) -> Domain:
    for domain in DOMAINS:
        if domain.name == name:
            return domain
    raise ValueError(f"unknown domain {name!r}; known: {[d.name for d in DOMAINS]}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _degree(rng: random.Random, negated: bool = False) -> str:
    """An optional booster or dampener, followed by a space (or the empty string).

    After a negation only boosters read naturally ("not very good", never "not slightly good").
    """
    u = rng.random()
    if u < 0.35:
        return rng.choice(BOOSTERS) + " "
    if u < 0.45 and not negated:
        return rng.choice(DAMPENERS) + " "
    return ""


def _polar_word(rng: random.Random, bank: dict[str, tuple[str, ...]], polarity: int) -> tuple[str, bool]:
    """A word whose phrase has the given polarity: a plain word, or (25%) a negated opposite word.

    Returns ``(word, negate)``.
    """
    if rng.random() < 0.25:
        return rng.choice(bank["neg" if polarity > 0 else "pos"]), True
    return rng.choice(bank["pos" if polarity > 0 else "neg"]), False


def adjective_phrase(rng: random.Random, polarity: int) -> str:
    """Predicate after "was": ``[not|never] [booster|dampener] adjective``, aiming at ``polarity``."""
    words = word_bank()
    if polarity == 0:
        return _degree(rng) + rng.choice(words.adjectives["neutral"])
    adjective, negate = _polar_word(rng, words.adjectives, polarity)
    return (rng.choice(NEGATIONS) + " " if negate else "") + _degree(rng, negate) + adjective


def clause(rng: random.Random, domain: Domain, polarity: int) -> str:
    """One clause about ``domain`` aiming at ``polarity`` in {-1, 0, 1}; lower case, no final stop."""
    if polarity not in (-1, 0, 1):
        raise ValueError(f"polarity must be -1, 0 or 1, got {polarity!r}")
    words = word_bank()
    if polarity == 0:
        u = rng.random()
        if u < 0.5:
            return rng.choice(domain.facts)
        if u < 0.8:
            return f"{rng.choice(domain.aspects)} {rng.choice(LINKING)} {adjective_phrase(rng, 0)}"
        return f"{rng.choice(SUBJECTS)} {rng.choice(words.verbs['neutral'])} {rng.choice(domain.aspects)}"
    kind = rng.random()
    if kind < 0.45:
        phrase = adjective_phrase(rng, polarity)
        # "seemed not good" is not English: a negated phrase always follows "was".
        linking = "was" if phrase.split()[0] in NEGATIONS else rng.choice(LINKING)
        return f"{rng.choice(domain.aspects)} {linking} {phrase}"
    if kind < 0.7:
        verb, negate = _polar_word(rng, words.verbs, polarity)
        adverb = rng.choice(("really ", "truly ", "")) if not negate else ""
        negation = "never " if negate else ""
        return f"{rng.choice(SUBJECTS)} {negation}{adverb}{verb} {rng.choice(domain.aspects)}"
    if kind < 0.85:
        noun = rng.choice(words.nouns["pos" if polarity > 0 else "neg"])
        modifier = rng.choice(("", "", "total ", "real ", "complete "))
        head = modifier or noun
        subject = rng.choice(("it", "the whole thing", rng.choice(domain.aspects)))
        return f"{subject} was {_article(head)} {modifier}{noun}"
    feeling, negate = _polar_word(rng, words.feelings, polarity)
    verb = "did not feel" if negate else "felt"
    return f"{rng.choice(SUBJECTS)} {verb} {_degree(rng, negate)}{feeling}"


def _polarities(rng: random.Random, mood: str, n: int) -> list[int]:
    """Per-clause polarities for a text of tone ``mood``."""
    if mood == "positive":
        return [1 if rng.random() < 0.8 else 0 for _ in range(n)]
    if mood == "negative":
        return [-1 if rng.random() < 0.8 else 0 for _ in range(n)]
    if mood == "neutral":
        return [0 if rng.random() < 0.85 else rng.choice((-1, 1)) for _ in range(n)]
    if mood == "mixed":
        first = rng.choice((-1, 1))
        return [first, -first] + [rng.choice((-1, 0, 1)) for _ in range(n - 2)]
    raise ValueError(f"mood must be one of {MOODS}, got {mood!r}")


def _sentence(rng: random.Random, domain: Domain, polarities: list[int]) -> str:
    """One or two clauses joined (opposite polarities by "but"), capitalised, with a final stop."""
    text = clause(rng, domain, polarities[0])
    if len(polarities) > 1:
        a, b = polarities[0], polarities[1]
        joiner = ", but " if a * b < 0 or (a != b and rng.random() < 0.5) else rng.choice((" and ", ", and "))
        text += joiner + clause(rng, domain, b)
    stop = "!" if polarities[0] != 0 and rng.random() < 0.2 else "."
    return text[0].upper() + text[1:] + stop


def response(rng: random.Random, prompt: Prompt, mood: str, n_sentences: int) -> str:
    """A continuation of ``prompt`` with ``n_sentences`` sentences aiming at ``mood``; starts with a space.

    A stem prompt ("My day at the park was") is first completed by an adjective phrase, so the first
    sentence finishes the prompt's own sentence.
    """
    if n_sentences < 1:
        raise ValueError(f"n_sentences must be >= 1, got {n_sentences}")
    domain = _domain(prompt.domain)
    # Two clause slots per sentence; a sentence uses its second slot half of the time.
    polarities = _polarities(rng, mood, 2 * n_sentences + 1)
    sentences = []
    start = 0
    if prompt.kind == "stem":
        head = adjective_phrase(rng, polarities[0])
        if rng.random() < 0.4:
            b = polarities[1]
            joiner = ", but " if polarities[0] * b < 0 else ", and "
            head += joiner + clause(rng, domain, b)
            start = 2
        else:
            start = 1
        sentences.append(head + ("!" if polarities[0] != 0 and rng.random() < 0.2 else "."))
        n_sentences -= 1
    for _ in range(n_sentences):
        take = 2 if rng.random() < 0.5 else 1
        sentence = _sentence(rng, domain, polarities[start : start + take])
        for _retry in range(3):  # a repeated sentence reads as a glitch, not as text
            if sentence not in sentences:
                break
            sentence = _sentence(rng, domain, polarities[start : start + take])
        sentences.append(sentence)
        start += take
    return " " + " ".join(sentences)


def shuffled_prompts(seed: int, test_fraction: float) -> tuple[list[Prompt], list[Prompt]]:
    """All prompts split into (train, test) by a seeded shuffle; each domain appears in both."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = random.Random(seed)
    train, test = [], []
    for domain in DOMAINS:
        mine = [p for p in all_prompts() if p.domain == domain.name]
        rng.shuffle(mine)
        n_test = max(1, round(test_fraction * len(mine)))
        test.extend(mine[:n_test])
        train.extend(mine[n_test:])
    return train, test


def delete_words(rng: random.Random, text: str, rate: float) -> str:
    """``text`` with each whitespace-separated word dropped with probability ``rate`` (order kept).

    The reward model sees such texts in training so that scoring a coalition (a response with pieces
    removed, as SCAR does) stays on familiar ground. Keeps the leading space of a response.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    kept = [w for w in text.split() if rng.random() >= rate]
    return (" " if kept else "") + " ".join(kept)
