"""smg.tokenization.chat_template: Hugging Face's apply_chat_template semantics (sandbox,
trim_blocks/lstrip_blocks, raise_exception, strftime_now, tojson, loop controls, special tokens,
tools), the reference's message preparation, and the bounds on runaway templates.

The expected prompts are written out by hand from the templates' text, the way HF's Jinja
environment renders them; the shipped ChatML template is the simulated worker's."""

from __future__ import annotations

import json
import time
import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from smg.tokenization.chat_template import (
    ChatTemplate,
    ChatTemplateError,
    MessagesError,
    MultimodalContentError,
    NoChatTemplateError,
    RenderLimits,
    apply_chat_template,
    compile_chat_template,
    prepare_messages,
    select_chat_template,
    tokenize_chat,
)
from smg.tokenization.loader import ModelTokenizer, load_model_tokenizer

SIM_MODEL = Path(__file__).resolve().parents[2] / "smg" / "simworker" / "model"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def render(source: str, messages: list[dict[str, Any]] | None = None, **options: Any) -> str:
    return compile_chat_template(source).render(messages or [], **options)


@pytest.fixture(scope="module")
def sim() -> ModelTokenizer:
    return load_model_tokenizer(SIM_MODEL)


# -- the shipped ChatML template -----------------------------------------------------------------


def test_chatml_plain_conversation(sim: ModelTokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Weather?"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWeather?<|im_end|>\n"
    )
    assert apply_chat_template(sim, messages) == expected
    assert apply_chat_template(sim, messages, add_generation_prompt=True) == expected + "<|im_start|>assistant\n"
    assert (
        apply_chat_template(sim, messages[1:2], add_generation_prompt=True)
        == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_enable_thinking_false_adds_an_empty_think_block(sim: ModelTokenizer) -> None:
    prompt = apply_chat_template(
        sim, [{"role": "user", "content": "Hi"}], add_generation_prompt=True, template_kwargs={"enable_thinking": False}
    )
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    thinking = apply_chat_template(
        sim, [{"role": "user", "content": "Hi"}], add_generation_prompt=True, template_kwargs={"enable_thinking": True}
    )
    assert thinking == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_chatml_with_tools_calls_and_results(sim: ModelTokenizer) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": "snow"},
    ]
    tool_json = (
        '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
    )
    expected = (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\n"
        "You may call the functions below to help with the request. Their signatures are inside <tools></tools>:\n"
        f"<tools>\n{tool_json}\n</tools>\n\n"
        "To call a function, write a JSON object with its name and arguments inside <tool_call></tool_call> tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris and Oslo?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nsnow\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert apply_chat_template(sim, messages, tools=[WEATHER_TOOL], add_generation_prompt=True) == expected


def test_chatml_tools_without_a_system_message(sim: ModelTokenizer) -> None:
    prompt = apply_chat_template(sim, [{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL])
    assert prompt.startswith("<|im_start|>system\n# Tools\n\n") and prompt.endswith(
        "</tool_call><|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_chatml_assistant_text_then_call_and_unknown_role(sim: ModelTokenizer) -> None:
    call = {"id": "a", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    prompt = apply_chat_template(sim, [{"role": "assistant", "content": "Let me check.", "tool_calls": [call]}])
    assert (
        prompt
        == '<|im_start|>assistant\nLet me check.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|im_end|>\n'
    )
    with pytest.raises(ChatTemplateError, match="unknown role: critic"):
        apply_chat_template(sim, [{"role": "critic", "content": "x"}])


def test_chat_prompt_ids_add_no_special_tokens(sim: ModelTokenizer) -> None:
    text, ids = tokenize_chat(sim, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    im_start, im_end = sim.token_to_id("<|im_start|>"), sim.token_to_id("<|im_end|>")
    assert im_start is not None and im_end is not None
    assert ids == sim.encode(text, add_special_tokens=False)
    assert ids[0] == im_start and ids.count(im_start) == 2 and ids.count(im_end) == 1
    assert sim.decode(ids, skip_special_tokens=False) == text


# -- Llama 3 and Mistral style templates, as HF renders them ---------------------------------------

LLAMA3 = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{{- 'Cutting Knowledge Date: December 2023\\n' }}
{{- 'Today Date: ' + strftime_now('%d %b %Y') + '\\n\\n' }}
{{- system_message }}
{{- '<|eot_id|>' }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL = """\
{{- bos_token }}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '[INST] ' + message['content'] + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}
"""


def test_llama3_style_template() -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant.  "},
        {"role": "user", "content": " What is 2+2? "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Thanks"},
    ]
    prompt = render(
        LLAMA3,
        messages,
        add_generation_prompt=True,
        special_tokens={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        now=datetime(2025, 3, 9, 14, 30),
    )
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 09 Mar 2025\n\n"
        "You are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nThanks<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # without a clock, strftime_now reads a fixed day: rendering stays a pure function
    assert "Today Date: 26 Jul 2024\n" in render(LLAMA3, messages[1:], special_tokens={"bos_token": "<|begin_of_text|>"})


def test_mistral_style_template() -> None:
    tokens = {"bos_token": "<s>", "eos_token": "</s>"}
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    assert render(MISTRAL, messages, special_tokens=tokens) == "<s>[INST] Hi [/INST]Hello!</s>[INST] How are you? [/INST]"
    with pytest.raises(
        ChatTemplateError, match=r"^Conversation roles must alternate user/assistant/user/assistant/\.\.\.$"
    ) as caught:
        render(MISTRAL, [{"role": "assistant", "content": "Hi"}], special_tokens=tokens)
    assert caught.value.code == "chat_template_error"


def test_trim_blocks_lstrip_blocks_and_the_trailing_newline() -> None:
    source = (
        "{% for message in messages %}\n"
        "    {% if message.role == 'user' %}\n"
        "User: {{ message.content }}\n"
        "    {% else %}\n"
        "Bot: {{ message.content }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
    )
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert render(source, messages) == "User: Hi\nBot: Hello\n"
    assert render("{{ 'a' }}\n") == "a"  # Jinja drops one trailing newline; HF keeps that default


# -- HF's environment: globals, filters, extensions ------------------------------------------------


def test_tojson_is_hf_s() -> None:
    assert render("{{ {'b': 'é<&>\\'', 'a': [1, 2]} | tojson }}") == """{"b": "é<&>'", "a": [1, 2]}"""
    assert render("{{ {'b': 1, 'a': 2} | tojson(indent=2, sort_keys=true) }}") == '{\n  "a": 2,\n  "b": 1\n}'
    assert render("{{ 'é' | tojson(ensure_ascii=true) }}") == '"\\u00e9"'
    assert render("{{ [1, 2] | tojson(separators=(',', ':')) }}") == "[1,2]"


def test_loop_controls_and_generation_tag() -> None:
    assert (
        render(
            "{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}"
        )
        == "13"
    )
    assert render("{% generation %}kept{% endgeneration %}") == "kept"
    assert render("{% for x in [3, 1, 2] if x > 1 %}{{ loop.index }}{{ x }}{{ '.' if loop.last }}{% endfor %}") == "1322."
    tree = "{% for n in [{'v': 1, 'c': [{'v': 2, 'c': []}]}] recursive %}{{ n.v }}{{ loop(n.c) }}{% endfor %}"
    assert render(tree) == "12"


def test_context_variables() -> None:
    assert render("{{ tools is none }} {{ documents is none }} {{ add_generation_prompt }}") == "True True False"
    assert render("{{ tools | length }}", tools=[]) == "0"
    assert (
        render(
            "{{ bos_token }}{{ eos_token }}{{ x }}",
            special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
            template_kwargs={"x": 1, "eos_token": "E"},
        )
        == "<s>E1"
    )
    # the request's kwargs do not replace the four names HF passes first
    assert (
        render(
            "{{ messages | length }}{{ add_generation_prompt }}",
            [{"role": "user", "content": "a"}],
            template_kwargs={"messages": [], "add_generation_prompt": True},
        )
        == "1False"
    )
    assert render("{{ undefined_thing }}|{{ undefined_thing is defined }}") == "|False"  # Jinja's default Undefined, as HF
    with pytest.raises(ChatTemplateError, match="'undefined_thing' is undefined"):
        render("{{ undefined_thing.attr }}")


def test_sandbox_refuses_internals_and_mutation() -> None:
    assert render("{{ ''.__class__ }}") == ""  # an unsafe attribute is undefined, as in HF
    with pytest.raises(ChatTemplateError, match="unsafe"):
        render("{{ ''.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError, match="unsafe"):
        render("{{ messages.append(1) }}")
    with pytest.raises(ChatTemplateError, match="unsafe"):
        render("{{ cycler.__init__.__globals__ }}")
    assert render("{% set ns = namespace(n=0) %}{% for x in [1, 2] %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}") == "3"


def test_render_errors_are_chat_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="ZeroDivisionError"):
        render("{{ 1 / 0 }}")
    with pytest.raises(ChatTemplateError, match=r"^chat template syntax error at line 2: "):
        ChatTemplate("ok\n{% if x %}")
    with pytest.raises(ChatTemplateError, match="syntax error"):
        ChatTemplate("{% endgeneration %}")
    with pytest.raises(ChatTemplateError):
        render("{{ messages[0].content + 1 }}", [{"role": "user", "content": "a"}])
    assert compile_chat_template("{{ 1 }}") is compile_chat_template("{{ 1 }}")


# -- bounds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed|steps"),
        ("{% for n in [1] recursive %}{{ loop([1]) }}{% endfor %}", "recursed|steps"),
        ("{{ 'x' * 10 ** 9 }}", "repetition"),
        ("{{ [0] * 10 ** 9 }}", "repetition"),
        ("{{ 2 ** (10 ** 9) }}", "integer"),
        ("{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}", "integer"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "longer"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "longer"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s | replace('a', ns.s) %}{% endfor %}",
            "replace",
        ),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s.replace('a', ns.s) %}{% endfor %}",
            "replace",
        ),
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = [ns.s, ns.s] | join %}{% endfor %}", "longer"),
        ("{{ 'x' | center(10 ** 9) }}", "width"),
        ("{{ 'x' | indent(10 ** 9) }}", "width"),
        ("{{ 'x'.ljust(10 ** 9) }}", "width"),
        ("{{ '%0999999999d' % 1 }}", "format field"),
        ("{{ '%*d' % (999999999, 1) }}", "width"),
        ("{{ '%0999999999d' | format(1) }}", "format field"),
        ("{{ '{:>999999999}'.format(1) }}", "format field"),
        ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output exceeds"),
    ],
)
def test_runaway_templates_are_stopped(source: str, message: str) -> None:
    limits = RenderLimits(max_chars=1_000_000, max_steps=200_000, max_int_bits=4096)
    start = time.process_time()
    with pytest.raises(ChatTemplateError, match=message):
        render(source, limits=limits)
    assert time.process_time() - start < 5  # bounded, whatever the machine (not a benchmark)


def test_default_limits_let_real_prompts_through(sim: ModelTokenizer) -> None:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 2000} for i in range(400)]
    prompt = apply_chat_template(sim, messages, tools=[WEATHER_TOOL] * 50, add_generation_prompt=True)
    assert len(prompt) > 400 * 10_000


# -- messages ------------------------------------------------------------------------------------


def test_text_parts_are_joined_for_string_templates() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]}]
    assert render("{{ messages[0].content }}", messages) == "Hello world"  # a space, as the reference joins them
    assert render("{{ messages[0].content }}", [{"role": "user", "content": []}]) == ""


def test_templates_that_iterate_content_get_the_parts() -> None:
    source = "{% for m in messages %}{% for part in m['content'] %}[{{ part.type }}:{{ part.text }}]{% endfor %}{% endfor %}"
    template = compile_chat_template(source)
    assert template.content_format == "openai"
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert template.render(messages) == "[text:a][text:b]"
    assert (
        compile_chat_template(
            "{% for m in messages %}{% set c = m.content %}{% for p in c|list %}{{ p.text }}{% endfor %}{% endfor %}"
        ).content_format
        == "openai"
    )
    assert compile_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}").content_format == "string"


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}},
        {"type": "file", "file": {"file_id": "f"}},
    ],
)
def test_multimodal_parts_are_refused(sim: ModelTokenizer, part: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    with pytest.raises(MultimodalContentError, match=r"^multi-modal content is not supported in gRPC mode yet$") as caught:
        apply_chat_template(sim, messages)
    assert caught.value.part_type == part["type"] and isinstance(caught.value, MessagesError)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "user", "content": [{"type": "mystery"}]}], "unsupported type 'mystery'"),
        ([{"content": "no role"}], r"messages\[0\]\.role"),
        (["not an object"], r"messages\[0\] must be an object"),
        ([{"role": "user", "content": 5}], "must be a string or a list"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}]}], "not valid JSON"),
        ([{"role": "assistant", "tool_calls": "f"}], "tool_calls must be a list"),
    ],
)
def test_bad_messages(messages: list[Any], message: str) -> None:
    with pytest.raises(MessagesError, match=message) as caught:
        render("{{ messages }}", messages)
    assert caught.value.code == "process_messages_failed"


def test_prepare_messages_leaves_the_request_alone() -> None:
    call = {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": [1]}'}}
    original = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    snapshot = json.dumps(original)
    prepared = prepare_messages(original, "string")
    assert prepared[0]["tool_calls"][0]["function"]["arguments"] == {"x": [1]}
    assert json.dumps(original) == snapshot


def test_tools_must_be_objects() -> None:
    with pytest.raises(MessagesError, match="tools must be a list of objects"):
        render("x", tools=["get_weather"])  # a client's bad tools list


def test_continue_final_message_as_the_reference(sim: ModelTokenizer) -> None:
    messages = [{"role": "user", "content": "Count to 3"}, {"role": "assistant", "content": "1, 2,"}]
    prompt = apply_chat_template(sim, messages, continue_final_message=True)
    assert prompt == "<|im_start|>user\nCount to 3<|im_end|>\n<|im_start|>assistant\n1, 2,"


def test_template_selection() -> None:
    with pytest.raises(NoChatTemplateError):
        select_chat_template({})
    assert select_chat_template({"default": "d", "tool_use": "t"}, tools=True) == "t"
    assert select_chat_template({"default": "d", "tool_use": "t"}, tools=False) == "d"
    assert select_chat_template({"default": "d"}, tools=True) == "d"
    assert select_chat_template({"default": "d"}, name="{{ 1 }}") == "{{ 1 }}"


# -- review fixes: bytes and time bounded, errors mapped -----------------------------------------

BIG = "{% set s = 'x' * 16000000 %}"  # one value just under the default 16 Mi cap


@pytest.mark.parametrize(
    "source",
    [
        "{{ [s] * 64 }}",
        "{{ (['a'] * 64) | join(s) }}",
        "{{ s ~ [s] * 63 }}",
        "{{ s ~ s ~ s }}",
        "{{ ([1] * 64) | tojson(indent=16000000) }}",
        "{{ [s, s, s] | tojson }}",
        "{{ ('\\t' * 64).expandtabs(16000000) }}",
        "{{ '{0:{1}}'.format('x', '1000000000') }}",
        "{{ '{0}{0}{0}'.format(s) }}",
        "{{ ','.join([s, s]) }}",
        "{{ ('x' * 1000) | wordwrap(1, wrapstring='y' * 100000) }}",
        "{{ s | wordwrap(1) }}",
        "{% set ns = namespace(l=[]) %}{% for i in range(3000) %}{% set ns.l = ns.l + [[i] * 1000] %}{% endfor %}"
        "{{ ns.l | sum(start=[]) | length }}",
        "{{ [1] | batch(100000000, 0) | list }}",
        "{{ [1] | slice(100000000) | list }}",
        "{{ s | list | length }}",
        "{{ (s ~ ' ').split() | length }}{{ (('a ') * 8000000).split() | length }}",
        "{% set ns = namespace(l=[]) %}{% for i in range(100) %}{% set ns.l = ns.l + [s ~ i] %}{% endfor %}",
        "{{ range(1000) | map('center', 16000000) | list | length }}",
        "{{ s + s }}",
        "{% set l = [s] * 2 %}{{ l | string }}",
    ],
)
def test_values_are_sized_in_bytes_before_they_are_built(source: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ChatTemplateError, match=r"longer than|exceed|more than|format field"):
            render(BIG + source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 1024 * 1024  # each used 1-2 GB when only lengths were checked, after the fact


def test_a_render_has_a_deadline_on_the_clock_it_is_given() -> None:
    ticks = iter(range(1_000_000))
    limits = RenderLimits(max_seconds=100, clock=lambda: float(next(ticks)))
    with pytest.raises(ChatTemplateError, match="ran longer than 100 seconds"):
        render("{% for i in range(1000) %}{{ i }}{% endfor %}", limits=limits)
    assert render("{% for i in range(50) %}{% endfor %}ok", limits=limits) == "ok"
    # sans-IO: no clock given, no deadline (the step and byte budgets still bound a render); the
    # trio shell that renders for requests passes its monotonic clock
    assert RenderLimits().clock is None and RenderLimits().max_seconds == 2.0
    assert render("{% for i in range(50) %}{% endfor %}ok", limits=RenderLimits()) == "ok"


def test_the_guards_keep_real_uses_working() -> None:
    assert render("{{ '{0:{1}}'.format('x', '5') }}|") == "x    |"
    assert render("{{ [[1], [2, 3]] | sum(start=[]) }}") == "[1, 2, 3]"
    assert render("{{ [(1,), (2,)] | sum(start=()) }}") == "(1, 2)"
    assert render("{{ [1, 2] | sum }}") == "3"
    assert render("{{ ['a', 'b'] | join(', ') }}{{ [{'n': 'c'}] | join(attribute='n') }}") == "a, bc"
    assert render("{{ {'a': [1, 2]} | tojson(indent=2) }}") == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert render("{{ 'a b  c'.split() }}{{ 'a\\nb'.splitlines() }}{{ '-'.join(['x', 'y']) }}") == "['a', 'b', 'c']['a', 'b']x-y"
    assert render("{{ [1, 2, 3, 4] | batch(3, 0) | list }}{{ [1, 2, 3] | slice(2) | list }}") == (
        "[[1, 2, 3], [4, 0, 0]][[1, 2], [3]]"
    )
    assert render("{{ 'a b' | wordwrap(1) }}{{ '\\t'.expandtabs(2) }}|{{ [1] * 2 ~ 'x' }}") == "a\nb  |[1, 1]x"
    assert render("{% set ns = namespace(a=[1]) %}{{ ns }}").startswith("<Namespace")


@pytest.mark.parametrize(
    "source",
    [
        "{{ " + " + ".join(["'a'"] * 500) + " }}",
        "{{ 'a'" + " | upper" * 500 + " }}",
        "{{ x" + ".a" * 500 + " }}",
        "{{ " + "not " * 500 + "x }}",
    ],
)
def test_deeply_nested_templates_are_a_chat_template_error(source: str) -> None:
    with pytest.raises(ChatTemplateError, match=r"nested too deeply|does not compile") as caught:
        ChatTemplate(source)
    assert type(caught.value) is ChatTemplateError


@pytest.mark.parametrize(
    ("arguments", "message"), [("[" * 100_000, "nested too deeply"), ('{"n": ' + "1" * 5000 + "}", "not valid JSON")]
)
def test_hostile_tool_call_arguments_are_a_messages_error(arguments: str, message: str) -> None:
    messages = [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": arguments}}]}]
    with pytest.raises(MessagesError, match=message):
        render("{{ messages }}", messages)
