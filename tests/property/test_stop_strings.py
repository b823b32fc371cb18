"""Stop strings matched over text deltas: for every cut of the text into deltas, the emitted text
is the whole text cut at the first stop string (earliest start, then longest), and no part of a
stop string is ever emitted before the match is known."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smg.tokenization.stop import MAX_STOP_SEQUENCES, StopMatcher, StopSplit, StopStep, split_stop

# A small alphabet makes stop strings occur, overlap and repeat; a few multi-byte characters.
ALPHABET = "ab\n 日😀"


def reference(text: str, stops: list[str], keep: bool) -> tuple[str, str | None]:
    """The whole text cut at the first stop string: earliest start, then the longest."""
    best: tuple[int, int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        i = text.find(stop)
        if i >= 0 and (best is None or (i, -len(stop)) < (best[0], best[1])):
            best = (i, -len(stop), stop)
    if best is None:
        return text, None
    at, _, stop = best
    return (text[: at + len(stop)] if keep else text[:at]), stop


def run(matcher: StopMatcher, deltas: list[str]) -> tuple[str, str | None, list[StopStep]]:
    steps = []
    for delta in deltas:
        steps.append(matcher.push(delta))
        if steps[-1].stopped:
            break
    else:
        steps.append(matcher.finish())
    return "".join(s.text for s in steps), steps[-1].stop, steps


def cut(text: str, points: list[int]) -> list[str]:
    bounds = sorted({min(p, len(text)) for p in points})
    pieces, start = [], 0
    for b in [*bounds, len(text)]:
        pieces.append(text[start:b])
        start = b
    return pieces


texts = st.text(alphabet=ALPHABET, max_size=40)
stop_lists = st.lists(st.text(alphabet=ALPHABET, min_size=0, max_size=5), max_size=5)


@st.composite
def text_and_stops(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A text and stop strings, some cut from the text itself (so they occur, overlap, share a
    start), some random."""
    text = draw(texts)
    stops = draw(stop_lists)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 6)))
        stops.append(text[i:j] + draw(st.sampled_from(["", "", "a", "b", "\n"])))
    return text, draw(st.permutations(stops))


@settings(max_examples=400, deadline=None)
@given(case=text_and_stops(), points=st.lists(st.integers(0, 40), max_size=12), keep=st.booleans())
def test_any_chunking_gives_the_reference_cut(case: tuple[str, list[str]], points: list[int], keep: bool) -> None:
    text, stops = case
    want, want_stop = reference(text, stops, keep)
    got, got_stop, steps = run(StopMatcher(stops, no_stop_trim=keep), cut(text, points))
    assert (got, got_stop) == (want, want_stop)
    # nothing is emitted past what the whole text allows, at any point
    emitted = ""
    for step in steps:
        emitted += step.text
        assert want.startswith(emitted)


@settings(max_examples=200, deadline=None)
@given(case=text_and_stops(), keep=st.booleans())
def test_one_character_at_a_time_and_all_at_once_agree(case: tuple[str, list[str]], keep: bool) -> None:
    text, stops = case
    one = run(StopMatcher(stops, no_stop_trim=keep), list(text))[:2]
    whole = run(StopMatcher(stops, no_stop_trim=keep), [text])[:2]
    assert one == whole == reference(text, stops, keep)


@settings(max_examples=100, deadline=None)
@given(prefix=texts, stop=st.text(alphabet=ALPHABET, min_size=1, max_size=8), points=st.lists(st.integers(0, 60), max_size=10))
def test_a_stop_string_is_never_partly_emitted(prefix: str, stop: str, points: list[int]) -> None:
    text = prefix + stop + "tail"
    matcher = StopMatcher([stop])
    emitted = ""
    for delta in cut(text, points):
        step = matcher.push(delta)
        emitted += step.text
        if step.stopped:
            break
    assert matcher.stopped
    assert stop not in emitted
    assert emitted == text[: text.find(stop)]


def test_split_across_deltas_is_caught_and_trimmed() -> None:
    m = StopMatcher(["</answer>"])
    assert m.push("The answer is 4</ans") == StopStep("The answer is 4")
    assert m.held == "</ans"
    assert m.push("wer> and more") == StopStep("", True, "</answer>")
    assert m.push("ignored") == StopStep("", True, "</answer>")
    assert m.finish() == StopStep("", True, "</answer>")


def test_no_stop_trim_keeps_the_stop_string() -> None:
    m = StopMatcher(["END"], no_stop_trim=True)
    assert m.push("done E") == StopStep("done ")
    assert m.push("ND!") == StopStep("END", True, "END")


def test_held_text_that_does_not_become_a_stop_is_released() -> None:
    m = StopMatcher(["\n\n"])
    assert m.push("line\n") == StopStep("line")
    assert m.push("next") == StopStep("\nnext")
    assert m.push("\n") == StopStep("")
    assert m.finish() == StopStep("\n")
    assert not m.stopped


def test_earliest_start_wins_and_on_a_tie_the_longest() -> None:
    assert run(StopMatcher(["bc", "abcd"]), ["abcd"])[:2] == ("", "abcd")
    assert run(StopMatcher(["ab", "abc"]), ["xabcx"])[:2] == ("x", "abc")
    # "bc" is complete first, but "abcd" started earlier: the match waits for it ...
    m = StopMatcher(["bc", "abcd"])
    assert m.push("xabc") == StopStep("x")
    assert m.push("d") == StopStep("", True, "abcd")
    # ... and falls back to "bc" when it does not come, or when the text ends
    m = StopMatcher(["bc", "abcd"])
    assert m.push("xabc") == StopStep("x")
    assert m.push("e") == StopStep("a", True, "bc")
    m = StopMatcher(["bc", "abcd"])
    assert m.push("xabc") == StopStep("x")
    assert m.finish() == StopStep("a", True, "bc")


def test_empty_duplicate_and_very_long_stop_strings() -> None:
    assert StopMatcher(["", "x", "x"]).stops == ("x",)
    assert StopMatcher([""]).push("abc") == StopStep("abc")
    long = "na" * 5000 + "batman"
    text = "na" * 6000 + "batman!"
    got, stop, _ = run(StopMatcher([long]), cut(text, list(range(0, len(text), 7))))
    assert (got, stop) == ("na" * 1000, long)
    m = StopMatcher([long])
    assert m.push("na" * 100) == StopStep("")  # could still be the start of it
    assert m.finish() == StopStep("na" * 100)


def test_split_stop() -> None:
    vocab = {"\n": [5], "stop": [9, 10], "日": [7], "</s>": [2], "again": [5]}

    def encode(text: str) -> list[int]:
        return vocab[text]

    assert split_stop(None, encode) == StopSplit()
    assert split_stop("\n", encode) == StopSplit((5,), ("\n",))
    assert split_stop(["stop", "日", "</s>", "stop"], encode) == StopSplit((7, 2), ("stop", "日", "</s>"))
    assert split_stop(["\n", "again"], encode) == StopSplit((5,), ("\n", "again"))
    with pytest.raises(ValueError, match="at most 4"):
        split_stop(["a", "b", "c", "d", "e"], encode)
    assert MAX_STOP_SEQUENCES == 4
    with pytest.raises(ValueError, match="empty"):
        split_stop(["\n", ""], encode)
    with pytest.raises(ValueError, match="empty"):
        split_stop("", encode)
    with pytest.raises(ValueError, match="string or a list"):
        split_stop(["\n", 3], encode)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="string or a list"):
        split_stop({"a": 1}, encode)  # type: ignore[arg-type]
