"""Incremental detokenization: for any split of a sequence's ids into pushes, the pushes' texts
plus finish() are the whole sequence's decode, on the tokenizer families generation models use
(byte-level BPE, SentencePiece-style BPE with byte fallback, Unigram with Metaspace) and
WordPiece. Every tokenizer is trained here, on a few sentences: nothing is downloaded."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from smg.tokenization.detokenizer import REPLACEMENT, IncrementalDetokenizer, token_text

CORPUS = [
    "Hello world, this is a small test of the tokenizer.",
    "The quick brown fox jumps over the lazy dog! Isn't it?",
    "Café déjà vu: naïve façade, ÅÄÖ, ß and über-cool.",
    "日本語のテキストと中文文本\uff0c还有한국어。東京タワー",
    "Emoji: 😀🎉👍🏽 and 👨‍👩‍👧 family; ✓ ✗ € ½.",
    "  leading spaces\tand tabs\nnew lines\n\n  code: def f(x): return x * 2",
]
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def byte_level() -> Tokenizer:
    """GPT-2 / Llama 3 / Qwen style: bytes mapped to printable characters ("Ġ" is a space)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.add_tokens([AddedToken("<tool_call>", special=False)])  # added, not special: kept by skip
    return tok


def sentencepiece_bpe() -> Tokenizer:
    """Llama 2 / Mistral style: "▁" for spaces, characters outside the vocabulary as <0xNN> bytes."""
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, limit_alphabet=50)
    tok.train_from_iterator(CORPUS * 3, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["unk_token"] = "<unk>"
    return Tokenizer.from_str(json.dumps(spec))


def unigram_metaspace() -> Tokenizer:
    """T5 / older SentencePiece style: Unigram, Metaspace pre-tokenizer and decoder."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=SPECIALS, unk_token="<unk>")
    tok.train_from_iterator(CORPUS * 3, trainer)
    return tok


def wordpiece() -> Tokenizer:
    """BERT style ("##" continuations). Without the decoder's clean-up of spaces before
    punctuation, which rewrites text already decoded (see the module's docstring)."""
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(cleanup=False)
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=SPECIALS)
    tok.train_from_iterator(CORPUS * 3, trainer)
    return tok


BUILDERS: dict[str, Callable[[], Tokenizer]] = {
    "byte_level": byte_level,
    "sentencepiece_bpe": sentencepiece_bpe,
    "unigram_metaspace": unigram_metaspace,
    "wordpiece": wordpiece,
}


@functools.cache
def tokenizer(name: str) -> Tokenizer:
    return BUILDERS[name]()


# Texts: ASCII, accents, CJK, Korean, emoji (with modifiers and ZWJ sequences), whitespace, and
# special tokens written out (encoded as their ids).
PIECES = [
    "Hello",
    " world",
    "the",
    " fox",
    "!",
    "?",
    ",",
    "'",
    " ",
    "  ",
    "\n",
    "\t",
    "é",
    "déjà",
    "ß",
    "über",
    "ñ",
    "日本語",
    "中文",
    "文本",
    "テキスト",
    "한국어",
    "東京",
    "😀",
    "🎉",
    "👍🏽",
    "👨‍👩‍👧",
    "€",
    "½",
    "Ω",
    "\U0001d518",  # a 4-byte character in no vocabulary
    "<s>",
    "</s>",
    "<|im_end|>",
    "<tool_call>",
]
texts = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=3)), max_size=25).map("".join)


def splits(ids: Sequence[int], sizes: Sequence[int]) -> list[list[int]]:
    """`ids` cut into pushes of the given sizes (0 included: an empty push), the rest at the end."""
    pushes, at = [], 0
    for size in sizes:
        pushes.append(list(ids[at : at + size]))
        at += size
    pushes.append(list(ids[at:]))
    return pushes


def stream(detok: IncrementalDetokenizer, pushes: list[list[int]]) -> list[str]:
    deltas = [detok.push(push) for push in pushes]
    deltas.append(detok.finish())
    return deltas


def assert_same_as_whole(deltas: list[str], whole: str) -> None:
    assert "".join(deltas) == whole
    # no delta shows U+FFFD where the whole decode has a character (implied, said explicitly)
    at = 0
    for delta in deltas:
        for offset, char in enumerate(delta):
            if char == REPLACEMENT:
                assert whole[at + offset] == REPLACEMENT
        at += len(delta)


sizes = st.lists(st.integers(0, 5), max_size=40)


@pytest.mark.parametrize("name", list(BUILDERS))
@settings(max_examples=150, deadline=None)
@given(text=texts, sizes=sizes, skip=st.booleans(), max_pending=st.sampled_from([4, 5, 16]))
def test_any_split_of_a_text_decodes_as_the_whole(name: str, text: str, sizes: list[int], skip: bool, max_pending: int) -> None:
    tok = tokenizer(name)
    ids = tok.encode(text, add_special_tokens=False).ids
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip, max_pending=max_pending)
    assert_same_as_whole(stream(detok, splits(ids, sizes)), tok.decode(ids, skip_special_tokens=skip))
    assert detok.tokens == len(ids)


@pytest.mark.parametrize("name", ["byte_level", "unigram_metaspace", "wordpiece"])
@settings(max_examples=150, deadline=None)
@given(data=st.data(), sizes=sizes, skip=st.booleans(), max_pending=st.sampled_from([4, 16]))
def test_any_ids_even_invalid_bytes_decode_as_the_whole(
    name: str, data: st.DataObject, sizes: list[int], skip: bool, max_pending: int
) -> None:
    """Arbitrary ids: byte-level tokens that cut characters anywhere or make invalid UTF-8,
    special tokens anywhere. (Not the byte-fallback vocabulary: its decoder shows a run of byte
    tokens that turns invalid as U+FFFD throughout, characters already streamed included.)"""
    tok = tokenizer(name)
    ids = data.draw(st.lists(st.integers(0, tok.get_vocab_size() - 1), max_size=60))
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip, max_pending=max_pending)
    assert_same_as_whole(stream(detok, splits(ids, sizes)), tok.decode(ids, skip_special_tokens=skip))


@pytest.mark.parametrize("name", list(BUILDERS))
@settings(max_examples=60, deadline=None)
@given(prompt=texts, text=texts, sizes=sizes)
def test_prompt_context_gives_the_continuation(name: str, prompt: str, text: str, sizes: list[int]) -> None:
    """With the prompt as context, the output is the part of decode(context + output) after the
    context's own text: a SentencePiece first token keeps its space."""
    tok = tokenizer(name)
    context = tok.encode(prompt, add_special_tokens=False).ids
    ids = tok.encode(text, add_special_tokens=False).ids
    tail = context[-5:]
    before, after = tok.decode(tail), tok.decode(tail + ids)
    if not after.startswith(before):  # the context's text itself changes (a trailing byte cut)
        return
    detok = IncrementalDetokenizer(tok, context_ids=context)
    assert "".join(stream(detok, splits(ids, sizes))) == after[len(before) :]


def test_sentencepiece_spaces_across_pushes() -> None:
    tok = tokenizer("sentencepiece_bpe")
    ids = tok.encode("Hello world, the fox", add_special_tokens=False).ids
    deltas = stream(IncrementalDetokenizer(tok), [[i] for i in ids])
    assert "".join(deltas) == "Hello world, the fox"
    assert any(delta.startswith(" ") for delta in deltas)  # the space comes with the next word
    with_prompt = IncrementalDetokenizer(tok, context_ids=tok.encode("Say:", add_special_tokens=False).ids)
    assert "".join(stream(with_prompt, [ids])) == " Hello world, the fox"


def test_emoji_is_held_until_complete_then_emitted_whole() -> None:
    tok = tokenizer("sentencepiece_bpe")
    fraktur_u = "\U0001d518"  # 4 byte tokens
    ids = tok.encode("a " + fraktur_u, add_special_tokens=False).ids
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push([i]) for i in ids]
    assert deltas[-4:-1] == ["", "", ""] and deltas[-1] == fraktur_u
    assert detok.finish() == ""


def byte_decoder(pieces: list[bytes]) -> Callable[[Sequence[int], bool], str]:
    """A decode function over ids that are byte strings, UTF-8 decoded with U+FFFD for what is
    invalid or incomplete (as byte-level BPE decoders do)."""

    def decode(ids: Sequence[int], skip_special_tokens: bool) -> str:
        calls.append(len(ids))
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    calls: list[int] = []
    decode.calls = calls  # type: ignore[attr-defined]
    return decode


def test_tokens_that_all_cut_characters_stream_and_stay_bounded() -> None:
    """Ids whose every end falls inside a character (byte-level merges across CJK characters):
    the text still streams (all but the last, unfinished character), exactly, and each decode
    is of a bounded window."""
    data = ("日本語中文" * 40).encode()
    pieces = [data[:1]] + [data[i : i + 3] for i in range(1, len(data), 3)]
    decode = byte_decoder(pieces)
    detok = IncrementalDetokenizer(decode, max_pending=8)
    out = ""
    for i in range(len(pieces)):
        out += detok.push([i])
        assert REPLACEMENT not in out
        assert len(out) >= i - 1  # one character per id, at most one held
    out += detok.finish()
    assert out == data.decode()
    assert max(decode.calls) <= 20  # type: ignore[attr-defined]


def test_invalid_bytes_forever_stay_bounded() -> None:
    pieces = [b"\xe6", b"\x80", b"\xff", b"x"]
    decode = byte_decoder(pieces)
    ids = [0, 1, 2] * 300 + [0]
    detok = IncrementalDetokenizer(decode)
    out = "".join(detok.push([i]) for i in ids) + detok.finish()
    assert out == b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
    assert max(decode.calls) <= 40  # type: ignore[attr-defined]


def token_id(tok: Tokenizer, token: str) -> int:
    found = tok.token_to_id(token)
    assert found is not None
    return found


def test_special_tokens_skipped_do_not_pile_up_or_eat_spaces() -> None:
    tok = tokenizer("sentencepiece_bpe")
    end = token_id(tok, "<|im_end|>")
    before = tok.encode("Hello world", add_special_tokens=False).ids
    after = tok.encode("the fox", add_special_tokens=False).ids
    detok = IncrementalDetokenizer(tok)
    out = detok.push(before)
    for _ in range(100):
        out += detok.push([end])
        assert detok.pending <= 17
    out += detok.push(after) + detok.finish()
    assert out == tok.decode(before + [end] * 100 + after) == "Hello world the fox"


def test_lifecycle() -> None:
    tok = tokenizer("byte_level")
    detok = IncrementalDetokenizer(tok.decode)
    assert detok.push([]) == "" and detok.tokens == 0
    assert detok.finish() == "" and detok.finish() == ""
    with pytest.raises(RuntimeError):
        detok.push([1])
    with pytest.raises(ValueError):
        IncrementalDetokenizer(tok, max_pending=3)


def test_choices_are_independent() -> None:
    tok = tokenizer("byte_level")
    a, b = IncrementalDetokenizer(tok), IncrementalDetokenizer(tok)
    ids_a = tok.encode("日本語 one", add_special_tokens=False).ids
    ids_b = tok.encode("😀 two", add_special_tokens=False).ids
    out_a, out_b = [], []
    for i in range(max(len(ids_a), len(ids_b))):
        out_a.append(a.push(ids_a[i : i + 1]))
        out_b.append(b.push(ids_b[i : i + 1]))
    assert "".join(out_a) + a.finish() == "日本語 one"
    assert "".join(out_b) + b.finish() == "😀 two"


def test_token_text() -> None:
    tok = tokenizer("byte_level")
    assert token_text(tok, token_id(tok, "<|im_end|>")) == "<|im_end|>"
    assert token_text(tok.decode, token_id(tok, "Ġthe")) == " the"


def test_a_silent_start_that_is_not_special_is_kept() -> None:
    """A lone "▁" first decodes to nothing but gives the next word its space: when special
    tokens pile up after it, they are dropped, it is not."""
    tok = tokenizer("unigram_metaspace")
    ids = [token_id(tok, "▁")] + [token_id(tok, "<|im_end|>")] * 40 + tok.encode("the fox", add_special_tokens=False).ids
    detok = IncrementalDetokenizer(tok)
    assert "".join(stream(detok, [[i] for i in ids])) == tok.decode(ids) == " the fox"


def test_a_character_completed_right_after_the_context_moved() -> None:
    """Ids that all end inside a character make the context move with the last one unfinished;
    the next id only completes it (the text keeps its length): it is emitted once."""
    data = "日本語中文".encode()
    pieces = [data[:1]] + [data[i : i + 3] for i in range(1, len(data), 3)]  # the last: 2 bytes
    detok = IncrementalDetokenizer(byte_decoder(pieces), max_pending=4)
    deltas = [detok.push([i]) for i in range(len(pieces))]
    assert deltas == ["", "日", "本", "語", "中", "文"]
    assert detok.finish() == ""
