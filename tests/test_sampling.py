"""The torch-free module both generate engines share: stop strings and their hold-back, the settings record."""

from __future__ import annotations

from llmkit import sampling
from llmkit.sampling import StopStream, cut_at_stop


def test_cut_at_stop_takes_the_earliest_stop() -> None:
    assert cut_at_stop("a b END c STOP", ("STOP", "END")) == ("a b ", True)
    assert cut_at_stop("nothing here", ("STOP",)) == ("nothing here", False)
    assert cut_at_stop("text", ()) == ("text", False)


def _feed(stream: StopStream, pieces: list[str], *, done_at_end: bool = True) -> tuple[str, bool]:
    text, hit = "", False
    for i, piece in enumerate(pieces):
        text, hit = stream.update(text + piece, done=done_at_end and i == len(pieces) - 1)
        if hit:
            break
    return text, hit


def test_stop_stream_never_shows_part_of_a_stop_string() -> None:
    shown: list[str] = []
    stream = StopStream(("</s>",), shown.append)
    text, hit = _feed(stream, ["Hel", "lo <", "/", "s> more"])
    assert (text, hit) == ("Hello ", True)
    assert "".join(shown) == "Hello "
    assert not any("<" in piece for piece in shown)


def test_stop_stream_holds_back_then_releases_at_the_end() -> None:
    shown: list[str] = []
    stream = StopStream(("STOP",), shown.append)
    stream.update("abcdef")
    assert "".join(shown) == "ab"  # the last 4 characters could still begin "STOP"
    stream.update("abcdefg", done=True)
    assert "".join(shown) == "abcdefg"


def test_stop_stream_finish_shows_what_the_hold_back_kept() -> None:
    shown: list[str] = []
    stream = StopStream(("STOP",), shown.append)
    stream.update("hello world")
    stream.finish("hello world")
    assert "".join(shown) == "hello world"


def test_stop_stream_without_stops_shows_everything_at_once() -> None:
    shown: list[str] = []
    stream = StopStream((), shown.append)
    stream.update("ab")
    stream.update("abcd")
    assert shown == ["ab", "cd"]


def test_settings_record_is_the_set_kwargs_plus_stop_and_seed() -> None:
    s = sampling.build_settings(temperature=0.5, stop=["\n\n"], seed=3, max_new_tokens=7)
    assert sampling.settings_record(s) == {
        "max_new_tokens": 7, "do_sample": True, "num_beams": 1, "num_return_sequences": 1,
        "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
        "temperature": 0.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "stop": ["\n\n"], "seed": 3,
    }
    greedy = sampling.settings_record(sampling.build_settings())
    assert "temperature" not in greedy and greedy["do_sample"] is False
