"""Chat templates rendered with Hugging Face semantics, sandboxed and bounded.

With gRPC workers the gateway turns OpenAI chat messages into the prompt the model was trained
on, as `transformers`' `apply_chat_template` would: the model's Jinja template, rendered in an
`ImmutableSandboxedEnvironment` with `trim_blocks` and `lstrip_blocks`, Jinja's default
`Undefined`, no trailing-newline keeping, the `loopcontrols` extension (and a no-op
`{% generation %}` tag, which HF's assistant-mask tracker defines, so templates using it parse),
`raise_exception(message)`, `strftime_now(format)` and a `tojson` filter that writes what Python's
`json.dumps` does (`ensure_ascii=False` by default, `indent`, `separators`, `sort_keys`). The
context is `messages`, `tools` (the OpenAI list of `{"type": "function", "function": {...}}`,
which is what HF templates expect; `None` when the request has none, as HF passes it),
`documents`, `add_generation_prompt`, the model's special tokens (`bos_token`, `eos_token`, ...)
and the request's template kwargs (`enable_thinking`, ...), which override the special tokens
but not the four names before them.

The rendered prompt is encoded without adding special tokens again (`tokenize_chat`): the
template writes the BOS where the model wants it, as HF's `apply_chat_template(tokenize=True)`.

Messages are prepared as the reference gateway (SMG 1.13) prepares them, since smg is a drop-in
for it: a template that iterates over a message's content (detected from its syntax tree: a loop
over `message.content`, `message['content']`, or a name set from them) gets the text parts as a
list; any other template gets them joined with a space. Image, audio, video and file parts are
refused (`MultimodalContentError`): gRPC mode has no multi-modal input yet. An assistant's
`tool_calls[].function.arguments`, a JSON string in the OpenAI API, is parsed into the object HF
templates expect (`{{ tool_call.arguments | tojson }}`). `continue_final_message` renders the
conversation without the final assistant message, with the generation prompt, then appends that
message's text, as the reference does.

Templates come from the operator (the model directory, `--chat-template`) or from the worker
(GetTokenizer), not from clients; still, a broken or hostile template must answer one request
with an error, never hang or exhaust the gateway. So besides the sandbox (no `__class__`, no
mutating lists and dicts):
- every loop iteration and every call spends one step of a budget (`RenderLimits.max_steps`):
  nested `range` loops, recursive macros and `loop(...)` recursion stop there (deep recursion
  stops earlier at Python's recursion limit);
- strings, lists and numbers made by operators, `~`, filters and method calls are capped
  (`max_chars`, and a bit length for integers) before or as they are made, so doubling a string
  in a loop or `'x' * 10**9` stops at the cap instead of allocating;
- the output is produced as a stream and capped at `max_chars`.
Every failure is a `ChatTemplateError` (its `code` is the error the HTTP layer answers with).

Sans-IO: `strftime_now` reads the clock the caller passes (`now`), or a fixed date.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, NoReturn, cast

from jinja2 import nodes
from jinja2.exceptions import TemplateError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols
from jinja2.filters import do_center, do_format, do_indent, do_replace
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

if TYPE_CHECKING:
    from jinja2 import Template

    from smg.tokenization.loader import ModelTokenizer

ContentFormat = Literal["string", "openai"]

#: What `strftime_now` reads when the caller passes no clock: a fixed day keeps rendering a pure
#: function of its inputs (the date Llama 3.1's templates fall back to when they have none).
DEFAULT_NOW = datetime(2024, 7, 26)

MULTIMODAL_MESSAGE = "multi-modal content is not supported in gRPC mode yet"

_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
_MEDIA_PART_TYPES = frozenset(
    {"image_url", "image", "input_image", "audio", "audio_url", "input_audio", "video", "video_url", "file", "input_file"}
)

# -- errors ---------------------------------------------------------------------------------


class ChatTemplateError(ValueError):
    """The template could not be compiled or rendered for these messages: 400 `chat_template_error`."""

    code = "chat_template_error"


class NoChatTemplateError(ChatTemplateError):
    """The model has no (default) chat template: 400 `process_messages_failed`, as the reference
    answers a chat request for a directory with only tokenizer.json."""

    code = "process_messages_failed"


class MessagesError(ChatTemplateError):
    """The messages cannot be given to a template (a part of an unknown type, tool-call
    arguments that are not JSON): 400 `process_messages_failed`."""

    code = "process_messages_failed"


class MultimodalContentError(MessagesError):
    """An image, audio, video or file part: gRPC mode has no multi-modal input yet."""

    def __init__(self, part_type: str) -> None:
        super().__init__(MULTIMODAL_MESSAGE)
        self.part_type = part_type


class _LimitExceeded(TemplateError):
    """A render went past `RenderLimits`; raised inside Jinja, reported as ChatTemplateError."""


# -- limits ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """Bounds of one render. The defaults are far above any real prompt (16 Mi characters is
    millions of tokens; two million loop steps is a thousand-message chat through a template
    with nested loops) and low enough that a runaway template costs a second or so of CPU."""

    max_chars: int = 16 * 1024 * 1024
    max_steps: int = 2_000_000
    max_int_bits: int = 64 * 1024


DEFAULT_LIMITS = RenderLimits()


class _Budget:
    """What is left of one render's limits; found through a ContextVar by the guards that the
    compiled template calls, so a template compiled once serves concurrent renders."""

    __slots__ = ("limits", "steps")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.steps = limits.max_steps

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise _LimitExceeded(f"chat template exceeded {self.limits.max_steps} steps (loop iterations and calls)")

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.step()
            yield item

    def check_size(self, value: Any) -> Any:
        if isinstance(value, str | list | tuple | dict) and len(value) > self.limits.max_chars:
            raise _LimitExceeded(f"chat template made a value longer than {self.limits.max_chars}")
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > self.limits.max_int_bits:
            raise _LimitExceeded(f"chat template made an integer over {self.limits.max_int_bits} bits")
        return value

    def check_arguments(self, args: Iterable[Any]) -> None:
        """Refuse integer arguments (widths, counts) that would build a value over the cap."""
        for arg in args:
            if isinstance(arg, int) and not isinstance(arg, bool) and arg > self.limits.max_chars:
                raise _LimitExceeded(f"chat template asked for a width or count of {arg}")

    def check_format(self, fmt: Any, args: Iterable[Any] = ()) -> None:
        """A `%` or `str.format` string asking for a field wider than the cap is refused before
        Python builds it; `*` widths take theirs from the arguments, which are checked too."""
        if not isinstance(fmt, str):
            return
        for digits in _DIGITS.findall(fmt):
            if len(digits) > 9 or int(digits) > self.limits.max_chars:
                raise _LimitExceeded("chat template asked for a format field wider than the output cap")
        self.check_arguments(args)

    def check_replace(self, text: Any, old: Any, new: Any) -> None:
        if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
            return
        hits = text.count(old) if old else len(text) + 1
        if len(text) + hits * (len(new) - len(old)) > self.limits.max_chars:
            raise _LimitExceeded(f"chat template replace would make a string longer than {self.limits.max_chars}")


_DIGITS = re.compile(r"\d+")
_BUDGET: ContextVar[_Budget | None] = ContextVar("smg_chat_template_budget", default=None)


def _iter_guard(iterable: Any) -> Any:
    """Wraps every `{% for %}` iterable (put there by `_Guards`): one step per iteration."""
    budget = _BUDGET.get()
    return iterable if budget is None else budget.iterate(iterable)


def _size_guard(value: Any) -> Any:
    """Wraps every `~` concatenation and filter result (put there by `_Guards`)."""
    budget = _BUDGET.get()
    return value if budget is None else budget.check_size(value)


#: The filter names the guards are registered under: `_Guards` applies them to the parsed
#: template. Filters are called directly by the compiled code (a call through the sandbox would
#: cost several times more), and a template cannot rebind a filter.
_ITER_GUARD = "_smg_iter_guard"
_SIZE_GUARD = "_smg_size_guard"


def _guarded(name: str, node: nodes.Expr) -> nodes.Filter:
    guard = nodes.Filter(node, name, [], [], None, None)
    guard.set_lineno(node.lineno or 1)
    return guard


class _Guards(NodeTransformer):
    """Rewrites a parsed template so its loops, concatenations and filters pass through the
    guards above."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _guarded(_ITER_GUARD, cast(nodes.Expr, node.iter))
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _guarded(_SIZE_GUARD, node)

    def visit_Filter(self, node: nodes.Filter) -> nodes.Node:
        self.generic_visit(node)
        return node if node.node is None else _guarded(_SIZE_GUARD, node)

    def visit_FilterBlock(self, node: nodes.FilterBlock) -> nodes.Node:
        # The block's own filter must stay a Filter node (its input is the block's body).
        node.body = [self.visit(child) for child in node.body]
        return node


# -- the environment ------------------------------------------------------------------------


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for HF's training masks;
    rendering a prompt only needs its body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: Any) -> NoReturn:
    raise TemplateError(str(message))


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | str | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    """HF's `tojson`: Python's json.dumps with its options and no HTML escaping (Jinja's own
    filter escapes `<`, `>`, `&` and `'`, which would change the prompt)."""
    if separators is not None:
        separators = tuple(separators)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _guarded_center(value: Any, width: int = 80) -> str:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_arguments([width])
    return do_center(value, width)


def _guarded_indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    budget = _BUDGET.get()
    if budget is not None:
        pad = len(width) if isinstance(width, str) else width
        lines = s.count("\n") + 1 if isinstance(s, str) else 1
        budget.check_arguments([pad * lines if isinstance(pad, int) else pad])
    return do_indent(s, width, first, blank)


def _guarded_format(value: str, *args: Any, **kwargs: Any) -> str:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_format(value, [*args, *kwargs.values()])
    return do_format(value, *args, **kwargs)


def _guarded_replace(eval_ctx: Any, s: str, old: str, new: str, count: int | None = None) -> str:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_replace(str(s), old, new)
    return do_replace(eval_ctx, s, old, new, count)


_guarded_replace.jinja_pass_arg = do_replace.jinja_pass_arg  # type: ignore[attr-defined]


class _SandboxEnvironment(ImmutableSandboxedEnvironment):
    """HF's sandbox, plus the step budget on calls and the size caps on operators."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.step()
            target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
            owner = getattr(target, "__self__", None)
            if isinstance(owner, str):
                name = getattr(target, "__name__", "")
                values = [v for k, v in kwargs.items() if not k.startswith("_")]
                budget.check_arguments([*args, *values])
                if name in ("format", "format_map"):
                    budget.check_format(owner)
                elif name == "replace" and len(args) >= 2:
                    budget.check_replace(owner, args[0], args[1])
        result = super().call(context, obj, *args, **kwargs)
        return result if budget is None else budget.check_size(result)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _BUDGET.get()
        if budget is None:
            return self.binop_table[operator](left, right)
        limits = budget.limits
        if operator == "+":  # the common case (templates concatenate with +): check the result only
            result = left + right
            if isinstance(result, str | list | tuple) and len(result) > limits.max_chars:
                raise _LimitExceeded(f"chat template made a value longer than {limits.max_chars}")
            return result
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and _is_int(times) and len(seq) * max(times, 0) > limits.max_chars:
                    raise _LimitExceeded(f"chat template repetition would exceed {limits.max_chars}")
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > limits.max_int_bits:
                raise _LimitExceeded(f"chat template made an integer over {limits.max_int_bits} bits")
        elif operator == "**":
            if _is_int(left) and _is_int(right) and abs(left) > 1 and left.bit_length() * right > limits.max_int_bits:
                raise _LimitExceeded(f"chat template made an integer over {limits.max_int_bits} bits")
        elif operator == "%" and isinstance(left, str):
            budget.check_format(left, right if isinstance(right, tuple | list) else [right])
        return budget.check_size(self.binop_table[operator](left, right))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _make_environment() -> _SandboxEnvironment:
    env = _SandboxEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag])
    env.globals["raise_exception"] = _raise_exception
    env.globals.pop("lipsum", None)  # unbounded text generator; no chat template uses it
    env.filters[_ITER_GUARD] = _iter_guard
    env.filters[_SIZE_GUARD] = _size_guard
    env.filters["tojson"] = _tojson
    env.filters["center"] = _guarded_center
    env.filters["indent"] = _guarded_indent
    env.filters["format"] = _guarded_format
    env.filters["replace"] = _guarded_replace
    return env


_ENV = _make_environment()


# -- messages -------------------------------------------------------------------------------


def detect_content_format(ast: nodes.Template) -> ContentFormat:
    """Return "openai" when the template loops over a message's content (then it expects a list
    of parts), else "string". The reference makes this choice from the template's syntax tree too."""
    content_names = {
        assign.target.name
        for assign in ast.find_all(nodes.Assign)
        if isinstance(assign.target, nodes.Name) and _is_content_access(assign.node)
    }
    for loop in ast.find_all(nodes.For):
        iterable = _unwrap_filters(loop.iter)
        if _is_content_access(iterable) or (isinstance(iterable, nodes.Name) and iterable.name in content_names):
            return "openai"
    return "string"


def _unwrap_filters(expr: nodes.Node) -> nodes.Node:
    while isinstance(expr, nodes.Filter) and expr.node is not None:
        expr = expr.node
    return expr


def _is_content_access(expr: nodes.Node) -> bool:
    expr = _unwrap_filters(expr)
    if isinstance(expr, nodes.Getattr):
        return expr.attr == "content"
    if isinstance(expr, nodes.Getitem):
        return isinstance(expr.arg, nodes.Const) and expr.arg.value == "content"
    return False


def prepare_messages(messages: Sequence[Mapping[str, Any]], content_format: ContentFormat) -> list[dict[str, Any]]:
    """OpenAI chat messages as a template takes them (copies; the request is left alone):
    text parts joined with a space ("string") or kept as a list of text parts ("openai"),
    media parts refused, assistant tool-call arguments parsed from their JSON string."""
    prepared: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise MessagesError(f"messages[{index}] must be an object")
        if not isinstance(message.get("role"), str):
            raise MessagesError(f"messages[{index}].role must be a string")
        copy = dict(message)
        content = copy.get("content")
        if isinstance(content, list):
            copy["content"] = _prepare_parts(content, content_format, index)
        elif content is not None and not isinstance(content, str):
            raise MessagesError(f"messages[{index}].content must be a string or a list of content parts")
        if copy["role"] == "assistant" and copy.get("tool_calls"):
            copy["tool_calls"] = _prepare_tool_calls(copy["tool_calls"], index)
        prepared.append(copy)
    return prepared


def _prepare_parts(parts: list[Any], content_format: ContentFormat, index: int) -> str | list[dict[str, Any]]:
    texts: list[str] = []
    for part in parts:
        if isinstance(part, str):  # lenient: a bare string is a text part
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            raise MessagesError(f"messages[{index}].content parts must be objects")
        kind = part.get("type")
        if kind in _TEXT_PART_TYPES and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in _MEDIA_PART_TYPES:
            raise MultimodalContentError(str(kind))
        else:
            raise MessagesError(f"messages[{index}].content has a part of unsupported type {kind!r}")
    if content_format == "openai":
        return [{"type": "text", "text": text} for text in texts]
    return " ".join(texts)


def _prepare_tool_calls(tool_calls: Any, index: int) -> list[Any]:
    if not isinstance(tool_calls, list):
        raise MessagesError(f"messages[{index}].tool_calls must be a list")
    prepared: list[Any] = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("arguments"), str):
            try:
                arguments = json.loads(function["arguments"])
            except json.JSONDecodeError as exc:
                raise MessagesError(f"messages[{index}]: tool call arguments are not valid JSON: {exc}") from None
            call = {**call, "function": {**function, "arguments": arguments}}
        prepared.append(call)
    return prepared


def _final_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, Mapping) and isinstance(part.get("text"), str))
    return ""


# -- templates ------------------------------------------------------------------------------


class ChatTemplate:
    """One compiled chat template (compile once with `compile_chat_template`, render often;
    rendering is thread-safe)."""

    __slots__ = ("_template", "content_format", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            ast = _ENV.parse(source)
        except TemplateSyntaxError as exc:
            raise ChatTemplateError(f"chat template syntax error at line {exc.lineno}: {exc.message}") from None
        except Exception as exc:  # Jinja extensions and the lexer raise others on odd input
            raise ChatTemplateError(f"chat template does not compile: {type(exc).__name__}: {exc}") from None
        self.content_format: ContentFormat = detect_content_format(ast)
        guarded = _Guards().visit(ast)
        # Jinja folds constant expressions while compiling (`'%09999999d' | format(1)` would be
        # built right here): compiling under a budget makes the guards refuse such a fold, which
        # Jinja then leaves to run time, where the render's budget refuses it with a message.
        token = _BUDGET.set(_Budget(DEFAULT_LIMITS))
        try:
            self._template: Template = _ENV.from_string(guarded)
        except TemplateSyntaxError as exc:
            raise ChatTemplateError(f"chat template syntax error at line {exc.lineno}: {exc.message}") from None
        except Exception as exc:
            raise ChatTemplateError(f"chat template does not compile: {type(exc).__name__}: {exc}") from None
        finally:
            _BUDGET.reset(token)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        special_tokens: Mapping[str, Any] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        now: datetime | None = None,
        limits: RenderLimits = DEFAULT_LIMITS,
    ) -> str:
        """The prompt text for `messages` (OpenAI chat messages); see the module docstring.

        Raises MultimodalContentError, MessagesError or ChatTemplateError."""
        prepared = prepare_messages(messages, self.content_format)
        suffix = ""
        if continue_final_message and prepared and prepared[-1]["role"] == "assistant":
            suffix = _final_text(prepared.pop())
            add_generation_prompt = True
        if tools is not None and not all(isinstance(tool, Mapping) for tool in tools):
            raise MessagesError("tools must be a list of objects")
        clock = now or DEFAULT_NOW
        variables: dict[str, Any] = {**(special_tokens or {}), **(template_kwargs or {})}
        variables.update(
            messages=prepared,
            tools=None if tools is None else list(tools),
            documents=None if documents is None else list(documents),
            add_generation_prompt=add_generation_prompt,
            strftime_now=clock.strftime,
        )
        return self._generate(variables, limits) + suffix

    def _generate(self, variables: dict[str, Any], limits: RenderLimits) -> str:
        budget = _Budget(limits)
        token = _BUDGET.set(budget)
        pieces: list[str] = []
        size = 0
        try:
            for piece in self._template.generate(variables):
                size += len(piece)
                if size > limits.max_chars:
                    raise _LimitExceeded(f"chat template output exceeds {limits.max_chars} characters")
                pieces.append(piece)
        except _LimitExceeded as exc:
            raise ChatTemplateError(str(exc)) from None
        except TemplateError as exc:  # raise_exception(...), sandbox refusals, Undefined misuse
            raise ChatTemplateError(exc.message or type(exc).__name__) from None
        except RecursionError:
            raise ChatTemplateError("chat template recursed too deeply") from None
        except Exception as exc:  # a template can make Python raise anything (TypeError, ZeroDivisionError, ...)
            raise ChatTemplateError(f"chat template failed to render: {type(exc).__name__}: {exc}") from None
        finally:
            _BUDGET.reset(token)
        return "".join(pieces)


@lru_cache(maxsize=64)
def compile_chat_template(source: str) -> ChatTemplate:
    """The compiled template for `source`, cached: a model's one or two templates compile once."""
    return ChatTemplate(source)


def select_chat_template(templates: Mapping[str, str], *, tools: bool = False, name: str | None = None) -> str:
    """HF's choice among a model's templates: `name` when given (a template name, else itself a
    template source, as HF's `chat_template` argument), "tool_use" for a request with tools
    when there is one, else "default"."""
    if name is not None:
        return templates.get(name, name)
    if not templates:
        raise NoChatTemplateError(
            "the model has no chat template (none in tokenizer_config.json, no chat_template.jinja); "
            "give one with --chat-template"
        )
    if tools and "tool_use" in templates:
        return templates["tool_use"]
    if "default" in templates:
        return templates["default"]
    raise NoChatTemplateError(f"the model has several chat templates ({', '.join(sorted(templates))}) and none is the default")


def apply_chat_template(
    tokenizer: ModelTokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
    template_kwargs: Mapping[str, Any] | None = None,
    chat_template: str | None = None,
    now: datetime | None = None,
    limits: RenderLimits = DEFAULT_LIMITS,
) -> str:
    """The prompt text for `messages` with the model's template (or `chat_template`, a name or
    a source) and its special tokens, as HF's `tokenizer.apply_chat_template(tokenize=False)`."""
    source = select_chat_template(tokenizer.chat_templates, tools=tools is not None, name=chat_template)
    return compile_chat_template(source).render(
        messages,
        tools=tools,
        documents=documents,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        special_tokens=tokenizer.template_variables(),
        template_kwargs=template_kwargs,
        now=now,
        limits=limits,
    )


def tokenize_chat(tokenizer: ModelTokenizer, messages: Sequence[Mapping[str, Any]], **options: Any) -> tuple[str, list[int]]:
    """The prompt text and its ids, encoded without adding special tokens again (HF's
    `apply_chat_template(tokenize=True)`): the template already placed the BOS."""
    text = apply_chat_template(tokenizer, messages, **options)
    return text, tokenizer.encode(text, add_special_tokens=False)


__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_NOW",
    "MULTIMODAL_MESSAGE",
    "ChatTemplate",
    "ChatTemplateError",
    "ContentFormat",
    "MessagesError",
    "MultimodalContentError",
    "NoChatTemplateError",
    "RenderLimits",
    "apply_chat_template",
    "compile_chat_template",
    "detect_content_format",
    "prepare_messages",
    "select_chat_template",
    "tokenize_chat",
]
