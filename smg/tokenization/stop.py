"""Stop strings, matched by the gateway on the text it detokenized.

A gRPC worker is sent token ids only: the reference gateway does not pass `stop` strings to the
engine (only those that are one token, as `stop_token_ids`, so the engine stops early), it finds
them in its own detokenized text and cuts the text there. `split_stop` makes that split;
`StopMatcher` does the matching for one sequence (one per choice).

The text arrives in deltas that need not end where a stop string does, so the matcher holds back
any tail that could still grow into a stop string and never emits part of one. Its answer does
not depend on how the text was cut into deltas: it is always the text up to the first occurrence
of a stop string in the whole text (the earliest start; at one start, the longest stop string),
without the stop string (OpenAI) or with it (`no_stop_trim`, SGLang's option). Holding back for
the earliest start means that with overlapping stop strings ("abcd" and "bc") a match found may
wait for a longer one that started before it; the reference gateway takes whichever match ends
first as the tokens come, so on such overlaps it can cut later than we do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

MAX_STOP_SEQUENCES = 4  # OpenAI's limit on `stop`, which the reference enforces too


class StopStep(NamedTuple):
    """What a delta gave: the text to emit now, and whether (and on which string) the sequence
    stopped. Once stopped, the rest of the sequence is to be dropped."""

    text: str
    stopped: bool = False
    stop: str | None = None


class StopMatcher:
    """Stop strings matched over one sequence's text deltas.

    `push(delta)` returns what can be emitted; `finish()` (the sequence ended by itself) what
    was held back, cut if it held a stop string. After a stop, both return ("", True, stop).
    Empty stop strings are ignored (`split_stop` rejects them), duplicates count once."""

    __slots__ = ("_held", "_keep", "_stop", "_stops")

    def __init__(self, stops: Iterable[str], *, no_stop_trim: bool = False) -> None:
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._keep = no_stop_trim
        self._held = ""
        self._stop: str | None = None

    @property
    def stops(self) -> tuple[str, ...]:
        return self._stops

    @property
    def stopped(self) -> bool:
        return self._stop is not None

    @property
    def held(self) -> str:
        """The text held back: it could still be the start of a stop string."""
        return self._held

    def push(self, text: str) -> StopStep:
        """The next delta of the sequence's text."""
        if self._stop is not None:
            return StopStep("", True, self._stop)
        if not self._stops:
            return StopStep(text)
        return self._scan(self._held + text, final=False)

    def finish(self) -> StopStep:
        """The sequence's text is complete: whatever was held back, up to a stop string in it."""
        if self._stop is not None:
            return StopStep("", True, self._stop)
        if not self._held:
            return StopStep("")
        return self._scan(self._held, final=True)

    def _scan(self, text: str, *, final: bool) -> StopStep:
        # the first complete stop string: the earliest start, then the longest
        at, found = len(text), ""
        for stop in self._stops:
            i = text.find(stop, 0, at + len(stop))  # a later start than `at` cannot win
            if i >= 0 and (i < at or len(stop) > len(found)):
                at, found = i, stop
        # the earliest start of a stop string not complete yet (a tail of `text` that is one's
        # proper prefix): a match there would win over `found`, so it is waited for
        hold = len(text) if final else self._partial_start(text, at)
        if found and at < hold:
            self._held = ""
            self._stop = found
            return StopStep(text[: at + len(found)] if self._keep else text[:at], True, found)
        self._held = text[hold:]
        return StopStep(text[:hold])

    def _partial_start(self, text: str, limit: int) -> int:
        """Where the longest tail of `text` that is a proper prefix of some stop string starts
        (at most `limit`; `len(text)` when there is none)."""
        best = len(text)
        for stop in self._stops:
            first = stop[0]
            # a proper prefix of `stop` is shorter than it
            i = text.find(first, max(0, len(text) - len(stop) + 1), min(best, limit + 1))
            while i >= 0:
                if stop.startswith(text[i:]):
                    best = i
                    break
                i = text.find(first, i + 1, min(best, limit + 1))
        return best


@dataclass(frozen=True, slots=True)
class StopSplit:
    """A request's `stop`, as the gateway uses it with a gRPC worker.

    `token_ids`: the stop strings that are exactly one token, for the engine's `stop_token_ids`
    (it then stops as soon as it samples one). `strings`: every stop string, single-token ones
    included, for the gateway's `StopMatcher`: the text is what is authoritative (a one-token
    "\\n" also occurs inside a "\\n\\n" token the engine will not stop on), and the engine leaves
    the stop token in its output for the matcher to cut."""

    token_ids: tuple[int, ...] = ()
    strings: tuple[str, ...] = ()


def split_stop(
    stop: str | Sequence[str] | None,
    encode: Callable[[str], Sequence[int]],
    *,
    limit: int = MAX_STOP_SEQUENCES,
) -> StopSplit:
    """Validate a request's `stop` (a string or a list of strings) and split it.

    `encode(text)` gives the ids of a text with no special tokens added (a BOS would make every
    stop string more than one token). A ValueError (more than `limit` strings, an empty one, a
    value of another type) is the client's error, a 400."""
    if stop is None:
        return StopSplit()
    items: Sequence[object] = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list | tuple):
        raise ValueError("'stop' must be a string or a list of strings")
    if len(items) > limit:
        raise ValueError(f"'stop' accepts at most {limit} sequences, got {len(items)}")
    strings: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("'stop' must be a string or a list of strings")
        if not item:
            raise ValueError("'stop' sequences cannot be empty")
        if item not in strings:
            strings.append(item)
    token_ids: list[int] = []
    for item in strings:
        ids = encode(item)
        if len(ids) == 1 and ids[0] not in token_ids:
            token_ids.append(ids[0])
    return StopSplit(tuple(token_ids), tuple(strings))
