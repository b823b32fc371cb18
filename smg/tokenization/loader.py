"""One local Hugging Face tokenizer directory loaded into one object, `ModelTokenizer`.

The gateway tokenizes for gRPC workers (they run raw inference only), and token-mode cache_aware
routing tokenizes too (`smg.routing.tokenizer`): both load through `load_model_tokenizer`, so
there is one room where a model directory is read and one set of rules for what it means.

The rules are Hugging Face's (`AutoTokenizer.from_pretrained` on a fast tokenizer), and where the
reference gateway (SMG 1.13) departs from them in ways a client could see, the reference's, since
smg is a drop-in for it:

- `tokenizer.json` is required (a directory, or the path of that file itself; the other files are
  then read from its directory). Nothing is downloaded: a hub id is the caller's to refuse.
- `tokenizer_config.json` (optional): the special tokens (`bos_token`, `eos_token`, `unk_token`,
  `pad_token`, `sep_token`, `cls_token`, `mask_token` as strings or serialized `AddedToken`
  dicts, `additional_special_tokens`), `add_bos_token`/`add_eos_token`, `model_max_length`, and
  `chat_template` as one string or a list of named templates (`{"name", "template"}`).
- `special_tokens_map.json` (optional) overrides the config's special tokens, as in HF.
- `chat_template.jinja`, else `chat_template.json` (`{"chat_template": ...}` or a bare string),
  replaces the config's template when present: HF's loader lets the file clobber the config, and
  so does the reference. `additional_chat_templates/<name>.jinja` adds named templates (HF's
  newer layout). A `chat_template_path` given by the caller (the `--chat-template` flag) wins
  over all of them.
- The stop token ids are the `eos_token_id` of `config.json` and of `generation_config.json`
  (an int or a list), merged and sorted, as the reference does: a model may name a different
  end token in each (its base EOS and its chat turn end).
- `add_bos_token`/`add_eos_token` rebuild the post-processor only when one is explicitly true
  (HF's `update_post_processor`; the reference leaves an explicit false alone, and so do we).

Every problem is a `ValueError` naming the path and the file (missing, unreadable, not JSON, a
field of the wrong type): the caller prefixes the flag (`--model-path: ...`) or the worker.

Loading reads a few local files once, at start or at registration; nothing here touches the
network, and the result is immutable, so it can be shared by every request and thread.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing

_T = TypeVar("_T")

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
MODEL_CONFIG_FILE = "config.json"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"
ADDITIONAL_CHAT_TEMPLATES_DIR = "additional_chat_templates"

#: The special-token attributes of an HF tokenizer, in HF's order (`special_tokens_map`).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

#: HF writes `int(1e30)` (or a float near it) for "no limit"; anything this large means none.
_NO_LIMIT = 10**15


LONG_TEXT = 16 * 1024  # characters: longer texts are encoded without holding the GIL (`ModelTokenizer.encode`)


class ModelTokenizer:
    """A model's tokenizer, special tokens, chat templates and stop ids, as its directory says.

    Immutable once built; `encode`/`decode` call the Rust tokenizer, which is safe to share
    between threads.
    """

    __slots__ = (
        "_special_ids",
        "add_bos_token",
        "add_eos_token",
        "additional_special_tokens",
        "chat_templates",
        "eos_token_ids",
        "model_max_length",
        "path",
        "special_tokens",
        "tokenizer",
    )

    def __init__(
        self,
        *,
        path: str,
        tokenizer: Tokenizer,
        special_tokens: Mapping[str, str] | None = None,
        additional_special_tokens: Sequence[str] = (),
        chat_templates: Mapping[str, str] | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        model_max_length: int | None = None,
        eos_token_ids: Iterable[int] = (),
    ) -> None:
        self.path = path
        self.tokenizer = tokenizer
        #: bos_token, eos_token, ... -> the token's text; only those the model names.
        self.special_tokens: Mapping[str, str] = MappingProxyType(dict(special_tokens or {}))
        self.additional_special_tokens: tuple[str, ...] = tuple(additional_special_tokens)
        #: template name -> Jinja source; a single template is named "default", as HF does.
        self.chat_templates: Mapping[str, str] = MappingProxyType(dict(chat_templates or {}))
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.model_max_length = model_max_length
        #: The ids that end generation (config.json + generation_config.json), sorted.
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(set(eos_token_ids)))
        self._special_ids = frozenset(
            token_id for token_id, added in tokenizer.get_added_tokens_decoder().items() if added.special
        )

    # -- special tokens ---------------------------------------------------------------------

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @property
    def unk_token(self) -> str | None:
        return self.special_tokens.get("unk_token")

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.token_to_id(self.eos_token)

    @property
    def special_token_ids(self) -> frozenset[int]:
        """The ids of the added tokens marked special: what `skip_special_tokens` leaves out.

        Tokens like Qwen's `<tool_call>` or `<think>` are added but not special, so they stay in
        decoded text, where the tool-call and reasoning parsers look for them."""
        return self._special_ids

    def template_variables(self) -> dict[str, Any]:
        """The special tokens as a chat template sees them (HF's `special_tokens_map`): each
        named token's text, and `additional_special_tokens` as a list when there are any."""
        variables: dict[str, Any] = dict(self.special_tokens)
        if self.additional_special_tokens:
            variables["additional_special_tokens"] = list(self.additional_special_tokens)
        return variables

    # -- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """The model's base vocabulary, without added tokens (HF's `vocab_size`, the reference's)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=False)

    @property
    def total_vocab_size(self) -> int:
        """Every id the tokenizer knows, added tokens included (HF's `len(tokenizer)`)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tokenizer.id_to_token(token_id)

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. A rendered chat prompt is encoded with `add_special_tokens=False`:
        the template already wrote the BOS where the model wants it (HF's
        `apply_chat_template(tokenize=True)`); a completion prompt with True, as HF does.

        A long text goes through `encode_batch`, which releases the GIL while it works (`encode`
        holds it): called from a worker thread, a megabyte prompt then no longer stalls the event
        loop for the seconds it takes."""
        if len(text) > LONG_TEXT:
            return self.tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of `token_ids`, whole. Streams decode incrementally elsewhere
        (`smg.tokenization.detokenizer`); this is the reference they must agree with."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"ModelTokenizer(path={self.path!r}, vocab={self.total_vocab_size}, templates={sorted(self.chat_templates)})"


# -- loading ----------------------------------------------------------------------------------


def load_model_tokenizer(
    path: str | Path, *, chat_template_path: str | Path | None = None, strict_optional: bool = True
) -> ModelTokenizer:
    """Load the tokenizer directory `path` (or its `tokenizer.json`); see the module docstring.

    `chat_template_path` (a `.jinja` file, or a `.json` file holding one) replaces the model's
    templates. Raises ValueError naming the path and the file at fault.

    `strict_optional=False` is for callers that only need token ids (token-mode routing, whose
    `--tokenizer-path` may name a `tokenizer.json` in a directory of unrelated files): a
    malformed `special_tokens_map.json`, `config.json`, `generation_config.json` or model chat
    template file is then ignored, as if absent, instead of failing the load.
    `tokenizer.json`, `tokenizer_config.json` (its own configuration) and `chat_template_path`
    must be sound either way."""
    given = Path(path)
    if given.is_dir():
        directory, tokenizer_file = given, given / TOKENIZER_FILE
    else:
        directory, tokenizer_file = given.parent, given
    if not tokenizer_file.is_file():
        raise ValueError(f"no {TOKENIZER_FILE} at {path}")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # the library raises a bare Exception on bad JSON or an unknown model
        raise ValueError(f"cannot load {tokenizer_file}: {exc}") from None

    def optional(read: Callable[[], _T], default: _T) -> _T:
        try:
            return read()
        except ValueError:
            if strict_optional:
                raise
            return default

    config_file = directory / CONFIG_FILE
    config = _read_json_object(config_file)
    special_tokens: dict[str, str] = {}
    additional: list[str] = []
    _take_special_tokens(config, config_file, special_tokens, additional)

    def read_special_map() -> tuple[dict[str, str], list[str]]:
        # HF lets special_tokens_map.json override what tokenizer_config.json says.
        tokens, extra = dict(special_tokens), list(additional)
        file = directory / SPECIAL_TOKENS_MAP_FILE
        _take_special_tokens(_read_json_object(file), file, tokens, extra)
        return tokens, extra

    special_tokens, additional = optional(read_special_map, (special_tokens, additional))

    add_bos = _optional_bool(config, "add_bos_token", config_file)
    add_eos = _optional_bool(config, "add_eos_token", config_file)
    _configure_post_processor(tokenizer, add_bos, add_eos, special_tokens)

    if chat_template_path is not None:
        templates = {"default": read_chat_template_file(chat_template_path)}
    else:
        templates = optional(lambda: _model_chat_templates(directory, config), {})

    eos_ids: set[int] = set()
    for name in (MODEL_CONFIG_FILE, GENERATION_CONFIG_FILE):
        file = directory / name
        eos_ids.update(optional(functools.partial(_read_eos_token_ids, file), []))

    return ModelTokenizer(
        path=str(directory),
        tokenizer=tokenizer,
        special_tokens=special_tokens,
        additional_special_tokens=additional,
        chat_templates=templates,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        model_max_length=_model_max_length(config.get("model_max_length"), config_file),
        eos_token_ids=eos_ids,
    )


def read_chat_template_file(path: str | Path) -> str:
    """The Jinja source in a chat template file: a `.json` file holds `{"chat_template": ...}`
    (or a bare JSON string, or HF's list of named templates, whose "default" is taken); any other
    file is the template itself, read as it is (HF does not strip it; Jinja drops one trailing
    newline by itself)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"no chat template file at {path}")
    if file.suffix == ".json":
        data = _read_json(file)
        if isinstance(data, dict) and "chat_template" in data:
            data = data["chat_template"]
        templates = _templates_from_value(data, file)
        if "default" not in templates:
            raise ValueError(f"{file}: no default chat template in it")
        return templates["default"]
    return _read_text(file)


def _model_chat_templates(directory: Path, config: Mapping[str, Any]) -> dict[str, str]:
    templates: dict[str, str] = {}
    if "chat_template" in config and config["chat_template"] is not None:
        templates = _templates_from_value(config["chat_template"], directory / CONFIG_FILE)
    jinja, as_json = directory / CHAT_TEMPLATE_JINJA, directory / CHAT_TEMPLATE_JSON
    if jinja.is_file():
        templates = {"default": _read_text(jinja)}
    elif as_json.is_file():
        data = _read_json(as_json)
        if isinstance(data, dict) and "chat_template" in data:
            data = data["chat_template"]
        templates = _templates_from_value(data, as_json)
    extra = directory / ADDITIONAL_CHAT_TEMPLATES_DIR
    if extra.is_dir():
        for file in sorted(extra.glob("*.jinja")):
            if file.is_file():
                templates[file.stem] = _read_text(file)
    return templates


def _templates_from_value(value: Any, file: Path) -> dict[str, str]:
    """A `chat_template` value: one template (named "default") or HF's list of named ones."""
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        templates: dict[str, str] = {}
        for entry in value:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str)):
                raise ValueError(f"{file}: chat_template list entries must be {{'name': str, 'template': str}}")
            templates[entry["name"]] = entry["template"]
        return templates
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)  # {name: template}, as HF keeps them in memory
    raise ValueError(f"{file}: chat_template must be a string or a list of named templates")


def _take_special_tokens(source: Mapping[str, Any], file: Path, into: dict[str, str], additional: list[str]) -> None:
    for name in SPECIAL_TOKEN_NAMES:
        if name in source and source[name] is not None:
            into[name] = _token_text(source[name], name, file)
    extra = source.get("additional_special_tokens")
    if extra is not None:
        if not isinstance(extra, list):
            raise ValueError(f"{file}: additional_special_tokens must be a list")
        additional[:] = [_token_text(token, "additional_special_tokens", file) for token in extra]


def _token_text(value: Any, name: str, file: Path) -> str:
    """A special token as a string or a serialized AddedToken (`{"content": ..., ...}`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise ValueError(f"{file}: {name} must be a string or an AddedToken object with a content string")


def _optional_bool(config: Mapping[str, Any], name: str, file: Path) -> bool | None:
    value = config.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"{file}: {name} must be true or false")


def _model_max_length(value: Any, file: Path) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{file}: model_max_length must be a number")
    if value <= 0 or value >= _NO_LIMIT:
        return None
    return int(value)


def _eos_token_ids(config: Mapping[str, Any], file: Path) -> list[int]:
    value = config.get("eos_token_id")
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{file}: eos_token_id must be a token id or a list of token ids")
    return list(values)


def _configure_post_processor(
    tokenizer: Tokenizer, add_bos: bool | None, add_eos: bool | None, special: Mapping[str, str]
) -> None:
    """Honour an explicit `add_bos_token`/`add_eos_token: true` as HF's `update_post_processor`
    does: the sequence framed by BOS and/or EOS. Not set (or false) keeps what tokenizer.json's
    own post-processor does, as the reference does; with only add_eos set, a BOS is kept when
    the tokenizer added one before."""
    needs_eos = add_eos is True
    needs_bos = add_bos if add_bos is not None else needs_eos and bool(tokenizer.encode("", add_special_tokens=True).ids)
    if not (needs_bos or needs_eos):
        return
    pieces: list[tuple[str, int]] = []
    for wanted, name in ((needs_bos, "bos_token"), (needs_eos, "eos_token")):
        if not wanted:
            continue
        token = special.get(name)
        token_id = None if token is None else tokenizer.token_to_id(token)
        if token is None or token_id is None:
            return  # HF cannot frame with a token it does not have; neither do we
        pieces.append((token, token_id))
    bos = [f"{pieces[0][0]}:0"] if needs_bos else []
    eos = [f"{pieces[-1][0]}:0"] if needs_eos else []
    bos_b = [f"{pieces[0][0]}:1"] if needs_bos else []
    eos_b = [f"{pieces[-1][0]}:1"] if needs_eos else []
    tokenizer.post_processor = TemplateProcessing(
        single=[*bos, "$A:0", *eos],
        pair=[*bos, "$A:0", *eos, *bos_b, "$B:1", *eos_b],
        special_tokens=list(dict(pieces).items()),  # one entry when BOS and EOS are one token
    )


def _read_eos_token_ids(file: Path) -> list[int]:
    return _eos_token_ids(_read_json_object(file), file)


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {file}: {exc}") from None


def _read_json(file: Path) -> Any:
    try:
        return json.loads(_read_text(file))
    except RecursionError:
        raise ValueError(f"{file} is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
        raise ValueError(f"{file} is not valid JSON: {exc}") from None


def _read_json_object(file: Path) -> dict[str, Any]:
    """An optional JSON object file: {} when absent, a ValueError when present and broken."""
    if not file.exists():
        return {}
    data = _read_json(file)
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return data


__all__ = [
    "SPECIAL_TOKEN_NAMES",
    "TOKENIZER_FILE",
    "ModelTokenizer",
    "load_model_tokenizer",
    "read_chat_template_file",
]
