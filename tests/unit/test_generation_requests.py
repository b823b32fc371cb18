"""OpenAI and SGLang requests turned into engine requests (`smg.generation.requests`), with the
simulated worker's shipped tokenizer (ChatML template with tools, byte-level BPE)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from smg.generation.requests import (
    MAX_STOPS,
    PipelineOptions,
    Prepared,
    prepare_chat,
    prepare_completion,
    prepare_embedding,
    prepare_generate,
)
from smg.http.errors import GatewayError
from smg.simworker.grpc_model import load_shipped_tokenizer
from smg.tokenization.chat_template import tokenize_chat
from smg.tokenization.loader import ModelTokenizer

EOS = 3986  # <|im_end|>
ENDOFTEXT = 3984
MODEL = "sim-model"  # no parser default for this id
OPTIONS = PipelineOptions()
USER = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return load_shipped_tokenizer()


def chat(tok: ModelTokenizer, model_id: str = MODEL, options: PipelineOptions = OPTIONS, **fields: Any) -> Prepared:
    return prepare_chat({"model": "m", "messages": USER, **fields}, tok, options, model_id=model_id)


def refused(call: Any, *args: Any, **kwargs: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        call(*args, **kwargs)
    assert info.value.status == 400
    return info.value


# -- chat: templating -----------------------------------------------------------------------------


def test_chat_prompt_is_the_template_rendered_and_encoded(tok: ModelTokenizer) -> None:
    p = chat(tok)
    text, ids = tokenize_chat(tok, USER, add_generation_prompt=True)
    assert p.kind == "chat" and p.model == "m"
    assert p.engine.input_ids == ids
    assert text.endswith("<|im_start|>assistant\n")
    assert p.engine.request_id == "" and p.engine.original_text == ""
    assert not p.engine.stream and not p.engine.log_metrics


def test_tools_reach_the_template(tok: ModelTokenizer) -> None:
    with_tools = chat(tok, tools=[WEATHER])
    prompt = tok.decode(with_tools.engine.input_ids, skip_special_tokens=False)
    assert '"name": "get_weather"' in prompt and "<tools>" in prompt


def test_tool_choice_none_keeps_tools_in_the_template_but_parses_nothing(tok: ModelTokenizer) -> None:
    p = chat(tok, "Qwen3-8B", tools=[WEATHER], tool_choice="none")
    assert "get_weather" in tok.decode(p.engine.input_ids, skip_special_tokens=False)
    assert p.tool_parser is None and p.tool_function is None
    assert p.engine.sampling.json_schema is None


def test_template_kwargs_and_continue_final_message(tok: ModelTokenizer) -> None:
    off = chat(tok, chat_template_kwargs={"enable_thinking": False})
    assert tok.decode(off.engine.input_ids, skip_special_tokens=False).endswith("<think>\n\n</think>\n\n")
    messages = [*USER, {"role": "assistant", "content": "Partial ans"}]
    cont = prepare_chat({"messages": messages, "continue_final_message": True}, tok, OPTIONS, model_id=MODEL)
    assert tok.decode(cont.engine.input_ids, skip_special_tokens=False).endswith("<|im_start|>assistant\nPartial ans")
    assert cont.model == MODEL  # no model in the request: the served one


def test_options_chat_template_overrides_the_model(tok: ModelTokenizer) -> None:
    options = PipelineOptions(chat_template="{% for m in messages %}[{{ m.content }}]{% endfor %}")
    p = chat(tok, options=options)
    assert tok.decode(p.engine.input_ids) == "[Hello there]"


def test_text_parts_are_joined_and_images_refused(tok: ModelTokenizer) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]
    p = prepare_chat({"messages": [{"role": "user", "content": parts}]}, tok, OPTIONS, model_id=MODEL)
    assert p.engine.input_ids == chat(tok).engine.input_ids
    image = [{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    error = refused(prepare_chat, {"messages": [{"role": "user", "content": image}]}, tok, OPTIONS, model_id=MODEL)
    assert error.code == "process_messages_failed" and "image_url" in error.message and "gRPC" in error.message


def test_template_errors_keep_their_codes(tok: ModelTokenizer) -> None:
    bad_role = refused(prepare_chat, {"messages": [{"role": "wizard", "content": "x"}]}, tok, OPTIONS, model_id=MODEL)
    assert bad_role.code == "chat_template_error"
    no_template = ModelTokenizer(path="x", tokenizer=tok.tokenizer)
    missing = refused(prepare_chat, {"messages": USER}, no_template, OPTIONS, model_id=MODEL)
    assert missing.code == "process_messages_failed"
    bad_args = [*USER, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{nope"}}]}]
    assert refused(prepare_chat, {"messages": bad_args}, tok, OPTIONS, model_id=MODEL).code == "process_messages_failed"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "messages", "missing_required_parameter"),
        ({"messages": "hi"}, "messages", "invalid_value"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": USER, "tools": {"a": 1}}, "tools", "invalid_value"),
        ({"messages": USER, "tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
        ({"messages": USER, "tools": [{"type": "function", "function": {"name": 3}}]}, "tools[0].function.name", "invalid_value"),
        ({"messages": USER, "tool_choice": "required"}, "tool_choice", "invalid_value"),
        ({"messages": USER, "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        (
            {"messages": USER, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "invalid_value",
        ),
        ({"messages": USER, "chat_template_kwargs": ["x"]}, "chat_template_kwargs", "invalid_value"),
        ({"messages": USER, "continue_final_message": "yes"}, "continue_final_message", "invalid_value"),
        ({"messages": USER, "stream": 1}, "stream", "invalid_value"),
        ({"messages": USER, "separate_reasoning": "no"}, "separate_reasoning", "invalid_value"),
        ({"messages": USER, "top_logprobs": 3}, "top_logprobs", "invalid_value"),
        ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
        (
            {"messages": USER, "stream": True, "stream_options": {"include_usage": "y"}},
            "stream_options.include_usage",
            "invalid_value",
        ),
    ],
)
def test_bad_chat_fields(tok: ModelTokenizer, body: dict[str, Any], param: str, code: str) -> None:
    error = refused(prepare_chat, body, tok, OPTIONS, model_id=MODEL)
    assert (error.param, error.code) == (param, code)
    assert param.split(".")[0].split("[")[0] in error.message


# -- sampling ---------------------------------------------------------------------------------------


def test_absent_sampling_fields_stay_absent(tok: ModelTokenizer) -> None:
    s = chat(tok).engine.sampling
    assert s.temperature is None and s.top_p is None and s.top_k is None and s.min_p is None
    assert s.frequency_penalty is None and s.presence_penalty is None and s.repetition_penalty is None
    assert s.max_new_tokens is None and s.min_new_tokens is None and s.seed is None
    assert s.stop_token_ids == () and s.logit_bias == {} and s.n == 1
    assert s.skip_special_tokens and s.spaces_between_special_tokens and not s.ignore_eos and not s.no_stop_trim
    assert s.json_schema is None and s.regex is None and s.ebnf is None


def test_every_sampling_field_maps(tok: ModelTokenizer) -> None:
    p = chat(
        tok,
        temperature=0,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        repetition_penalty=1.1,
        max_tokens=100,
        max_completion_tokens=50,
        min_tokens=5,
        seed=7,
        n=3,
        logit_bias={"42": 5, "7": -100},
        ignore_eos=True,
        no_stop_trim=True,
        skip_special_tokens=False,
        spaces_between_special_tokens=False,
        stop_token_ids=[11, 12],
        regex="[a-z]+",
        logprobs=True,
        top_logprobs=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    s = p.engine.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.0, 0.9, 40, 0.05)
    assert (s.frequency_penalty, s.presence_penalty, s.repetition_penalty) == (0.5, -0.5, 1.1)
    assert (s.max_new_tokens, s.min_new_tokens, s.seed, s.n) == (50, 5, 7, 3)  # max_completion_tokens wins
    assert s.logit_bias == {42: 5.0, 7: -100.0}
    assert s.ignore_eos and s.no_stop_trim and not s.skip_special_tokens and not s.spaces_between_special_tokens
    assert s.stop_token_ids == (11, 12) and s.regex == "[a-z]+"
    assert p.engine.logprobs and p.engine.top_logprobs == 4 and p.engine.stream
    assert p.include_usage and p.n == 3 and not p.skip_special_tokens and p.no_stop_trim
    assert p.stop_ids == frozenset()  # no_stop_trim keeps every stop token


def test_top_k_off_values(tok: ModelTokenizer) -> None:
    assert chat(tok, top_k=-1).engine.sampling.top_k is None
    assert chat(tok, top_k=0).engine.sampling.top_k is None


def test_max_tokens_alone(tok: ModelTokenizer) -> None:
    assert chat(tok, max_tokens=12).engine.sampling.max_new_tokens == 12


def test_stop_strings_split_between_engine_and_gateway(tok: ModelTokenizer) -> None:
    p = chat(tok, stop=["\n", "Hello world", "\n"], stop_token_ids=[5])
    newline = tok.encode("\n", add_special_tokens=False)
    assert len(newline) == 1 and len(tok.encode("Hello world", add_special_tokens=False)) > 1
    assert p.stops == ("\n", "Hello world")
    assert p.engine.sampling.stop_token_ids == (5, newline[0])
    # the EOS ids and the client's ids end the text unseen; one-token strings are cut on text
    assert p.stop_ids == frozenset({5, EOS, ENDOFTEXT})
    assert chat(tok, stop="abc").stops == ("abc",)
    assert chat(tok, ignore_eos=True).stop_ids == frozenset()


def test_stop_count_cap(tok: ModelTokenizer) -> None:
    assert len(chat(tok, stop=[f"s{i}" for i in range(MAX_STOPS)]).stops) == MAX_STOPS
    error = refused(chat, tok, stop=[f"s{i}" for i in range(MAX_STOPS + 1)])
    assert error.param == "stop" and str(MAX_STOPS) in error.message


def test_response_format(tok: ModelTokenizer) -> None:
    assert chat(tok, response_format={"type": "json_object"}).engine.sampling.json_schema == '{"type":"object"}'
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    p = chat(tok, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert json.loads(p.engine.sampling.json_schema or "") == schema
    assert chat(tok, response_format={"type": "text"}).engine.sampling.json_schema is None
    assert refused(chat, tok, response_format={"type": "xml"}).param == "response_format.type"
    assert (
        refused(chat, tok, response_format={"type": "json_schema", "json_schema": {}}).param
        == "response_format.json_schema.schema"
    )
    both = refused(chat, tok, response_format={"type": "json_object"}, regex="a+")
    assert both.param == "response_format" and "one way" in both.message


def test_ebnf_passes_through(tok: ModelTokenizer) -> None:
    assert chat(tok, ebnf='root ::= "a"').engine.sampling.ebnf == 'root ::= "a"'


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"seed": 1.5}, "seed"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"logit_bias": {"5": "1"}}, "logit_bias.5"),
        ({"stop": ""}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"stop": {"a": 1}}, "stop"),
        ({"stop_token_ids": [1, "x"]}, "stop_token_ids[1]"),
        ({"stop_token_ids": [10**9]}, "stop_token_ids[0]"),
        ({"stop_token_ids": 5}, "stop_token_ids"),
        ({"ignore_eos": "true"}, "ignore_eos"),
        ({"skip_special_tokens": 0}, "skip_special_tokens"),
        ({"regex": 5}, "regex"),
        ({"response_format": "json"}, "response_format"),
        ({"temperature": 10**400}, "temperature"),
    ],
)
def test_bad_sampling_fields(tok: ModelTokenizer, fields: dict[str, Any], param: str) -> None:
    error = refused(chat, tok, **fields)
    assert error.code == "invalid_value" and error.param == param
    assert f"'{param.split('[')[0].split('.')[0]}" in error.message


# -- tools and parsers ------------------------------------------------------------------------------


def test_parsers_default_from_the_model_id(tok: ModelTokenizer) -> None:
    p = chat(tok, "Qwen/Qwen3-8B", tools=[WEATHER])
    assert (p.tool_parser, p.reasoning_parser, p.in_reasoning) == ("qwen", "qwen3", None)
    plain = chat(tok, "Qwen/Qwen3-8B")
    assert plain.tool_parser is None and plain.reasoning_parser == "qwen3"
    unknown = chat(tok, MODEL, tools=[WEATHER])
    assert unknown.tool_parser is None and unknown.reasoning_parser is None


def test_configured_parsers_and_separate_reasoning(tok: ModelTokenizer) -> None:
    options = PipelineOptions(tool_call_parser="json", reasoning_parser="deepseek_r1")
    p = chat(tok, MODEL, options, tools=[WEATHER])
    assert (p.tool_parser, p.reasoning_parser) == ("json", "deepseek_r1")
    assert chat(tok, MODEL, options, separate_reasoning=False).reasoning_parser is None
    assert chat(tok, MODEL, PipelineOptions(reasoning_parser="passthrough")).reasoning_parser is None
    # a model default that smg does not implement: no parsing (the text passes through)
    assert chat(tok, "Qwen3-Coder-30B", tools=[WEATHER]).tool_parser is None


def test_prompt_that_opens_or_closes_the_thinking_block(tok: ModelTokenizer) -> None:
    closed = chat(tok, "Qwen3-8B", chat_template_kwargs={"enable_thinking": False})
    assert closed.in_reasoning is False
    opened_template = "{% for m in messages %}{{ m.content }}{% endfor %}<think>\n"
    opened = chat(tok, "Qwen3-8B", PipelineOptions(chat_template=opened_template))
    assert opened.in_reasoning is True


def test_tool_choice_required(tok: ModelTokenizer) -> None:
    p = chat(tok, "Qwen3-8B", tools=[WEATHER, TIME], tool_choice="required")
    assert p.tool_parser == "json" and p.tool_function is None
    schema = json.loads(p.engine.sampling.json_schema or "")
    assert schema["type"] == "array" and schema["minItems"] == 1
    variants = schema["items"]["anyOf"]
    assert [v["properties"]["name"]["enum"] for v in variants] == [["get_weather"], ["get_time"]]
    assert variants[0]["properties"]["parameters"] == WEATHER["function"]["parameters"]  # type: ignore[index]
    assert all(v["required"] == ["name", "parameters"] for v in variants)
    conflict = refused(chat, tok, tools=[WEATHER, TIME], tool_choice="required", response_format={"type": "json_object"})
    assert conflict.param == "tool_choice"


def test_required_gathers_defs(tok: ModelTokenizer) -> None:
    a = {"type": "function", "function": {"name": "a", "parameters": {"type": "object", "$defs": {"X": {"type": "string"}}}}}
    b = {"type": "function", "function": {"name": "b", "parameters": {"type": "object", "$defs": {"X": {"type": "integer"}}}}}
    schema = json.loads(chat(tok, tools=[a], tool_choice="required").engine.sampling.json_schema or "")
    assert schema["$defs"] == {"X": {"type": "string"}}
    assert refused(chat, tok, tools=[a, b], tool_choice="required").param == "tools"


def test_tool_choice_named_function(tok: ModelTokenizer) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    p = chat(tok, "Qwen3-8B", tools=[WEATHER, TIME], tool_choice=choice)
    assert p.tool_function == "get_time" and p.tool_parser is None
    assert json.loads(p.engine.sampling.json_schema or "") == TIME["function"]["parameters"]  # type: ignore[index]
    prompt = tok.decode(p.engine.input_ids, skip_special_tokens=False)
    assert "get_time" in prompt and "get_weather" not in prompt  # the template shows that tool only


# -- completions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["Once upon a time", ["Once upon a time"]])
def test_completion_text_prompt(tok: ModelTokenizer, prompt: Any) -> None:
    p = prepare_completion(
        {"model": "m", "prompt": prompt, "max_tokens": 8, "echo": True, "logprobs": 2}, tok, OPTIONS, model_id=MODEL
    )
    assert p.kind == "completions" and p.engine.input_ids == tok.encode("Once upon a time")
    assert p.echo_text == "Once upon a time" and p.engine.sampling.max_new_tokens == 8
    assert p.engine.logprobs and p.engine.top_logprobs == 2


@pytest.mark.parametrize("prompt", [[10, 20, 30], [[10, 20, 30]]])
def test_completion_token_prompt(tok: ModelTokenizer, prompt: Any) -> None:
    p = prepare_completion({"prompt": prompt, "echo": True}, tok, OPTIONS, model_id=MODEL)
    assert p.engine.input_ids == [10, 20, 30] and p.echo_text == tok.decode([10, 20, 30])
    assert not p.engine.logprobs


def test_completion_logprobs_zero_still_asks_for_logprobs(tok: ModelTokenizer) -> None:
    p = prepare_completion({"prompt": "x", "logprobs": 0}, tok, OPTIONS, model_id=MODEL)
    assert p.engine.logprobs and p.engine.top_logprobs == 0


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({}, "prompt", "missing"),
        ({"prompt": ["a", "b"]}, "prompt", "batches"),
        ({"prompt": [[1], [2]]}, "prompt", "batches"),
        ({"prompt": []}, "prompt", "empty"),
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": 5}, "prompt", "Invalid type"),
        ({"prompt": [1, "a"]}, "prompt[1]", "integer"),
        ({"prompt": "x", "suffix": "y"}, "suffix", "not supported"),
        ({"prompt": "x", "echo": "y"}, "echo", "boolean"),
        ({"prompt": "x", "logprobs": True}, "logprobs", "integer"),
        ({"prompt": "x", "best_of": 3}, "best_of", "best_of"),
    ],
)
def test_bad_completions(tok: ModelTokenizer, body: dict[str, Any], param: str, words: str) -> None:
    error = refused(prepare_completion, body, tok, OPTIONS, model_id=MODEL)
    assert error.param == param and words in error.message


# -- /generate -----------------------------------------------------------------------------------


def test_generate_text_and_sampling_params(tok: ModelTokenizer) -> None:
    body = {
        "text": "The capital of France is",
        "sampling_params": {"temperature": 0, "max_new_tokens": 16, "stop": ["."], "n": 2, "top_k": -1, "json_schema": "{}"},
        "stream": True,
        "rid": "my-id",
        "return_logprob": True,
        "top_logprobs_num": 3,
        "return_text_in_logprobs": True,
    }
    p = prepare_generate(body, tok, OPTIONS, model_id=MODEL)
    assert p.kind == "generate" and p.engine.request_id == "my-id"
    assert p.engine.input_ids == tok.encode("The capital of France is")
    s = p.engine.sampling
    assert (s.temperature, s.max_new_tokens, s.n, s.top_k, s.json_schema) == (0.0, 16, 2, None, "{}")
    assert p.stops == (".",) and p.engine.stream and p.engine.log_metrics
    assert p.engine.logprobs and p.engine.top_logprobs == 3 and p.return_text_in_logprobs


def test_generate_ids_and_defaults(tok: ModelTokenizer) -> None:
    p = prepare_generate({"input_ids": [1, 2, 3]}, tok, OPTIONS, model_id=MODEL)
    assert p.engine.input_ids == [1, 2, 3] and p.engine.request_id == "" and p.engine.sampling.max_new_tokens is None
    assert not p.engine.logprobs and p.engine.top_logprobs == 0
    assert prepare_generate({"input_ids": [[1, 2]], "rid": ["r"]}, tok, OPTIONS, model_id=MODEL).engine.request_id == "r"
    assert (
        prepare_generate(
            {"text": ["hi"], "sampling_params": {"max_new_tokens": 0}}, tok, OPTIONS, model_id=MODEL
        ).engine.sampling.max_new_tokens
        == 0
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "text"),
        ({"text": "a", "input_ids": [1]}, "input_ids"),
        ({"text": ["a", "b"]}, "text"),
        ({"text": 3}, "text"),
        ({"input_ids": [[1], [2]]}, "input_ids"),
        ({"input_ids": "1 2"}, "input_ids"),
        ({"text": "a", "sampling_params": [{}, {}]}, "sampling_params"),
        ({"text": "a", "sampling_params": "x"}, "sampling_params"),
        ({"text": "a", "sampling_params": {"temperature": "x"}}, "sampling_params.temperature"),
        ({"text": "a", "sampling_params": {"max_new_tokens": -1}}, "sampling_params.max_new_tokens"),
        ({"text": "a", "sampling_params": {"stop": 5}}, "sampling_params.stop"),
        ({"text": "a", "sampling_params": {"regex": "a", "ebnf": "b"}}, "sampling_params.ebnf"),
        ({"text": "a", "rid": 5}, "rid"),
        ({"text": "a", "return_logprob": "yes"}, "return_logprob"),
        ({"text": "a", "image_data": "http://x"}, "image_data"),
    ],
)
def test_bad_generate(tok: ModelTokenizer, body: dict[str, Any], param: str) -> None:
    error = refused(prepare_generate, body, tok, OPTIONS, model_id=MODEL)
    assert error.param == param


# -- embeddings -----------------------------------------------------------------------------------


def test_embedding_inputs(tok: ModelTokenizer) -> None:
    assert prepare_embedding({"input": "hello world"}, tok) == (tok.encode("hello world"), "hello world")
    assert prepare_embedding({"input": ["hello"]}, tok) == (tok.encode("hello"), "hello")
    assert prepare_embedding({"input": [5, 6]}, tok) == ([5, 6], tok.decode([5, 6], skip_special_tokens=False))
    assert prepare_embedding({"input": [[5, 6]], "encoding_format": "base64"}, tok)[0] == [5, 6]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({}, "input", "missing"),
        ({"input": ["a", "b"]}, "input", "2 inputs in one request"),
        ({"input": [[1], [2]]}, "input", "one input per request"),
        ({"input": ""}, "input", "empty"),
        ({"input": {"a": 1}}, "input", "Invalid type"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", "base64"),
        ({"input": "a", "dimensions": 8}, "dimensions", "not supported"),
    ],
)
def test_bad_embeddings(tok: ModelTokenizer, body: dict[str, Any], param: str, words: str) -> None:
    error = refused(prepare_embedding, body, tok)
    assert error.param == param and words in error.message


@pytest.mark.parametrize(
    "field",
    [
        {"max_tokens": 2**32},
        {"max_completion_tokens": 10**12},
        {"min_tokens": 2**31},
        {"top_k": 2**31},
        {"seed": 2**40},
        {"temperature": 1e300},
    ],
)
def test_values_past_the_engine_fields_range_are_the_clients_400(field: dict[str, Any]) -> None:
    tokenizer = load_shipped_tokenizer()
    request = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], **field}
    with pytest.raises(GatewayError) as caught:
        prepare_chat(request, tokenizer, PipelineOptions(), model_id="sim-model")
    assert caught.value.status == 400 and caught.value.param == next(iter(field))
