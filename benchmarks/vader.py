"""VADER's human-rated sentiment snippets (Hutto & Gilbert 2014, MIT), fetched into benchmarks/.cache/.

The benchmark's own small loader (see /work/shared/DATA.md): `pip download` of the vaderSentiment 3.3.2 source
archive, whose additional_resources hold tweets, movie, Amazon and NYT snippets with a mean rating (-4..+4).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
SETS = ("tweets", "movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets")


def folder() -> Path:
    """The unpacked hutto_ICWSM_2014 folder, downloaded on first use (a few seconds)."""
    out = CACHE / "hutto_ICWSM_2014"
    if (out / "tweets_GroundTruth.txt").exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / "dl" / "vaderSentiment-3.3.2.tar.gz"
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                        "vaderSentiment==3.3.2", "-d", str(CACHE / "dl")], check=True)
    with tarfile.open(archive) as outer:
        inner = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        assert inner is not None
        with tarfile.open(fileobj=inner) as tar:
            tar.extractall(CACHE, filter="data")
    return out


def rows(name: str = "tweets") -> list[tuple[str, str]]:
    """(text, "positive"/"negative") of one set, neutral (rating 0) rows left out, in file order."""
    out = []
    for line in (folder() / f"{name}_GroundTruth.txt").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].strip() and float(parts[1]) != 0:
            out.append((" ".join(parts[2].split()), "positive" if float(parts[1]) > 0 else "negative"))
    return out
