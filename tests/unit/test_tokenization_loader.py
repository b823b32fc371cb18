"""smg.tokenization.loader: the Hugging Face directory layouts the reference accepts (see
../shared/reference/smg-grpc-contract.md), HF's precedence between the files, and one clear
ValueError per missing or broken file. Tokenizer directories are made here with `tokenizers`;
nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

from smg.routing.tokenizer import load_tokenizer
from smg.tokenization.chat_template import NoChatTemplateError, apply_chat_template, tokenize_chat
from smg.tokenization.loader import ModelTokenizer, load_model_tokenizer, read_chat_template_file

WORDS = ["hello", "world", "hi", "there"]
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# ids: [UNK]=0, hello=1, world=2, hi=3, there=4, <s>=5, </s>=6, <|im_start|>=7, <|im_end|>=8
BOS, EOS, IM_START, IM_END = 5, 6, 7, 8

SIM_MODEL = Path(__file__).resolve().parents[2] / "smg" / "simworker" / "model"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_sim_tokenizer.py"


def write_model(directory: Path, config: dict[str, Any] | None = None, post_processor: bool = False, **files: Any) -> Path:
    """A tokenizer directory: a word-level tokenizer.json, then tokenizer_config.json (when
    `config` is given) and any other file by name (`chat_template_jinja=...` for
    chat_template.jinja; dicts are written as JSON, strings as they are)."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    if post_processor:  # a tokenizer.json that adds <s> by itself, like Llama's
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tok.save(str(directory / "tokenizer.json"))
    if config is not None:
        files["tokenizer_config.json"] = config
    for name, content in files.items():
        name = name.replace("_jinja", ".jinja").replace("_json", ".json") if not name.endswith((".json", ".jinja")) else name
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return directory


CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
USER = [{"role": "user", "content": "hi"}]


# -- the layouts the reference accepts ----------------------------------------------------------


def test_tokenizer_json_and_config_with_template(tmp_path: Path) -> None:
    model = load_model_tokenizer(write_model(tmp_path, {"chat_template": CHATML, "eos_token": "<|im_end|>"}))
    assert model.chat_templates == {"default": CHATML}
    assert (
        apply_chat_template(model, USER, add_generation_prompt=True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    text, ids = tokenize_chat(model, USER, add_generation_prompt=True)
    assert ids == model.encode(text, add_special_tokens=False) and ids[0] == IM_START and ids.count(IM_START) == 2
    assert model.eos_token == "<|im_end|>" and model.eos_token_id == IM_END


def test_chat_template_jinja_beside_a_config_without_one(tmp_path: Path) -> None:
    model = load_model_tokenizer(write_model(tmp_path, {"eos_token": "</s>"}, chat_template_jinja=CHATML + "\n"))
    assert model.chat_templates == {"default": CHATML + "\n"}  # read as it is; Jinja drops the one trailing newline
    assert apply_chat_template(model, USER) == "<|im_start|>user\nhi<|im_end|>\n"


def test_chat_template_file_clobbers_the_config_s_as_hf_does(tmp_path: Path) -> None:
    directory = write_model(tmp_path, {"chat_template": "from config"}, chat_template_jinja="from file")
    assert load_model_tokenizer(directory).chat_templates == {"default": "from file"}


def test_chat_template_json_layouts(tmp_path: Path) -> None:
    wrapped = write_model(tmp_path / "a", {}, chat_template_json={"chat_template": CHATML})
    bare = write_model(tmp_path / "b", {}, chat_template_json=json.dumps(CHATML))
    assert load_model_tokenizer(wrapped).chat_templates == {"default": CHATML}
    assert load_model_tokenizer(bare).chat_templates == {"default": CHATML}


def test_tokenizer_json_only_loads_but_chat_is_refused(tmp_path: Path) -> None:
    model = load_model_tokenizer(write_model(tmp_path))
    assert model.encode("hello world") == [1, 2] and model.decode([1, 2]) == "hello world"
    assert model.chat_templates == {} and model.eos_token_ids == () and model.special_tokens == {}
    with pytest.raises(NoChatTemplateError, match="no chat template") as caught:
        apply_chat_template(model, USER)
    assert caught.value.code == "process_messages_failed"


def test_named_templates_default_and_tool_use(tmp_path: Path) -> None:
    config = {
        "chat_template": [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "{{ tools|length }} tools"}]
    }
    model = load_model_tokenizer(write_model(tmp_path, config))
    assert model.chat_templates == {"default": "plain", "tool_use": "{{ tools|length }} tools"}
    assert apply_chat_template(model, USER) == "plain"
    assert apply_chat_template(model, USER, tools=[{"type": "function", "function": {"name": "f"}}]) == "1 tools"
    assert apply_chat_template(model, USER, tools=[]) == "0 tools"  # HF: tools given, even empty
    assert apply_chat_template(model, USER, tools=[], chat_template="default") == "plain"  # by name


def test_named_templates_without_a_default(tmp_path: Path) -> None:
    model = load_model_tokenizer(write_model(tmp_path, {"chat_template": [{"name": "tool_use", "template": "T"}]}))
    with pytest.raises(NoChatTemplateError, match="none is the default"):
        apply_chat_template(model, USER)
    assert apply_chat_template(model, USER, tools=[]) == "T"
    assert apply_chat_template(model, USER, chat_template="tool_use") == "T"
    assert apply_chat_template(model, USER, chat_template="{{ messages[0].content }}!") == "hi!"  # a source, as HF


def test_additional_chat_templates_directory(tmp_path: Path) -> None:
    directory = write_model(tmp_path, {}, chat_template_jinja="D")
    (directory / "additional_chat_templates").mkdir()
    (directory / "additional_chat_templates" / "tool_use.jinja").write_text("T")
    assert load_model_tokenizer(directory).chat_templates == {"default": "D", "tool_use": "T"}


def test_chat_template_path_overrides_everything(tmp_path: Path) -> None:
    directory = write_model(
        tmp_path / "m", {"chat_template": [{"name": "default", "template": "x"}, {"name": "tool_use", "template": "y"}]}
    )
    (tmp_path / "t.jinja").write_text("override")
    (tmp_path / "t.json").write_text(json.dumps({"chat_template": "from json"}))
    assert load_model_tokenizer(directory, chat_template_path=tmp_path / "t.jinja").chat_templates == {"default": "override"}
    assert read_chat_template_file(tmp_path / "t.json") == "from json"
    with pytest.raises(ValueError, match="no chat template file at"):
        load_model_tokenizer(directory, chat_template_path=tmp_path / "missing.jinja")


def test_path_of_the_tokenizer_json_itself_reads_its_directory(tmp_path: Path) -> None:
    directory = write_model(tmp_path, {"chat_template": CHATML}, generation_config_json={"eos_token_id": 8})
    model = load_model_tokenizer(directory / "tokenizer.json")
    assert model.path == str(directory) and model.chat_templates == {"default": CHATML} and model.eos_token_ids == (8,)


# -- special tokens, BOS/EOS, stop ids ---------------------------------------------------------


def test_special_tokens_as_strings_or_added_token_dicts(tmp_path: Path) -> None:
    config = {
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False},
        "eos_token": "</s>",
        "pad_token": None,
        "unk_token": {"content": "[UNK]"},
        "additional_special_tokens": ["<|im_start|>", {"content": "<|im_end|>"}],
    }
    model = load_model_tokenizer(write_model(tmp_path, config))
    assert model.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "[UNK]"}
    assert model.template_variables() == {**model.special_tokens, "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    assert (model.bos_token_id, model.eos_token_id, model.pad_token) == (BOS, EOS, None)


def test_special_tokens_map_overrides_the_config(tmp_path: Path) -> None:
    directory = write_model(
        tmp_path, {"eos_token": "</s>", "bos_token": "<s>"}, special_tokens_map_json={"eos_token": {"content": "<|im_end|>"}}
    )
    model = load_model_tokenizer(directory)
    assert (model.bos_token, model.eos_token) == ("<s>", "<|im_end|>")


@pytest.mark.parametrize(
    ("generation", "config", "expected"),
    [
        ({"eos_token_id": 6}, None, (6,)),
        ({"eos_token_id": [8, 6]}, None, (6, 8)),
        ({"eos_token_id": [8, 6]}, {"eos_token_id": 5}, (5, 6, 8)),  # merged with config.json, as the reference
        ({"eos_token_id": None}, {"eos_token_id": 8}, (8,)),
        ({}, None, ()),
    ],
)
def test_eos_token_ids_int_or_list(
    tmp_path: Path, generation: dict[str, Any], config: dict[str, Any] | None, expected: tuple[int, ...]
) -> None:
    files: dict[str, Any] = {"generation_config.json": generation}
    if config is not None:
        files["config.json"] = config
    assert load_model_tokenizer(write_model(tmp_path, **files)).eos_token_ids == expected


def test_add_bos_and_eos_token_rebuild_the_post_processor(tmp_path: Path) -> None:
    both = load_model_tokenizer(
        write_model(tmp_path / "a", {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "add_eos_token": True})
    )
    assert both.encode("hello") == [BOS, 1, EOS] and both.encode("hello", add_special_tokens=False) == [1]
    bos = load_model_tokenizer(write_model(tmp_path / "b", {"bos_token": "<s>", "add_bos_token": True}))
    assert bos.encode("hello world") == [BOS, 1, 2]
    plain = load_model_tokenizer(write_model(tmp_path / "c", {"bos_token": "<s>"}))
    assert plain.encode("hello") == [1]


def test_an_explicit_false_keeps_tokenizer_json_s_own_post_processor(tmp_path: Path) -> None:
    """The reference only rebuilds when a flag is true; a Llama tokenizer.json adding <s> keeps it."""
    model = load_model_tokenizer(write_model(tmp_path, {"bos_token": "<s>", "add_bos_token": False}, post_processor=True))
    assert model.encode("hello") == [BOS, 1]
    eos_only = load_model_tokenizer(
        write_model(tmp_path / "e", {"bos_token": "<s>", "eos_token": "</s>", "add_eos_token": True}, post_processor=True)
    )
    assert eos_only.encode("hello") == [BOS, 1, EOS]  # add_eos with a BOS-adding tokenizer keeps the BOS


def test_chat_prompt_gets_one_bos_even_when_the_config_adds_it(tmp_path: Path) -> None:
    template = "{{ bos_token }}{% for m in messages %}{{ m.content }} {% endfor %}"
    model = load_model_tokenizer(write_model(tmp_path, {"bos_token": "<s>", "add_bos_token": True, "chat_template": template}))
    text, ids = tokenize_chat(model, USER)
    assert text == "<s>hi " and ids == [BOS, 3]  # HF: apply_chat_template(tokenize=True) adds no second BOS
    assert model.encode("hi") == [BOS, 3]  # a completion prompt does get it


def test_model_max_length(tmp_path: Path) -> None:
    assert load_model_tokenizer(write_model(tmp_path / "a", {"model_max_length": 8192})).model_max_length == 8192
    assert (
        load_model_tokenizer(write_model(tmp_path / "b", {"model_max_length": 1000000000000000019884624838656})).model_max_length
        is None
    )
    assert load_model_tokenizer(write_model(tmp_path / "c", {})).model_max_length is None


def test_vocabulary_and_decoding(tmp_path: Path) -> None:
    model = load_model_tokenizer(write_model(tmp_path))
    assert (model.vocab_size, model.total_vocab_size) == (5, 9)
    assert model.token_to_id("<|im_end|>") == IM_END and model.id_to_token(1) == "hello" and model.token_to_id("nope") is None
    assert model.special_token_ids == frozenset({BOS, EOS, IM_START, IM_END})
    assert model.decode([IM_START, 1, IM_END]) == "hello"
    assert model.decode([IM_START, 1, IM_END], skip_special_tokens=False) == "<|im_start|> hello <|im_end|>"
    assert model.encode_batch(["hello", "world there"]) == [[1], [2, 4]]
    assert "ModelTokenizer(" in repr(model)


# -- bad and missing files ---------------------------------------------------------------------


def test_missing_directory_or_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^no tokenizer\.json at .*missing$"):
        load_model_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^no tokenizer\.json at "):
        load_model_tokenizer(tmp_path / "empty")


def test_broken_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"^cannot load .*tokenizer\.json: "):
        load_model_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
    with pytest.raises(ValueError, match=r"^cannot load "):
        load_model_tokenizer(tmp_path)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"tokenizer_config.json": "{oops"}, r"tokenizer_config\.json is not valid JSON"),
        ({"tokenizer_config.json": "[1, 2]"}, r"tokenizer_config\.json must hold a JSON object"),
        ({"tokenizer_config.json": {"chat_template": 5}}, r"tokenizer_config\.json: chat_template must be a string or a list"),
        (
            {"tokenizer_config.json": {"chat_template": [{"name": "default"}]}},
            r"tokenizer_config\.json: chat_template list entries",
        ),
        ({"tokenizer_config.json": {"bos_token": 7}}, r"tokenizer_config\.json: bos_token must be a string or an AddedToken"),
        ({"tokenizer_config.json": {"add_bos_token": "yes"}}, r"tokenizer_config\.json: add_bos_token must be true or false"),
        ({"tokenizer_config.json": {"additional_special_tokens": "<x>"}}, r"additional_special_tokens must be a list"),
        ({"tokenizer_config.json": {"model_max_length": "long"}}, r"model_max_length must be a number"),
        ({"special_tokens_map.json": "nope"}, r"special_tokens_map\.json is not valid JSON"),
        ({"generation_config.json": {"eos_token_id": "2"}}, r"generation_config\.json: eos_token_id must be a token id"),
        ({"config.json": {"eos_token_id": [1, True]}}, r"config\.json: eos_token_id must be a token id"),
        ({"chat_template.json": {"chat_template": {"default": 3}}}, r"chat_template\.json: chat_template must be"),
        ({"chat_template.jinja": b"\xff\xfe bad utf-8"}, r"cannot read .*chat_template\.jinja"),
    ],
)
def test_each_bad_file_is_named(tmp_path: Path, files: dict[str, Any], message: str) -> None:
    write_model(tmp_path)
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message) as caught:
        load_model_tokenizer(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_routing_loads_through_the_same_loader(tmp_path: Path) -> None:
    tokenize = load_tokenizer(str(write_model(tmp_path / "m", {"add_bos_token": True, "bos_token": "<s>"})))
    assert tokenize("hello world") == (1, 2)  # routing text: no special tokens
    write_model(tmp_path / "bad", tokenizer_config_json="{")
    with pytest.raises(ValueError, match=r"^--model-path: .*tokenizer_config\.json is not valid JSON"):
        load_tokenizer(str(tmp_path / "bad"), "--model-path")


# -- the simulated worker's shipped tokenizer ------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> ModelTokenizer:
    return load_model_tokenizer(SIM_MODEL)


def test_shipped_sim_tokenizer(sim: ModelTokenizer) -> None:
    assert (SIM_MODEL / "tokenizer.json").stat().st_size < 1024 * 1024
    assert 2000 < sim.vocab_size <= 4096 and sim.total_vocab_size == sim.vocab_size + 9
    ids = {
        token: sim.token_to_id(token)
        for token in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</think>"]
    }
    assert all(isinstance(i, int) and i >= sim.vocab_size for i in ids.values())
    im_end, endoftext = ids["<|im_end|>"], ids["<|endoftext|>"]
    assert im_end is not None and endoftext is not None and sim.eos_token_ids == tuple(sorted([im_end, endoftext]))
    assert sim.special_token_ids == frozenset({ids["<|endoftext|>"], ids["<|im_start|>"], ids["<|im_end|>"]})
    assert sim.eos_token == "<|im_end|>" and sim.bos_token is None and sim.model_max_length == 32768
    text = 'Le café 🙂 你好 — <think>\nhmm\n</think>\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    encoded = sim.encode(text)
    assert sim.decode(encoded) == text  # the markers are not special: they survive skip_special_tokens
    assert ids["<tool_call>"] in encoded and ids["<think>"] in encoded
    assert sim.decode(sim.encode("<|im_start|>user\nhi<|im_end|>")) == "user\nhi"
    assert len(sim.encode("Hello! How can I help you today?")) < 12  # trained: words are few tokens


def test_shipped_sim_tokenizer_is_what_the_script_builds() -> None:
    spec = importlib.util.spec_from_file_location("build_sim_tokenizer", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    if tokenizers.__version__ != script.BUILT_WITH:
        pytest.skip(f"committed files were built with tokenizers {script.BUILT_WITH}, this is {tokenizers.__version__}")
    built = script.build()
    assert built == {name: (SIM_MODEL / name).read_text("utf-8") for name in built}
    assert sorted(p.name for p in SIM_MODEL.iterdir()) == sorted(built)


# -- review fixes: deep JSON, lenient optional files for routing -----------------------------------


@pytest.mark.parametrize("name", ["tokenizer_config.json", "special_tokens_map.json", "config.json", "generation_config.json"])
@pytest.mark.parametrize("body", ["[" * 100_000, '{"eos_token_id": ' + "1" * 5000 + "}"])
def test_deeply_nested_or_huge_number_config_is_a_value_error(tmp_path: Path, name: str, body: str) -> None:
    write_model(tmp_path / "m", **{name: body})  # e.g. from a worker's GetTokenizer archive
    with pytest.raises(ValueError, match=re.escape(f"{name} is not valid JSON")) as caught:
        load_model_tokenizer(tmp_path / "m")
    assert type(caught.value) is ValueError


@pytest.mark.parametrize("name", ["special_tokens_map.json", "config.json", "generation_config.json", "chat_template.json"])
@pytest.mark.parametrize("body", ["{", "[" * 100_000, '["a list"]', '{"eos_token_id": "x", "bos_token": 5}'])
def test_routing_ignores_a_broken_optional_file(tmp_path: Path, name: str, body: str) -> None:
    write_model(tmp_path / "m", **{name: body})
    with pytest.raises(ValueError):
        load_model_tokenizer(tmp_path / "m")  # strict by default (the gRPC pipeline)
    lenient = load_model_tokenizer(tmp_path / "m", strict_optional=False)
    assert lenient.encode("hello world", add_special_tokens=False) == [1, 2]
    assert load_tokenizer(str(tmp_path / "m" / "tokenizer.json"))("hello world") == (1, 2)
    assert load_tokenizer(str(tmp_path / "m"))("hello world") == (1, 2)


def test_lenient_mode_keeps_what_the_sound_files_say(tmp_path: Path) -> None:
    write_model(
        tmp_path / "m",
        {"bos_token": "<s>", "chat_template": CHATML},
        special_tokens_map_json="{",
        generation_config_json={"eos_token_id": 7},
        config_json="[",
    )
    model = load_model_tokenizer(tmp_path / "m", strict_optional=False)
    assert model.bos_token == "<s>" and model.chat_templates == {"default": CHATML} and model.eos_token_ids == (7,)
