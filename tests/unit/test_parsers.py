"""The tool-call and reasoning parsers, format by format, and the registry of the reference's names.

With gRPC workers the gateway turns the model's raw text into OpenAI's message: content,
``reasoning_content`` and ``tool_calls``. Each format is tried with one call and several, text
before and after, no call, malformed calls (given back as content before the name is known,
truncated after), the streamed delta shape, and the registry: every name the reference accepts
is either implemented or refused with "not supported by smg", and the default chosen from a model
id is the reference's.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest

from smg.config.switching import reference_flags
from smg.parsers.output import OutputParser
from smg.parsers.reasoning import REASONING_CONFIGS, ReasoningParser
from smg.parsers.registry import (
    REFERENCE_REASONING_PARSERS,
    REFERENCE_TOOL_PARSERS,
    TOOL_PARSERS,
    UnknownParser,
    UnsupportedParser,
    check_tool_parser,
    default_reasoning_parser,
    default_tool_parser,
    reasoning_parser_for,
    resolve_reasoning_parser,
    resolve_tool_parser,
    tool_parser_for,
)
from smg.parsers.tool_calls import base as base_module
from smg.parsers.tool_calls import json_calls as json_calls_module
from smg.parsers.tool_calls import llama as llama_module
from smg.parsers.tool_calls import mistral as mistral_module
from smg.parsers.tool_calls import qwen as qwen_module
from smg.parsers.tool_calls import sequence as sequence_module
from smg.parsers.tool_calls.base import ToolParser
from smg.parsers.types import ContentDelta, Delta, ReasoningDelta, ToolCall, ToolCallDelta, fold, new_call_id

DS_BEGIN, DS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"  # noqa: RUF001
DS_CALL, DS_CALL_END, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"  # noqa: RUF001


def ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def parser(name: str, tools: list[str] | None = None) -> ToolParser:
    return tool_parser_for(name, tools=tools, id_factory=ids())


def parse(name: str, text: str, tools: list[str] | None = None) -> tuple[str, list[tuple[str, dict[str, object]]]]:
    """(content, [(name, arguments as JSON)]) of a whole output; the arguments must be JSON."""
    content, calls = parser(name, tools).parse(text)
    return content, [(call.name, json.loads(call.arguments)) for call in calls]


def stream(p: ToolParser, chunks: list[str]) -> list[Delta]:
    out: list[Delta] = []
    for chunk in chunks:
        out += p.push(chunk)
    return out + p.finish()


# -- qwen ------------------------------------------------------------------------------------


QWEN_ONE = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
QWEN_TWO = QWEN_ONE + '\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'


def test_qwen_one_call_and_content_before_it() -> None:
    assert parse("qwen", "Let me check.\n" + QWEN_ONE) == (
        "Let me check.\n",
        [("get_weather", {"city": "Paris", "unit": "celsius"})],
    )
    content, calls = parser("qwen").parse(QWEN_ONE)
    assert content == "" and calls[0] == ToolCall(0, "call_0", "get_weather", '{"city":"Paris","unit":"celsius"}')


def test_qwen_several_calls_and_the_whitespace_between_them_is_not_content() -> None:
    content, calls = parse("qwen", QWEN_TWO + "\n")
    assert content == ""
    assert calls == [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "CET"})]


def test_qwen_text_after_a_call_is_content() -> None:
    assert parse("qwen", QWEN_ONE + "\n\nDone.")[0] == "\n\nDone."


def test_qwen_no_call_is_all_content() -> None:
    text = "The weather is <b>nice</b>; <tool_ is not a tag."
    assert parse("qwen", text) == (text, [])


def test_qwen_aliases_are_the_same_format() -> None:
    for name in ("qwen2.5", "qwen3"):
        assert parse(name, QWEN_ONE) == parse("qwen", QWEN_ONE)


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>not json at all</tool_call>",
        '<tool_call>\n{"city": "Paris"}\n</tool_call>',  # no name: an object, not a call
        '<tool_call>\n{"name": 42, "arguments": {}}\n</tool_call>',
        "<tool_call>\n{",  # cut off before a name
    ],
)
def test_qwen_a_tag_that_never_becomes_a_call_is_given_back_as_content(text: str) -> None:
    assert parse("qwen", text) == (text, [])


def test_qwen_a_call_broken_after_its_name_keeps_what_was_valid_and_drops_the_rest() -> None:
    content, calls = parser("qwen").parse('<tool_call>\n{"name": "f", "arguments": {"a": 1} oops}\n</tool_call>after')
    assert content == "after" and calls[0].name == "f" and calls[0].arguments == '{"a":1}'
    # cut off mid-arguments (max_tokens): the arguments so far, as OpenAI streams them
    content, calls = parser("qwen").parse('<tool_call>\n{"name": "f", "arguments": {"a": [1, {"b"')
    assert content == "" and calls[0].arguments == '{"a":[1,{"b"'


def test_qwen_arguments_forms() -> None:
    # a string holding a JSON object is unwrapped; "parameters" is taken for "arguments"; none is {}
    assert parse("qwen", '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')[1] == [("f", {"a": 1})]
    assert parse("qwen", '<tool_call>{"name": "f", "parameters": {"a": 1}}</tool_call>')[1] == [("f", {"a": 1})]
    assert parse("qwen", '<tool_call>{"name": "f"}</tool_call>')[1] == [("f", {})]
    assert parse("qwen", '<tool_call>{"name": "f", "arguments": null}</tool_call>')[1] == [("f", {})]
    # the name may come after the arguments
    assert parse("qwen", '<tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call>')[1] == [("f", {"a": 1})]


def test_arguments_are_compact_json_with_strings_kept_and_raw_control_characters_escaped() -> None:
    _, calls = parser("qwen").parse('<tool_call>{"name": "f", "arguments": {"s": "a\\u00e9 b\n", "n": -1.5e3}}</tool_call>')
    assert calls[0].arguments == '{"s":"a\\u00e9 b\\n","n":-1.5e3}'
    assert json.loads(calls[0].arguments) == {"s": "aé b\n", "n": -1500.0}


def test_a_call_to_a_tool_the_request_did_not_offer_stays_content() -> None:
    text = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    assert parse("qwen", text, tools=["get_weather"]) == (text, [])
    assert parse("qwen", QWEN_ONE, tools=["get_weather"])[1][0][0] == "get_weather"


def test_the_streamed_shape_is_openais() -> None:
    p = parser("qwen")
    deltas = stream(p, ["Hi <tool", '_call>\n{"name": "get_weather", "argu', 'ments": {"city": "Pa', 'ris"}}\n</tool_call>'])
    assert deltas[0] == ContentDelta("Hi ")
    first = deltas[1]
    assert isinstance(first, ToolCallDelta)
    assert first.to_openai() == {
        "index": 0,
        "id": "call_0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    rest = [d for d in deltas[2:] if isinstance(d, ToolCallDelta)]
    assert len(rest) == len(deltas) - 2 and all(d.name is None and d.id is None and d.index == 0 for d in rest)
    assert [d.to_openai() for d in rest] == [
        {"index": 0, "function": {"arguments": '{"city":"Pa'}},
        {"index": 0, "function": {"arguments": 'ris"}'}},
    ]
    assert fold(deltas).tool_calls == [ToolCall(0, "call_0", "get_weather", '{"city":"Paris"}')]


def test_text_is_held_back_only_while_it_could_still_be_a_call() -> None:
    p = parser("qwen")
    assert p.push("Hello") == [ContentDelta("Hello")]
    assert p.push(" <tool") == [ContentDelta(" ")]  # "<tool" may be the tag's start
    assert p.push("box>") == [ContentDelta("<toolbox>")]  # it was not
    assert p.push("<tool_call>\n{") == []  # a call, perhaps: held until its name is known
    assert p.push('"name": "f"') == [ToolCallDelta(0, "", "call_0", "f")]
    assert p.push(', "arguments": {"a"') == [ToolCallDelta(0, '{"a"')]
    assert p.finish() == []  # cut off: the call ends with what it had


def test_parse_is_the_folded_stream_and_leaves_the_parser_alone() -> None:
    p = parser("qwen")
    text = "a" + QWEN_TWO + "b"
    content, calls = p.parse(text)
    folded = fold(stream(p, [text[i : i + 3] for i in range(0, len(text), 3)]))
    assert folded.content == content == "ab"
    assert [(c.name, c.arguments) for c in folded.tool_calls] == [(c.name, c.arguments) for c in calls]  # ids: one source
    with pytest.raises(RuntimeError):
        p.push("more")


def test_ids_are_openai_shaped_by_default() -> None:
    call_id = new_call_id()
    assert call_id.startswith("call_") and len(call_id) == 29 and call_id != new_call_id()
    _, calls = tool_parser_for("qwen").parse(QWEN_TWO)
    assert calls[0].id != calls[1].id and all(c.id.startswith("call_") for c in calls)


# -- json --------------------------------------------------------------------------------------


def test_json_one_object_or_an_array_of_them() -> None:
    assert parse("json", '{"name": "f", "arguments": {"a": 1}}') == ("", [("f", {"a": 1})])
    text = ' [{"name": "f", "parameters": {"a": 1}}, {"name": "g", "arguments": {}}]\nDone.'
    assert parse("json", text) == ("\nDone.", [("f", {"a": 1}), ("g", {})])


def test_json_that_is_not_a_call_is_content() -> None:
    for text in ['{"answer": 42}', "[1, 2, 3]", "[]", "Sure: " + '{"name": "f"}', '{"name": "f", "arguments": {}']:
        content, calls = parser("json").parse(text)
        if text.startswith('{"name"'):
            assert calls and calls[0].arguments == "{}"  # cut off before its closing brace: a call
        else:
            assert (content, calls) == (text, [])


def test_json_an_element_that_is_not_a_call_ends_the_calls() -> None:
    assert parse("json", '[{"name": "f"}, {"other": 1}]') == ('{"other": 1}]', [("f", {})])


# -- llama -------------------------------------------------------------------------------------


def test_llama_python_tag_and_content_before_it() -> None:
    text = 'Let me look.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert parse("llama", text) == ("Let me look.", [("get_weather", {"city": "Paris"})])


def test_llama_bare_json_and_several_calls_separated_by_semicolons() -> None:
    text = '{"name": "f", "parameters": {"a": 1}}; {"name": "g", "parameters": {"b": 2}}'
    assert parse("llama", text) == ("", [("f", {"a": 1}), ("g", {"b": 2})])
    assert parse("llama", '<|python_tag|>{"name": "f", "parameters": {}};{"name": "g", "arguments": {}}')[1] == [
        ("f", {}),
        ("g", {}),
    ]


def test_llama_no_call() -> None:
    for text in ['The JSON is {"name": "f"}.', '{"result": 1}', "<|python_tag|>print(1)"]:
        assert parse("llama", text) == (text, [])


# -- mistral -----------------------------------------------------------------------------------


def test_mistral_array_after_the_marker() -> None:
    text = 'Sure.[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}] Done.'
    assert parse("mistral", text) == ("Sure. Done.", [("f", {"a": 1}), ("g", {})])


def test_mistral_single_object_and_no_call() -> None:
    assert parse("mistral", '[TOOL_CALLS] {"name": "f", "arguments": {}}') == ("", [("f", {})])
    for text in ["A [link](x) and [TOOL_ nothing", "[TOOL_CALLS] oops", '[TOOL_CALLS] [{"a": 1}]']:
        assert parse("mistral", text) == (text, [])


def test_mistral_garbage_after_a_call_is_content() -> None:
    assert parse("mistral", '[TOOL_CALLS] [{"name": "f", "arguments": {}}, garbage]') == (" garbage]", [("f", {})])


# -- pythonic ----------------------------------------------------------------------------------


def test_pythonic_call_list_with_literals() -> None:
    text = '[get_weather(city="Paris", days=3, units=celsius), ping()]'
    assert parse("pythonic", text) == ("", [("get_weather", {"city": "Paris", "days": 3, "units": "celsius"}), ("ping", {})])
    text = "Sure! <|python_start|>[f(x=[1, -2.5, {'k': None, 1: True}], y=(1, 'a'))]<|python_end|> done"
    assert parse("pythonic", text) == ("Sure!  done", [("f", {"x": [1, -2.5, {"k": None, "1": True}], "y": [1, "a"]})])


@pytest.mark.parametrize(
    "text",
    [
        "[f(1)]",  # positional
        "[f(**kw)]",
        "[f(a=g())]",  # not a literal: never evaluated
        "[f(a=__import__('os').system('true'))]",
        "[f(a=1e999)]",  # inf: not JSON
        "[f(a=f'{x}')]",
        "[f(a=1) + 1]",
        "see [the docs](https://x) [1, 2]",
        "[f(a=1)",  # never closed
    ],
)
def test_pythonic_what_is_not_a_literal_call_list_is_content(text: str) -> None:
    assert parse("pythonic", text) == (text, [])


def test_pythonic_brackets_in_strings_and_unknown_tools() -> None:
    assert parse("pythonic", '[f(a=\']\', b="""x)]""")]') == ("", [("f", {"a": "]", "b": "x)]"})])
    assert parse("pythonic", "[g(a=1)]", tools=["f"]) == ("[g(a=1)]", [])


def test_pythonic_streams_each_call_whole_when_the_list_closes() -> None:
    p = parser("pythonic")
    assert p.push("[f(a=") == []
    assert p.push("1), g(") == []
    assert p.push(")] ok") == [
        ToolCallDelta(0, '{"a":1}', "call_0", "f"),
        ToolCallDelta(1, "{}", "call_1", "g"),
        ContentDelta(" ok"),
    ]


# -- deepseek ----------------------------------------------------------------------------------


def ds_v3(name: str, args: str) -> str:
    return f"{DS_CALL}function{DS_SEP}{name}\n```json\n{args}\n```{DS_CALL_END}"


def test_deepseek_v3_calls_with_content_before_and_after() -> None:
    call = ds_v3("get_weather", '{"location": "Tokyo", "units": "celsius"}')
    text = f"Let me help you with that.\n{DS_BEGIN}{call}{DS_END}\nThe weather in Tokyo is..."
    assert parse("deepseek", text) == (
        "Let me help you with that.\n\nThe weather in Tokyo is...",
        [("get_weather", {"location": "Tokyo", "units": "celsius"})],
    )
    calls = ds_v3("search", '{"query": "rust"}') + "\n" + ds_v3("translate", '{"text": "Hi", "to": "ja"}')
    text = f"{DS_BEGIN}\n{calls}\n{DS_END}"
    assert parse("deepseek", text) == ("", [("search", {"query": "rust"}), ("translate", {"text": "Hi", "to": "ja"})])


def test_deepseek_v3_streams_the_reference_chunks() -> None:
    chunks = [
        f"{DS_BEGIN}{DS_CALL}",
        f"function{DS_SEP}get_weather\n",
        "```json\n",
        '{"location": ',
        '"Beijing", ',
        '"units": "metric"}',
        f"\n```{DS_CALL_END}{DS_END}",
    ]
    deltas = stream(parser("deepseek"), chunks)
    assert deltas[0] == ToolCallDelta(0, "", "call_0", "get_weather")
    assert fold(deltas).tool_calls[0].arguments == '{"location":"Beijing","units":"metric"}'


def test_deepseek_non_object_arguments_are_wrapped_and_broken_heads_are_content() -> None:
    assert parse("deepseek", f"{DS_BEGIN}{ds_v3('f', '[1, 2]')}{DS_END}")[1] == [("f", {"value": [1, 2]})]
    text = f"{DS_BEGIN}{DS_CALL}garbage{DS_SEP}x{DS_CALL_END}{DS_END}"
    content, calls = parser("deepseek").parse(text)
    assert calls == [] and content.startswith(DS_BEGIN + DS_CALL + "garbage")


def test_deepseek31() -> None:
    text = (
        f'Hi{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}{{"location": "Tokyo"}}{DS_CALL_END}{DS_CALL}f{DS_SEP}{{}}{DS_CALL_END}{DS_END}'
    )
    assert parse("deepseek31", text) == ("Hi", [("get_weather", {"location": "Tokyo"}), ("f", {})])


def test_passthrough_and_plain_parse_nothing() -> None:
    for name in ("passthrough", "plain"):
        assert parse(name, QWEN_ONE) == (QWEN_ONE, [])


def test_no_parser_raises_on_model_output() -> None:
    nasty = [
        "",
        "{" * 5000,
        "[" * 5000 + "f(",
        "<tool_call>" + "{" * 300,
        '{"name": "' + "x" * 1000 + '"}',
        "\x00\ud800",
        DS_CALL * 3,
    ]
    for name in TOOL_PARSERS:
        for text in nasty:
            parser(name).parse(text)


# -- reasoning ---------------------------------------------------------------------------------


def split(name: str, text: str, in_reasoning: bool | None = None) -> tuple[str, str]:
    return reasoning_parser_for(name, in_reasoning=in_reasoning).parse(text)


def test_base_reasoning_block_and_content() -> None:
    assert split("base", "<think>with reasoning</think> and more text.") == ("with reasoning", " and more text.")
    assert split("base", "no reasoning here") == ("", "no reasoning here")
    assert split("base", "<think>truncated reasoning") == ("truncated reasoning", "")


def test_deepseek_r1_starts_inside_the_block() -> None:
    assert split("deepseek_r1", "step by step</think>\n\nThe answer is 4.") == ("step by step", "\n\nThe answer is 4.")
    assert split("deepseek_r1", "<think>\nrepeated tag</think>x") == ("\nrepeated tag", "x")
    assert split("deepseek_r1", "never closed") == ("never closed", "")


def test_qwen3_think_tags_are_optional_and_the_prompt_may_have_opened_the_block() -> None:
    assert split("qwen3", "<think>\nhmm\n</think>\n\nHi") == ("\nhmm\n", "\n\nHi")
    assert split("qwen3", "Hi, no thinking") == ("", "Hi, no thinking")
    assert split("qwen3", "hmm</think>Hi", in_reasoning=True) == ("hmm", "Hi")
    p = reasoning_parser_for("qwen3")
    p.mark_reasoning_started()
    assert p.parse("hmm</think>Hi") == ("hmm", "Hi")
    assert split("qwen3_thinking", "hmm</think>Hi") == ("hmm", "Hi")


def test_one_block_only_and_text_before_the_tag_is_content() -> None:
    assert split("base", "pre <think>mid</think> post <think>not again</think>") == ("mid", "pre  post <think>not again</think>")


def test_other_tags() -> None:
    assert split("kimi", "◁think▷k◁/think▷answer") == ("k", "answer")
    assert split("cohere_cmd", "<|START_THINKING|>c<|END_THINKING|>answer") == ("c", "answer")
    assert split("passthrough", "<think>x</think>y") == ("", "<think>x</think>y")
    assert split("plain", "<think>x</think>y", in_reasoning=True) == ("", "<think>x</think>y")


def test_partial_tags_are_held_back_only_as_long_as_needed() -> None:
    p = reasoning_parser_for("qwen3")
    assert p.push("Hi <th") == ("", "Hi ")
    assert p.push("ere") == ("", "<there")
    assert p.push(" <think>a </th") == ("a ", " ")
    assert p.push("ink>b</thin") == ("", "b</thin")  # after the block: all content, nothing held
    q = reasoning_parser_for("deepseek_r1")
    assert q.push("a </th") == ("a ", "")
    assert q.push("inking") == ("</thinking", "")
    assert q.push("</think>") == ("", "")
    assert q.push(" done <think>") == ("", " done <think>")
    assert q.finish() == ("", "")


def test_partial_tag_at_the_end_is_flushed_by_finish() -> None:
    p = reasoning_parser_for("deepseek_r1")
    assert p.push("thinking </thi") == ("thinking ", "")
    assert p.finish() == ("</thi", "")


# -- reasoning then tools ----------------------------------------------------------------------


def test_output_parser_reads_thinking_first_and_calls_in_the_rest() -> None:
    out = OutputParser(reasoning_parser_for("qwen3"), parser("qwen"))
    text = '<think>maybe <tool_call>{"name": "no"}</tool_call></think>\n\n' + QWEN_ONE
    parsed = out.parse(text)
    assert parsed.reasoning == 'maybe <tool_call>{"name": "no"}</tool_call>'
    assert parsed.content == "\n\n" and [c.name for c in parsed.tool_calls] == ["get_weather"]
    deltas = stream_output(out, [text[i : i + 5] for i in range(0, len(text), 5)])
    assert isinstance(deltas[0], ReasoningDelta)
    folded = fold(deltas)
    assert (folded.reasoning, folded.content) == (parsed.reasoning, parsed.content)
    assert [(c.name, c.arguments) for c in folded.tool_calls] == [(c.name, c.arguments) for c in parsed.tool_calls]


def stream_output(p: OutputParser, chunks: list[str]) -> list[Delta]:
    out: list[Delta] = []
    for chunk in chunks:
        out += p.push(chunk)
    return out + p.finish()


# -- registry ----------------------------------------------------------------------------------


def _choices(flag: str) -> tuple[str, ...]:
    return next(f.choices for f in reference_flags() if flag in f.names)


def test_the_name_lists_are_the_references() -> None:
    assert _choices("--tool-call-parser") == REFERENCE_TOOL_PARSERS
    assert _choices("--reasoning-parser") == REFERENCE_REASONING_PARSERS
    assert set(TOOL_PARSERS) <= set(REFERENCE_TOOL_PARSERS)
    assert set(REASONING_CONFIGS) <= set(REFERENCE_REASONING_PARSERS)


@pytest.mark.parametrize("name", REFERENCE_TOOL_PARSERS)
def test_every_reference_tool_parser_name_is_implemented_or_refused(name: str) -> None:
    if name in TOOL_PARSERS:
        assert isinstance(tool_parser_for(name), ToolParser)
    else:
        with pytest.raises(UnsupportedParser, match="not supported by smg"):
            tool_parser_for(name)


@pytest.mark.parametrize("name", REFERENCE_REASONING_PARSERS)
def test_every_reference_reasoning_parser_name_is_implemented_or_refused(name: str) -> None:
    if name in REASONING_CONFIGS:
        assert isinstance(reasoning_parser_for(name), ReasoningParser)
    else:
        with pytest.raises(UnsupportedParser, match="not supported by smg"):
            reasoning_parser_for(name)


def test_required_formats_are_implemented_and_unknown_names_are_unknown() -> None:
    assert {"json", "qwen", "llama", "mistral", "pythonic", "deepseek"} <= set(TOOL_PARSERS)
    assert {"deepseek_r1", "qwen3", "base"} <= set(REASONING_CONFIGS)
    with pytest.raises(UnknownParser, match="unknown"):
        check_tool_parser("hermes")
    with pytest.raises(ValueError, match="unknown"):
        reasoning_parser_for("think_harder")


@pytest.mark.parametrize(
    ("model", "tool", "reasoning"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "qwen", "qwen3"),
        ("Qwen/Qwen3-8B", "qwen", "qwen3"),
        ("Qwen/Qwen3-30B-A3B-Thinking-2507", "qwen", "qwen3"),
        ("qwen3-thinking-mini", "qwen", "qwen3_thinking"),
        ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen_xml", "qwen3"),
        ("deepseek-ai/DeepSeek-R1", "pythonic", "deepseek_r1"),
        ("deepseek-ai/DeepSeek-V3-0324", "deepseek", None),
        ("deepseek-ai/DeepSeek-V3.1", "deepseek31", "deepseek_v31"),
        ("meta-llama/Llama-3.2-3B-Instruct", "llama", None),
        ("meta-llama/Llama-3.1-8B-Instruct", "json", None),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "pythonic", None),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral", None),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mistral", None),
        ("moonshotai/Kimi-K2-Instruct", "kimik2", "kimi"),
        ("gpt-4o-mini", "json", None),
        ("sim-model", None, None),
    ],
)
def test_defaults_from_the_model_id_are_the_references(model: str, tool: str | None, reasoning: str | None) -> None:
    assert default_tool_parser(model) == tool
    assert default_reasoning_parser(model) == reasoning


def test_resolving_a_parser_for_a_request() -> None:
    assert isinstance(resolve_tool_parser(None, "Qwen/Qwen3-8B", tools=["f"]), ToolParser)
    assert resolve_tool_parser(None, "Qwen/Qwen3-Coder-30B") is None  # the reference's default is not smg's
    assert resolve_tool_parser(None, "sim-model") is None
    assert resolve_tool_parser("pythonic", "Qwen/Qwen3-8B").name == "pythonic"  # type: ignore[union-attr]
    reasoning = resolve_reasoning_parser(None, "deepseek-ai/DeepSeek-R1")
    assert reasoning is not None and reasoning.name == "deepseek_r1" and reasoning.in_reasoning
    assert resolve_reasoning_parser(None, "moonshotai/Kimi-K3") is None
    with pytest.raises(UnsupportedParser):
        resolve_tool_parser("qwen_xml", "x")


# -- hostile output: deep nesting, long streams, lone surrogates --------------------------------


@pytest.mark.parametrize(
    ("name", "head", "tail"),
    [
        ("qwen", '<tool_call>{"name": "f", "arguments": "', '"}</tool_call>'),
        ("mistral", '[TOOL_CALLS] [{"name": "f", "arguments": "', '"}]'),
        ("json", '{"name": "f", "arguments": "', '"}'),
        ("llama", '<|python_tag|>{"name": "f", "arguments": "', '"}'),
    ],
)
def test_a_string_argument_nested_past_the_stack_is_kept_as_written(name: str, head: str, tail: str) -> None:
    inner = "[" * 100_000
    text = head + inner + tail
    for calls in (parser(name).parse(text)[1], fold(stream(parser(name), [head, inner, tail])).tool_calls):
        assert [(call.name, call.arguments) for call in calls] == [("f", f'"{inner}"')]


_LONG = 20_000


@pytest.mark.parametrize(
    ("name", "chunks"),
    [
        ("json", [" "] * _LONG),
        ("json", ['[{"name": "f"}', *[" "] * _LONG]),
        ("llama", [" "] * _LONG),
        ("llama", ["<|python_tag|>", *[" "] * _LONG]),
        ("mistral", ["[TOOL_CALLS]", *[" "] * _LONG]),
        ("mistral", ['[TOOL_CALLS][{"name": "f"},', *[" "] * _LONG]),
        ("qwen", ['<tool_call>{"name": "f"}', *[" "] * _LONG]),
        ("qwen", ['<tool_call>{"arguments": "', *["xxxxxxxxxxxxxxxxxxxx"] * _LONG]),
        ("json", ['{"arguments": {"a": "', *["xxxxxxxxxxxxxxxxxxxx"] * _LONG]),
        ("pythonic", ["[", *[" "] * _LONG]),
        ("pythonic", ['[f(a="""', *["xxxxxxxxxxxxxxxxxxxx"] * _LONG]),
        ("deepseek", ["x"] * _LONG),
    ],
)
def test_a_long_stream_of_small_pieces_takes_linear_time(name: str, chunks: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Structurally: whitespace is examined a bounded number of times overall, and held text
    already scanned is set aside rather than copied on every push; and, loosely, by the clock."""
    scanned = 0
    real_skip_ws = base_module.skip_ws

    def counting_skip_ws(buf: str, pos: int) -> int:
        nonlocal scanned
        end = real_skip_ws(buf, pos)
        scanned += end - pos + 1
        return end

    monkeypatch.setattr(base_module, "skip_ws", counting_skip_ws)
    for module in (json_calls_module, llama_module, mistral_module, qwen_module, sequence_module):
        if hasattr(module, "skip_ws"):
            monkeypatch.setattr(module, "skip_ws", counting_skip_ws)
    p = parser(name)
    longest = 0
    for chunk in chunks:
        p.push(chunk)
        longest = max(longest, len(p._buf))
    p.finish()
    total = sum(map(len, chunks))
    assert scanned <= 3 * (total + len(chunks))
    if name != "pythonic" and not chunks[-1].isspace():  # held text is set aside; whitespace a format waits on is kept
        assert longest <= 3 * 4096


def test_pythonic_one_shot_parse_of_a_long_triple_quoted_argument() -> None:
    value = "x" * 800_000  # 7.5 s when every character copied the rest of the buffer
    content, calls = parser("pythonic").parse(f'[f(a="""{value}""")]')
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": value})]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("qwen", '<tool_call>{"name": "f", "arguments": "{\\"a\\": \\"x\\\\ud800y\\\\ud83d\\\\ude00\\"}"}</tool_call>'),
        ("json", '{"name": "f", "arguments": "{\\"a\\": \\"x\\\\ud800y\\\\ud83d\\\\ude00\\"}"}'),
        ("pythonic", '[f(a="x\\ud800y\\U0001F600")]'),
    ],
)
def test_arguments_with_lone_surrogate_escapes_stay_utf8_encodable(name: str, text: str) -> None:
    _, calls = parser(name).parse(text)
    assert [c.name for c in calls] == ["f"]
    arguments = calls[0].arguments
    arguments.encode("utf-8")
    assert json.loads(arguments) == {"a": "x\ud800y\U0001f600"}
    assert "\\ud800" in arguments and "\U0001f600" in arguments  # the pair is kept as written
