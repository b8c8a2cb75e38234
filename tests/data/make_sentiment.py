"""Build tests/data/sentiment.csv: short English sentences with clear sentiment labels (text,label).

Deterministic (fixed seed, sorted word lists), so running it again gives the same file:

    python tests/data/make_sentiment.py

Most words are in the tiny test tokenizer's vocabulary (tests/tiny.py), so the same file trains the tiny
checkpoints and the bundled MiniLM. Used by finetune and distill tests.
"""

from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

SEED = 13
ROWS_PER_LABEL = 200

NOUNS = [
    "movie", "film", "book", "song", "food", "meal", "service", "product", "story", "plot", "actor", "music",
]
ADVERBS = ["very", "really", "quite", "so", "always"]
POSITIVE_ADJ = ["good", "great", "wonderful", "fun", "excellent", "fantastic", "delightful", "brilliant"]
NEGATIVE_ADJ = ["bad", "terrible", "awful", "boring", "horrible", "dreadful", "disappointing", "poor"]
POSITIVE_VERBS = ["love", "loved", "like", "enjoyed", "adored"]
NEGATIVE_VERBS = ["hate", "hated", "disliked", "regret", "despised"]
POSITIVE_FEEL = ["happy", "glad", "delighted"]
NEGATIVE_FEEL = ["sad", "angry", "upset"]

TEMPLATES = {
    "adj": ["the {noun} was {adv} {adj} .", "this {noun} is {adv} {adj} !", "what a {adj} {noun} .",
            "a {adv} {adj} {noun} , i think ."],
    "verb": ["i {verb} the {noun} .", "we {verb} this {noun} .", "they {verb} the {noun} so much ."],
    "feel": ["the {noun} made me {feel} .", "i was {adv} {feel} with the {noun} ."],
}


def sentences(adjs: list[str], verbs: list[str], feels: list[str]) -> list[str]:
    out: set[str] = set()
    for noun, adv in itertools.product(NOUNS, ADVERBS):
        for adj in adjs:
            out.update(t.format(noun=noun, adv=adv, adj=adj) for t in TEMPLATES["adj"])
        for verb in verbs:
            out.update(t.format(noun=noun, verb=verb) for t in TEMPLATES["verb"])
        for feel in feels:
            out.update(t.format(noun=noun, adv=adv, feel=feel) for t in TEMPLATES["feel"])
    return sorted(out)


def build(path: Path) -> int:
    rng = random.Random(SEED)
    rows = []
    for label, (adjs, verbs, feels) in {
        "positive": (POSITIVE_ADJ, POSITIVE_VERBS, POSITIVE_FEEL),
        "negative": (NEGATIVE_ADJ, NEGATIVE_VERBS, NEGATIVE_FEEL),
    }.items():
        rows += [(text, label) for text in rng.sample(sentences(adjs, verbs, feels), ROWS_PER_LABEL)]
    rng.shuffle(rows)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return len(rows)


if __name__ == "__main__":
    target = Path(__file__).with_name("sentiment.csv")
    print(f"wrote {build(target)} rows to {target}")
