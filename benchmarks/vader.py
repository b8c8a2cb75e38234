"""VADER's human-rated sentiment snippets (Hutto & Gilbert 2014, MIT) as (text, label) rows for the classify
benchmarks; downloaded and parsed by corpora.py (the vaderSentiment 3.3.2 source archive, whose
additional_resources hold tweets, movie, Amazon and NYT snippets with a mean rating -4..+4).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpora  # noqa: E402  (the one downloader and parser)

CACHE = corpora.cache_dir()
SETS = ("tweets", "movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets")


def rows(name: str = "tweets") -> list[tuple[str, str]]:
    """(text with its whitespace collapsed, "positive"/"negative") of one set, neutral (rating 0) rows left out,
    in file order."""
    return [(" ".join(r["text"].split()), r["label"]) for r in corpora.hutto(f"{name}_GroundTruth.txt")]
