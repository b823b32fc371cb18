"""Token ids back to text, a stream at a time, for gRPC workers (which return ids, not text).

Decoding each new id alone is wrong in two ways. Byte-level BPE (GPT-2, Llama 3, Qwen) and
byte-fallback SentencePiece split one character over several ids, so an id alone decodes to
U+FFFD; and the space a token carries (SentencePiece "▁", byte-level "Ġ") is dropped when it is
the first token decoded (the decoder strips the leading space of a text), so "▁world" alone is
"world", not " world". Decoding the whole sequence at every step is right but costs O(n) per
token.

`IncrementalDetokenizer` keeps the usual middle way (the prefix-offset / read-offset technique
the engines use): decode a short window made of a few already-emitted ids (the context) and the
ids not emitted yet, and emit what the window's text has beyond the context's text. The context
gives the new tokens their leading space; waiting while the text ends in U+FFFD keeps a
character whose bytes are not all there yet from being emitted broken. The contract, which the
property tests check on byte-level BPE, SentencePiece (BPE with byte fallback, Unigram) and
WordPiece tokenizers: whatever the split of the ids into pushes, the pushes' texts plus
`finish()` are exactly the whole sequence's decode.

Two refinements on the textbook version. While the text ends in U+FFFD, what comes before that
run is emitted anyway (it cannot change any more), so a long run of ids that each end inside a
character (CJK in a byte-level vocabulary, whose merges cross character boundaries) still
streams. And the window is bounded: when more than `max_pending` ids wait behind U+FFFD, the
context moves up to the last character boundary among them, or, without one, to their end with
the run held back and counted from the end of the text (the text of the context decoded alone
may start differently, never end differently). A push decodes its own ids, at most those of the
pushes since the previous context move, and the context's.

What the technique cannot give: decoders that rewrite text already decoded when later tokens
come (BERT's WordPiece "clean up tokenization spaces": "do n ' t" becoming "don't") can differ
from the whole decode; such tokenizers belong to encoder models, not to generation. Nor can it
take back a character: a byte-fallback decoder (Llama 2, Mistral) shows a whole run of byte
tokens as U+FFFD once the run holds an invalid byte, characters of it already streamed included,
so with invalid bytes the stream can show a character where the whole decode has U+FFFD.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from tokenizers import Tokenizer

DecodeFn = Callable[[Sequence[int], bool], str]
"""`decode(ids, skip_special_tokens) -> text`: `tokenizers.Tokenizer.decode` has this shape."""

REPLACEMENT = "\ufffd"

# Prompt ids kept as the context of the first output tokens when `context_ids` are given (as the
# engines do: enough for a space or a byte sequence, not a whole prompt).
CONTEXT_TOKENS = 5

DEFAULT_MAX_PENDING = 16


def decode_fn(decoder: Tokenizer | DecodeFn) -> DecodeFn:
    """The decode function of a `tokenizers.Tokenizer`, or `decoder` itself when it is one."""
    return decoder.decode if isinstance(decoder, Tokenizer) else decoder


def token_text(decoder: Tokenizer | DecodeFn, token_id: int) -> str:
    """One token's own text, special tokens kept (for logprobs' `token`).

    Out of context: a SentencePiece token loses its leading space and a partial UTF-8 byte
    sequence shows as U+FFFD, as the engines' own per-token texts do."""
    return decode_fn(decoder)([token_id], False)


class IncrementalDetokenizer:
    """One sequence's ids turned into text deltas; one per choice (nothing is shared).

    `push(ids)` returns the text those ids complete (possibly ""), `finish()` what is still held
    back (an incomplete character at the end of the sequence shows as U+FFFD there, as in the
    whole decode). `context_ids` (the prompt's ids, optional) give the first output token its
    leading space as the continuation of the prompt; without them the text is that of
    `decode(output_ids)`, the first token's leading space dropped as the whole decode does.
    """

    __slots__ = ("_decode", "_done", "_finished", "_max_pending", "_prefix_count", "_prefix_text", "_skip", "_tokens", "_window")

    def __init__(
        self,
        decoder: Tokenizer | DecodeFn,
        *,
        skip_special_tokens: bool = True,
        context_ids: Sequence[int] = (),
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if max_pending < 4:
            raise ValueError("max_pending must be at least 4 (the bytes of one character)")
        self._decode = decode_fn(decoder)
        self._skip = skip_special_tokens
        self._max_pending = max_pending
        # The window: `_prefix_count` ids of context (whose text decoded alone is `_prefix_text`)
        # then the pushed ids whose text is not all emitted yet. `_done` is how many characters of
        # the window's text are behind us (emitted, or the context's own).
        self._window: list[int] = list(context_ids[-CONTEXT_TOKENS:]) if context_ids else []
        self._prefix_count = len(self._window)
        self._prefix_text = self._decode(self._window, self._skip) if self._window else ""
        self._done = len(self._prefix_text)
        self._tokens = 0
        self._finished = False

    @property
    def tokens(self) -> int:
        """How many ids were pushed (context ids not counted)."""
        return self._tokens

    @property
    def pending(self) -> int:
        """How many pushed ids wait for more before their text is all emitted."""
        return len(self._window) - self._prefix_count

    def push(self, ids: Iterable[int]) -> str:
        """Add the next ids of the sequence; the text that can be emitted now."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        window = self._window
        before = len(window)
        window.extend(ids)
        if len(window) == before:
            return ""
        self._tokens += len(window) - before
        text = self._decode(window, self._skip)
        done = self._done
        if not text.endswith(REPLACEMENT):
            out = text[done:]
            if text != self._prefix_text:  # the new ids brought text: they become the context
                self._set_context(len(window), 0)
            elif len(window) - self._prefix_count > self._max_pending:
                self._drop_silent()
            return out
        # A character is incomplete (or the bytes are invalid): what precedes the trailing run of
        # U+FFFD is final, the run is not.
        stable = len(text.rstrip(REPLACEMENT))
        out = text[done:stable]
        self._done = max(done, stable)
        if len(window) - self._prefix_count > self._max_pending:
            out += self._unstick(text)
        return out

    def finish(self) -> str:
        """The text still held back; the sequence is over (a later `push` is an error)."""
        if self._finished:
            return ""
        self._finished = True
        if not self._window:
            return ""
        return self._decode(self._window, self._skip)[self._done :]

    def _set_context(self, cut: int, offset: int, *, drop: bool = False) -> None:
        """The pushed ids before `cut` become the context, the rest stay pending.

        The context's text decoded alone can differ from the window's at its start (a leading
        space dropped, orphan continuation bytes) but not at its end: what is behind us is
        counted from there, `offset` characters past it (negative: still held before it). The
        old context is dropped, unless it ended inside a character (it was moved while a
        character was unfinished): a byte-fallback decoder needs the character's first bytes to
        decode its last ones, so the new context starts where the old one did (`drop` forces)."""
        window = self._window
        if drop or not self._prefix_text.endswith(REPLACEMENT):
            del window[: self._prefix_count]
            cut -= self._prefix_count
        self._prefix_count = cut
        context = window if self._prefix_count == len(window) else window[: self._prefix_count]
        self._prefix_text = self._decode(context, self._skip)
        self._done = max(0, len(self._prefix_text) + offset)

    def _unstick(self, text: str) -> str:
        """Too many ids wait behind U+FFFD (pushes that each ended inside a character): make
        the context end at the last character boundary among them, or, without one (byte-level
        tokens that all cross boundaries; invalid bytes), at their end, the U+FFFD run held."""
        window, count, done = self._window, self._prefix_count, self._done
        # the last boundary is at most 3 ids back (a character's bytes), unless none is near
        depth = max(4, self._max_pending // 2)
        for cut in range(len(window) - 1, max(count, len(window) - depth - 1), -1):
            cut_text = self._decode(window[:cut], self._skip)
            if not cut_text.endswith(REPLACEMENT) and cut_text != self._prefix_text:
                # A byte-fallback decoder shows a whole run of byte tokens as U+FFFD while its
                # last character is incomplete: characters before the cut may not be out yet.
                out = cut_text[done:]
                self._set_context(cut, max(0, done - len(cut_text)))
                return out
        if not self._prefix_text.endswith(REPLACEMENT):
            # The run of U+FFFD began among the waiting ids: it is held whole, counted from the end.
            self._set_context(len(window), done - len(text))
            return ""
        # The run began before them (a long run of invalid bytes, or of ids that all cross
        # character boundaries): all of it but the last U+FFFD is final (a byte-level decoder has
        # one for an unfinished character, whose at most 3 bytes are among the waiting ids).
        out = text[done:-1]
        self._set_context(len(window), -1, drop=True)
        return out

    def _drop_silent(self) -> None:
        """Many pushed ids brought no text: skipped special tokens, neutral in the whole decode
        too, are dropped. They must not become the context (the next token, then first, would
        lose its space), and the window must stay short. Anything else (a lone "▁" at the very
        start) stays; if that still makes too many, they become the context all the same."""
        window, count = self._window, self._prefix_count
        if self._skip:
            window[count:] = [i for i in window[count:] if self._decode([i], True) or not self._decode([i], False)]
        if len(window) - count > self._max_pending:
            self._set_context(len(window), 0)
