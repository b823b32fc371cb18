"""The reference's parser names, what smg does with each, and the default chosen from a model id.

``--tool-call-parser`` and ``--reasoning-parser`` take the reference's names (its
``--help`` lists them; ``smg/config/reference_flags.tsv`` keeps the list). A name smg implements
gives a fresh parser; a name of the reference's that smg does not implement is refused with
"not supported by smg" (so a deployment copied from the reference fails at startup, saying
why, instead of serving unparsed markup); any other name is "unknown".

Without a configured name, the parser is chosen from the model id as the reference chooses it
(its legacy parser factories, read from its source):

* tool calls: the pattern whose stem (the pattern without its trailing ``*``) is the longest
  case-insensitive substring of the model id wins (``TOOL_DEFAULTS``); no match: no parsing;
* reasoning: the first pattern, in the reference's order, that is a case-insensitive substring
  of the model id (``REASONING_DEFAULTS``); no match: no reasoning parsing.

A default may name a format smg does not implement (``qwen_xml`` for Qwen3-Coder, ``kimik2``…):
``default_*`` report the reference's choice; ``resolve_*`` give None for it (the output passes
through unparsed) and the gateway may say so.

How the request feeds the parser (as the reference does): tool calls are parsed only when the
request offers tools and ``tool_choice`` is not ``"none"``; the offered tool names are passed as
``tools``, and a call to another name is not a call (its text stays content; the reference drops
it). Reasoning is parsed when the request wants it separated (``separate_reasoning``, default
true); when the rendered prompt already opened the thinking block (the template's thinking toggle
is on), the gateway passes ``in_reasoning=True``.
"""

from __future__ import annotations

from collections.abc import Iterable

from smg.parsers.reasoning import REASONING_CONFIGS, ReasoningParser
from smg.parsers.tool_calls.base import ToolParser
from smg.parsers.tool_calls.deepseek import DeepSeekV3ToolParser, DeepSeekV31ToolParser
from smg.parsers.tool_calls.json_calls import JsonToolParser
from smg.parsers.tool_calls.llama import LlamaToolParser
from smg.parsers.tool_calls.mistral import MistralToolParser
from smg.parsers.tool_calls.passthrough import PassthroughToolParser
from smg.parsers.tool_calls.pythonic import PythonicToolParser
from smg.parsers.tool_calls.qwen import QwenToolParser
from smg.parsers.types import IdFactory

#: The reference's (SMG 1.13) ``--tool-call-parser`` choices, in its order.
REFERENCE_TOOL_PARSERS: tuple[str, ...] = (
    "cohere", "deepseek", "deepseek31", "deepseek32", "deepseek_v4", "deepseek_v4.1", "deepseek_v41",
    "dots3", "function_gemma", "gemma4", "glm", "glm4", "glm45_moe", "glm47_moe", "hf", "hy4", "hy_v4",
    "inkling", "iquest", "json", "k2_horizon", "kimi_k3", "kimik2", "lfm2.5", "ling", "llama",
    "llama_nemotron", "minicpm5", "minimax_m2", "minimax_m3", "mistral", "mistral_v13", "nemotron",
    "olmo3", "passthrough", "plain", "pythonic", "qwen", "qwen2.5", "qwen3", "qwen3_tagged",
    "qwen3_tagged_direct", "qwen_coder", "qwen_xml", "sarashina", "seed_oss", "step3", "xlam",
)  # fmt: skip

#: The reference's (SMG 1.13) ``--reasoning-parser`` choices, in its order.
REFERENCE_REASONING_PARSERS: tuple[str, ...] = (
    "base", "cohere_cmd", "deepseek_r1", "deepseek_v31", "deepseek_v4", "deepseek_v4.1", "deepseek_v41",
    "dots3", "function_gemma", "gemma4", "glm", "glm4", "glm45", "hf", "hy4", "hy_v4", "inkling", "iquest",
    "json", "k2_horizon", "kimi", "kimi_k25", "kimi_k3", "kimi_thinking", "lfm2.5", "ling",
    "llama_nemotron", "minicpm5", "minimax", "minimax_m2", "minimax_m3", "mistral_v13", "nano_v3",
    "olmo3", "passthrough", "plain", "qwen2.5", "qwen3", "qwen3_tagged", "qwen3_tagged_direct",
    "qwen3_thinking", "seed_oss", "step3", "xlam",
)  # fmt: skip

#: The tool-call formats smg implements, by the reference's names. ``qwen2.5`` and ``qwen3`` are
#: the same ``<tool_call>`` JSON format as ``qwen``; ``plain`` is ``passthrough``.
TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "json": JsonToolParser,
    "qwen": QwenToolParser,
    "qwen2.5": QwenToolParser,
    "qwen3": QwenToolParser,
    "llama": LlamaToolParser,
    "mistral": MistralToolParser,
    "pythonic": PythonicToolParser,
    "deepseek": DeepSeekV3ToolParser,
    "deepseek31": DeepSeekV31ToolParser,
    "passthrough": PassthroughToolParser,
    "plain": PassthroughToolParser,
}

#: The reasoning formats smg implements (every one a configuration of the same parser).
REASONING_PARSERS: frozenset[str] = frozenset(REASONING_CONFIGS)

#: The reference's model-id patterns for tool parsers: (stem, parser); the longest stem found in
#: the lowercased model id wins.
TOOL_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("gpt-4", "json"),
    ("gpt-3.5", "json"),
    ("gpt-4o", "json"),
    ("claude-", "json"),
    ("mistral-", "mistral"),
    ("mixtral-", "mistral"),
    ("qwen/qwen3.5", "qwen_xml"),
    ("qwen3.5", "qwen_xml"),
    ("qwen/qwen3-coder", "qwen_xml"),
    ("qwen3-coder", "qwen_xml"),
    ("qwen", "qwen"),
    ("llama-4", "pythonic"),
    ("meta-llama-4", "pythonic"),
    ("llama-3.2", "llama"),
    ("meta-llama-3.2", "llama"),
    ("llama-", "json"),
    ("meta-llama-", "json"),
    ("deepseek-v3", "deepseek"),
    ("deepseek-ai/deepseek-v3", "deepseek"),
    ("deepseek-v3.1", "deepseek31"),
    ("deepseek-ai/deepseek-v3.1", "deepseek31"),
    ("deepseek-v3.2-exp", "deepseek31"),
    ("deepseek-ai/deepseek-v3.2-exp", "deepseek31"),
    ("deepseek-v3.2", "deepseek32"),
    ("deepseek-ai/deepseek-v3.2", "deepseek32"),
    ("deepseek-v4", "deepseek_v4"),
    ("deepseek-ai/deepseek-v4", "deepseek_v4"),
    ("deepseek-", "pythonic"),
    ("glm-4.5", "glm45_moe"),
    ("glm-4.6", "glm45_moe"),
    ("glm-4.7", "glm47_moe"),
    ("glm-5", "glm47_moe"),
    ("glm-", "json"),
    ("sarashina", "sarashina"),
    ("step3", "step3"),
    ("step-3", "step3"),
    ("kimi-k2", "kimik2"),
    ("kimi-k3", "kimi_k3"),
    ("kimi_k3", "kimi_k3"),
    ("inkling", "inkling"),
    ("minimax", "minimax_m2"),
    ("command-r", "cohere"),
    ("command-r-plus", "cohere"),
    ("command-a", "cohere"),
    ("c4ai-command", "cohere"),
    ("cohere", "cohere"),
    ("cohereforai", "cohere"),
    ("gemini-", "json"),
    ("palm-", "json"),
    ("gemma-", "json"),
)

#: The reference's model-id patterns for reasoning parsers, in its order: the first found wins.
REASONING_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("deepseek-r1", "deepseek_r1"),
    ("deepseek-v3.1", "deepseek_v31"),
    ("deepseek-v3-1", "deepseek_v31"),
    ("qwen3-thinking", "qwen3_thinking"),
    ("qwen-thinking", "qwen3_thinking"),
    ("qwen3", "qwen3"),
    ("qwen", "qwen3"),
    ("glm45", "glm45"),
    ("glm47", "glm45"),
    ("glm-5", "glm45"),
    ("kimi-k2-thinking", "kimi_thinking"),
    ("kimi-k2.5", "kimi_k25"),
    ("kimi-k3", "kimi_k3"),
    ("kimi_k3", "kimi_k3"),
    ("kimi", "kimi"),
    ("step3", "step3"),
    ("minimax", "minimax"),
    ("minimax-m2", "minimax"),
    ("mm-m2", "minimax"),
    ("command-r", "cohere_cmd"),
    ("command-a", "cohere_cmd"),
    ("c4ai-command", "cohere_cmd"),
    ("cohere", "cohere_cmd"),
    ("nemotron-nano", "nano_v3"),
    ("nemotron-super", "nano_v3"),
    ("nano-v3", "nano_v3"),
    ("inkling", "inkling"),
)


class UnknownParser(ValueError):
    """A name that is not among the reference's parser names."""


class UnsupportedParser(ValueError):
    """One of the reference's parser names that smg does not implement."""


def _check(flag: str, name: str, implemented: Iterable[str], reference: tuple[str, ...]) -> None:
    if name in implemented:
        return
    supported = ", ".join(sorted(implemented))
    if name in reference:
        raise UnsupportedParser(f"{flag} {name!r} (a parser of the reference's) is not supported by smg; supported: {supported}")
    raise UnknownParser(f"{flag} {name!r} is unknown: not a parser name of the reference's; smg supports: {supported}")


def check_tool_parser(name: str) -> None:
    """Raise ``UnsupportedParser``/``UnknownParser`` (both ``ValueError``) unless ``name`` is
    implemented; for checking the flag at startup."""
    _check("--tool-call-parser", name, TOOL_PARSERS, REFERENCE_TOOL_PARSERS)


def check_reasoning_parser(name: str) -> None:
    _check("--reasoning-parser", name, REASONING_PARSERS, REFERENCE_REASONING_PARSERS)


def tool_parser_for(name: str, *, tools: Iterable[str] | None = None, id_factory: IdFactory | None = None) -> ToolParser:
    """A fresh tool-call parser (one per choice) of the named format."""
    check_tool_parser(name)
    return TOOL_PARSERS[name](tools=tools, id_factory=id_factory)


def reasoning_parser_for(name: str, *, in_reasoning: bool | None = None) -> ReasoningParser:
    """A fresh reasoning parser (one per choice) of the named format; ``in_reasoning`` overrides
    whether the output starts inside the thinking block (None: the format's default)."""
    check_reasoning_parser(name)
    return ReasoningParser(REASONING_CONFIGS[name], in_reasoning=in_reasoning)


def default_tool_parser(model_id: str) -> str | None:
    """The reference's tool parser for a model id (longest pattern found wins), or None."""
    model = model_id.lower()
    best: tuple[int, str] | None = None
    for stem, parser in TOOL_DEFAULTS:
        if stem in model and (best is None or len(stem) > best[0]):
            best = (len(stem), parser)
    return None if best is None else best[1]


def default_reasoning_parser(model_id: str) -> str | None:
    """The reference's reasoning parser for a model id (first pattern found wins), or None."""
    model = model_id.lower()
    for pattern, parser in REASONING_DEFAULTS:
        if pattern in model:
            return parser
    return None


def resolve_tool_parser(
    configured: str | None,
    model_id: str,
    *,
    tools: Iterable[str] | None = None,
    id_factory: IdFactory | None = None,
) -> ToolParser | None:
    """The parser for one choice: the configured one (checked at startup, so it exists), else the
    model's default when smg implements it, else None (no tool-call parsing)."""
    name = configured or default_tool_parser(model_id)
    if name is None or (configured is None and name not in TOOL_PARSERS):
        return None
    return tool_parser_for(name, tools=tools, id_factory=id_factory)


def resolve_reasoning_parser(
    configured: str | None, model_id: str, *, in_reasoning: bool | None = None
) -> ReasoningParser | None:
    """Like ``resolve_tool_parser``, for reasoning."""
    name = configured or default_reasoning_parser(model_id)
    if name is None or (configured is None and name not in REASONING_PARSERS):
        return None
    return reasoning_parser_for(name, in_reasoning=in_reasoning)
