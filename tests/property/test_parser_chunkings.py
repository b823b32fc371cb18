"""The output parsers against arbitrary chunkings: however a stream cuts the same text, the deltas
fold to the one-shot parse (content, reasoning, each call's name, id and concatenated arguments).

A model's text reaches the gateway in detokenizer pieces whose boundaries fall anywhere: inside
a tag, a JSON string, an escape, a multi-character marker. The parsers promise that no decision
depends on those boundaries; these properties try sample outputs of each format, and random
texts assembled from the formats' own pieces (markers, JSON fragments, whitespace, prose), under
random cuts. They also check the streamed shape: every call opens with one delta carrying its
index, id and name, indices count up from 0, and later deltas of a call only add arguments.
"""

from __future__ import annotations

import itertools
import unittest.mock
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smg.parsers.output import OutputParser
from smg.parsers.reasoning import REASONING_CONFIGS, ReasoningParser
from smg.parsers.registry import TOOL_PARSERS, tool_parser_for
from smg.parsers.tool_calls import base as tool_calls_base
from smg.parsers.types import Delta, ParsedOutput, ToolCallDelta, fold

DS_BEGIN, DS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"  # noqa: RUF001
DS_CALL, DS_CALL_END, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"  # noqa: RUF001

DS_V3 = (
    f"{DS_BEGIN}{DS_CALL}function{DS_SEP}get_weather\n```json\n"
    '{"location": "Tokyo", "units": "celsius"}\n```'
    f'{DS_CALL_END}\n{DS_CALL}function{DS_SEP}f\n```json\n[1, "x"]\n```{DS_CALL_END}{DS_END}'
)

SAMPLES: dict[str, list[str]] = {
    "qwen": [
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "n": [1, 2.5e-3, -0, true, null]}}'
        '\n</tool_call>\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n',
        "no calls here < tool_call > <tool_ <tool_call",
        '<tool_call>\n{"arguments": {"a": "x\\"y\\u00e9"}, "name": "late"}\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": {"a": 1} oops}\n</tool_call> after',
        '<tool_call>\n{"foo": 1}\n</tool_call> <tool_call>{"name":"g","arguments":"{\\"k\\": 2}"}</tool_call>',
        "<tool_call>not json</tool_call>",
        '<tool_call>\n{"name": "f", "arguments": {"a": [1, {"b": "c"}',
        '<tool_call>{"name": "unicodé", "arguments": {"t": "line\nbreak\tx 😀"}}</tool_call>trailing text',
        'text <tool_call>{"name": "f", "arguments": null}</tool_call>\n\n<tool_call>{"name": "h", "parameters": {"x": 1}}</tool_call>\n\n',
    ],
    "json": [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '  [{"name": "a", "parameters": {"x": 1}}, {"name": "b"}] after',
        '{"result": 1, "name": "x"}',
        'Plain text {"name": "a"}',
        '[{"name": "a", "arguments": {}}, {"bad": 1}]',
        "[1, 2]",
        "[]",
        "   ",
        '{"name": "a", "arguments": {"x": 12',
    ],
    "llama": [
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}',
        'Sure. <|python_tag|>{"name": "a", "parameters": {"x": 1}};{"name": "b", "arguments": {"y": [1]}}',
        'Hello {"name": "a"}',
        '{"name": "a", "parameters": {"x": 1}} then text',
        '<|python_tag|>print("hi")',
        "<|python_ta",
    ],
    "mistral": [
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "f", "arguments": {}}]',
        'Sure [TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}] done [TOOL_CALLS] {"name": "b", "arguments": {}}',
        "See [link](x) and [TOOL_CALLS] nope",
        '[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}}, garbage]',
        "[TOOL_CALLS] [",
    ],
    "pythonic": [
        '[get_weather(city="Paris", days=3), f()]',
        'Sure! <|python_start|>[a(x=[1, -2.5, {"k": None}], y=(1, 2), z=True)]<|python_end|> done',
        "see [this](link) and [f(1)] and [g(a='''x]''', b=\"q\\\"]\")]",
        "[f(a=1)",
        '[ get_weather ( city = "Paris" ) ]',
        '[f(a=\'\')] [g(b="""""")]',
        "[f(a=1e999)] [f(**x)] [f(a=g())]",
    ],
    "deepseek": [
        "Let me help.\n" + DS_V3 + "\nThe weather is...",
        DS_V3.replace("```json\n", ""),
        f"{DS_BEGIN}{DS_CALL}garbage here",
        f'{DS_BEGIN}{DS_CALL}function{DS_SEP}f\n```json\n{{"a": oops}}\n```{DS_CALL_END}after{DS_END}',
        f'x {DS_CALL}function{DS_SEP}f\n```json\n{{"a": 1}}\n```{DS_CALL_END} y',
        f"{DS_BEGIN}{DS_END}",
    ],
    "deepseek31": [
        f'Hi{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}{{"location": "Tokyo"}}{DS_CALL_END}{DS_CALL}f{DS_SEP}{{}}{DS_CALL_END}{DS_END}',
        f"{DS_BEGIN}{DS_CALL}bad name{DS_SEP}{{}}{DS_CALL_END}",
    ],
    "passthrough": ['<tool_call>{"name": "f"}</tool_call>'],
}

# Pieces random texts are assembled from: each format's markers, fragments of call JSON (whole
# and broken), whitespace and prose, so the random walk visits every state of every parser.
_JSON_BITS = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    ";",
    '"name"',
    '"arguments"',
    '"parameters"',
    '"f"',
    '"x\\"y"',
    "\\u00e9",
    "1",
    "-2.5e3",
    "true",
    "null",
    '{"name": "f", "arguments": {"a": [1, "b"]}}',
    '{"name": "g"}',
    '{"arguments": {"k": 1}, "name": "h"}',
    '"{\\"q\\": 1}"',
]
_TEXT_BITS = [" ", "\n", "\t", "hello", "é", "😀", "<", ">", "|", "`", "```", "```json\n", "'", '"""']
_QWEN_CALL = '<tool_call>\n{"name": "f", "arguments": {"a": [1, "b"]}}\n</tool_call>'
_DS_CALL = f'{DS_CALL}function{DS_SEP}f\n```json\n{{"a": "b"}}\n```{DS_CALL_END}'
_DS31_CALL = f'{DS_CALL}f{DS_SEP}{{"a": "b"}}{DS_CALL_END}'
_PY_CALLS = "[f(a=1), g(x='y', z=[1, 2])]"


def _thirds(text: str) -> list[str]:
    """A whole call and its three parts: random sequences then hold whole calls, several calls,
    and calls broken or reassembled at odd places."""
    a, b = len(text) // 3, 2 * len(text) // 3
    return [text, text, text[:a], text[a:b], text[b:]]


PIECES: dict[str, list[str]] = {
    "qwen": ["<tool_call>", "</tool_call>", "<tool_", "call>", *_thirds(_QWEN_CALL)],
    "json": ['[{"name": "f", "arguments": {}}', ', {"name": "g"}', "]"],
    "llama": ["<|python_tag|>", "<|python", *_thirds('{"name": "f", "parameters": {"a": 1}}'), "; "],
    "mistral": [
        "[TOOL_CALLS]",
        "[TOOL_",
        *_thirds('[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]'),
    ],
    "pythonic": [
        "[f(",
        "[get_weather(city=",
        ")",
        "(",
        "'x'",
        "a=1",
        ", ",
        "<|python_start|>",
        "<|python_end|>",
        "None",
        *_thirds(_PY_CALLS),
    ],
    "deepseek": [DS_BEGIN, DS_END, DS_CALL, DS_CALL_END, DS_SEP, "function", "f\n", DS_CALL[:5], *_thirds(_DS_CALL)],
    "deepseek31": [DS_BEGIN, DS_END, DS_CALL, DS_CALL_END, DS_SEP, "f", DS_SEP[:4], *_thirds(_DS31_CALL)],
    "passthrough": ["<tool_call>"],
}


def _ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def _stream(make: Callable[[], OutputParser], chunks: list[str]) -> tuple[ParsedOutput, list[Delta]]:
    parser = make()
    deltas: list[Delta] = []
    for chunk in chunks:
        deltas += parser.push(chunk)
    deltas += parser.finish()
    return fold(deltas), deltas


def _cut(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c for c in cuts if 0 < c < len(text)})
    return [text[a:b] for a, b in itertools.pairwise([0, *points, len(text)])]


def _check_shape(deltas: list[Delta]) -> None:
    opened: list[int] = []
    for delta in deltas:
        if isinstance(delta, ToolCallDelta):
            if delta.name is not None:
                assert delta.index == len(opened) and delta.id  # calls open in order, with an id
                opened.append(delta.index)
            else:
                assert delta.index in opened and delta.id is None  # later pieces only add arguments


def _tool_output(name: str) -> Callable[[], OutputParser]:
    ids = _ids()  # one id source per run, so both runs number their calls alike
    return lambda: OutputParser(tools=tool_parser_for(name, id_factory=ids))


def _same_under(make: Callable[[], Callable[[], OutputParser]], text: str, cuts: list[int]) -> None:
    whole, _ = _stream(make(), [text])
    chunked, deltas = _stream(make(), _cut(text, cuts))
    assert chunked == whole
    one_shot = make()().parse(text)
    assert one_shot == whole
    _check_shape(deltas)


cut_lists = st.lists(st.integers(min_value=1, max_value=400), max_size=40)


@pytest.mark.parametrize("name", sorted(SAMPLES))
@settings(max_examples=60)
@given(data=st.data())
def test_any_chunking_of_a_sample_folds_to_the_one_shot_parse(name: str, data: st.DataObject) -> None:
    text = data.draw(st.sampled_from(SAMPLES[name]))
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=max(1, len(text) - 1)), max_size=40))
    _same_under(lambda: _tool_output(name), text, cuts)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_one_character_at_a_time_folds_to_the_one_shot_parse(name: str) -> None:
    for text in SAMPLES[name]:
        _same_under(lambda: _tool_output(name), text, list(range(1, len(text))))


@pytest.mark.parametrize("name", sorted(PIECES))
@settings(max_examples=80)
@given(data=st.data())
def test_random_texts_of_the_formats_pieces_fold_alike_under_any_chunking(name: str, data: st.DataObject) -> None:
    pieces = PIECES[name] + _JSON_BITS + _TEXT_BITS
    text = "".join(data.draw(st.lists(st.sampled_from(pieces), max_size=14)))
    cuts = data.draw(cut_lists)
    _same_under(lambda: _tool_output(name), text, cuts)


@pytest.mark.parametrize("name", sorted(PIECES))
@settings(max_examples=60)
@given(data=st.data())
def test_setting_held_text_aside_early_changes_nothing(name: str, data: st.DataObject) -> None:
    """The same with the buffer compacted and held text set aside after a couple of characters
    (normally 4096), so texts this short go through it."""
    pieces = PIECES[name] + _JSON_BITS + _TEXT_BITS
    text = data.draw(st.sampled_from(SAMPLES[name]) | st.lists(st.sampled_from(pieces), max_size=14).map("".join))
    cuts = data.draw(cut_lists)
    with unittest.mock.patch.object(tool_calls_base, "_SPILL", data.draw(st.integers(min_value=0, max_value=3))):
        _same_under(lambda: _tool_output(name), text, cuts)


def test_every_implemented_tool_parser_is_fuzzed() -> None:
    assert {parser.name for parser in TOOL_PARSERS.values()} <= set(SAMPLES)


REASONING_SAMPLES = [
    "<think>\nLet me think.\n</think>\n\nThe answer is 4.",
    "plain answer, no thinking",
    "still thinking when it was cut off",
    "reasoning first</think>then the answer",
    "<think>a <think> b</think> c <think> d </think>",
    "pre <think>mid</think> post",
    "<thi",
    "◁think▷kimi◁/think▷answer",
    "<|START_THINKING|>cohere<|END_THINKING|>answer",
]
REASONING_PIECES = [
    "<think>",
    "</think>",
    "<thi",
    "</",
    "◁think▷",
    "◁/think▷",
    "<|START_THINKING|>",
    "<|END_THINKING|>",
    "x",
    " ",
    "\n",
    "<",
]


def _reasoning_output(name: str, in_reasoning: bool | None) -> Callable[[], OutputParser]:
    return lambda: OutputParser(reasoning=ReasoningParser(REASONING_CONFIGS[name], in_reasoning=in_reasoning))


@pytest.mark.parametrize("name", sorted(REASONING_CONFIGS))
@settings(max_examples=60)
@given(data=st.data())
def test_reasoning_parsers_fold_alike_under_any_chunking(name: str, data: st.DataObject) -> None:
    text = data.draw(st.sampled_from(REASONING_SAMPLES) | st.lists(st.sampled_from(REASONING_PIECES), max_size=12).map("".join))
    in_reasoning = data.draw(st.sampled_from([None, True, False]))
    cuts = data.draw(cut_lists)
    _same_under(lambda: _reasoning_output(name, in_reasoning), text, cuts)


@settings(max_examples=80)
@given(data=st.data())
def test_reasoning_then_tool_calls_fold_alike_under_any_chunking(data: st.DataObject) -> None:
    pieces = ["<think>", "</think>", "<tool_call>", "</tool_call>", "\n", "ok", *_JSON_BITS]
    text = data.draw(
        st.sampled_from(
            [
                '<think>I could call <tool_call>{"name": "f"}</tool_call> here</think>\n\n'
                '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
            ]
        )
        | st.lists(st.sampled_from(pieces), max_size=14).map("".join)
    )
    cuts = data.draw(cut_lists)

    def make() -> Callable[[], OutputParser]:
        ids = _ids()
        return lambda: OutputParser(ReasoningParser(REASONING_CONFIGS["qwen3"]), tool_parser_for("qwen", id_factory=ids))

    _same_under(make, text, cuts)
