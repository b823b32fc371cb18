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

import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, NoReturn, cast

from jinja2 import nodes
from jinja2.exceptions import TemplateError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols
from jinja2.filters import (
    do_batch,
    do_center,
    do_format,
    do_indent,
    do_pprint,
    do_replace,
    do_wordwrap,
    make_attrgetter,
    sync_do_join,
    sync_do_slice,
    sync_do_sum,
)
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer
from markupsafe import soft_str

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
    """Bounds of one render. Real chat templates render in well under 10 ms, produce well under
    1 MB and a few thousand steps; the defaults are far above that and low enough that a runaway
    template costs at most about `max_seconds` of CPU and a few hundred MB of memory.

    - `max_chars` (16 Mi): the output, in characters, and the estimated size of any one value a
      template makes: a string's length, 8 bytes a slot of a list (so 2 Mi items), and what a
      value would print as (a list of strings counts its strings) where it is printed, joined,
      concatenated with `~`, repeated with `*`, formatted or dumped with `tojson`. Those are
      estimated BEFORE Python builds the value; other results are checked as they are made.
    - `max_total_bytes` (128 Mi): the bytes of every value made during one render (strings,
      list and dict slots; values merely passed through, such as the messages, are not counted),
      so a loop making many big distinct values stops too.
    - `max_steps` (2 M): loop iterations and calls.
    - `max_seconds` (2 s): a deadline read from `clock` at every step (and while sizing big
      values), so steps that each cost milliseconds (`s.count(...)` on a 16 MB string) stop too.
      `clock` is a monotonic clock in seconds, given by the shell that renders for requests
      (`time.monotonic`); without one there is no deadline, only the step and byte budgets,
      so the core reads no clock of its own.
    - `max_int_bits` (64 Ki): integers made by arithmetic.
    """

    max_chars: int = 16 * 1024 * 1024
    max_steps: int = 2_000_000
    max_int_bits: int = 64 * 1024
    max_total_bytes: int = 128 * 1024 * 1024
    max_seconds: float = 2.0
    clock: Callable[[], float] | None = None


DEFAULT_LIMITS = RenderLimits()

#: Estimated bytes of one slot of a list or tuple, one entry of a dict or set, one small string
#: made by `split` (its object header), and one object with no better estimate.
_SLOT_BYTES = 8
_ENTRY_BYTES = 64
_PIECE_BYTES = 56
_OBJECT_BYTES = 64


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shallow_bytes(value: Any) -> int:
    """The bytes a newly made value holds itself (not the values it refers to)."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, list | tuple):
        return _SLOT_BYTES * len(value)
    if isinstance(value, dict | set | frozenset):
        return _ENTRY_BYTES * len(value)
    if isinstance(value, int):
        return value.bit_length() // 8
    return 0


class _Budget:
    """What is left of one render's limits; found through a ContextVar by the guards that the
    compiled template calls, so a template compiled once serves concurrent renders."""

    __slots__ = ("clock", "deadline", "limits", "output", "steps", "total")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.steps = limits.max_steps
        self.total = 0
        self.output = 0
        self.clock = limits.clock
        self.deadline = limits.clock() + limits.max_seconds if limits.clock is not None else 0.0

    def check_deadline(self) -> None:
        if self.clock is not None and self.clock() > self.deadline:
            raise _LimitExceeded(f"chat template ran longer than {self.limits.max_seconds} seconds")

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise _LimitExceeded(f"chat template exceeded {self.limits.max_steps} steps (loop iterations and calls)")
        self.check_deadline()

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.step()
            yield item

    def check_estimate(self, estimate: int, what: str = "a value") -> None:
        """Refuse, before it is built, a value estimated over the cap."""
        if estimate > self.limits.max_chars:
            raise _LimitExceeded(f"chat template made {what} longer than {self.limits.max_chars}")

    def check_size(self, value: Any) -> Any:
        """A value just made: under the cap, and its bytes spent from the render's total."""
        if _is_int(value) and value.bit_length() > self.limits.max_int_bits:
            raise _LimitExceeded(f"chat template made an integer over {self.limits.max_int_bits} bits")
        size = _shallow_bytes(value)
        if size > self.limits.max_chars:
            raise _LimitExceeded(f"chat template made a value longer than {self.limits.max_chars}")
        self.total += size
        if self.total > self.limits.max_total_bytes:
            raise _LimitExceeded(f"chat template made more than {self.limits.max_total_bytes} bytes of values")
        return value

    def measure(self, value: Any, *, indent: int = 0, per_item: int = 2) -> int:
        """Estimated length of `value` printed (str of a string is itself; a container's repr,
        or its JSON with `indent` a level and `per_item` separator characters an item). Stops
        counting once over the cap, so sizing a huge or self-sharing value costs little."""
        return _Measure(self, indent, per_item).size(value, 0)

    def measure_items(self, items: Sequence[Any], separator: int) -> int:
        """Estimated length of the items printed one after another, `separator` characters apart."""
        measure = _Measure(self, 0, 0)
        total = separator * max(len(items) - 1, 0)
        for item in items:
            total += measure.size(item, 0)
            if total > self.limits.max_chars:
                break
        return total

    def check_arguments(self, args: Iterable[Any]) -> None:
        """Refuse integer arguments (widths, counts) that would build a value over the cap."""
        for arg in args:
            if _is_int(arg) and arg > self.limits.max_chars:
                raise _LimitExceeded(f"chat template asked for a width or count of {arg}")

    def check_format(self, fmt: Any, args: Sequence[Any] = (), *, percent: bool = False) -> None:
        """A `%` or `str.format` string: no field wider than the cap (in the string, in `*`
        widths, or, for `str.format`'s nested fields `{0:{1}}`, in string arguments), and the
        result (each field at most the widest argument printed) estimated under the cap."""
        if not isinstance(fmt, str):
            return
        self._check_digits(fmt)
        self.check_arguments(args)
        if not percent and _NESTED_FIELD.search(fmt):
            for arg in args:
                if isinstance(arg, str):
                    self._check_digits(arg)
        fields = fmt.count("%" if percent else "{")
        if fields and args:
            widest = max(self.measure(arg) for arg in args)
            self.check_estimate(len(fmt) + fields * widest, "a formatted string")

    def _check_digits(self, text: str) -> None:
        for digits in _DIGITS.findall(text):
            if len(digits) > 9 or int(digits) > self.limits.max_chars:
                raise _LimitExceeded("chat template asked for a format field wider than the output cap")

    def check_replace(self, text: Any, old: Any, new: Any) -> None:
        if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
            return
        hits = text.count(old) if old else len(text) + 1
        if len(text) + hits * (len(new) - len(old)) > self.limits.max_chars:
            raise _LimitExceeded(f"chat template replace would make a string longer than {self.limits.max_chars}")

    def check_str_method(self, owner: str, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """The `str` methods whose result can be far bigger than their arguments."""
        if name in ("format", "format_map"):
            values = list(args) + list(kwargs.values())
            if name == "format_map" and args and isinstance(args[0], Mapping):
                values = list(args[0].values())
            self.check_format(owner, values)
        elif name == "replace" and len(args) >= 2:
            self.check_replace(owner, args[0], args[1])
        elif name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            if _is_int(tabsize):
                self.check_estimate(len(owner) + owner.count("\t") * max(tabsize, 0), "a string")
        elif name == "join" and args:
            items = args[0]
            if isinstance(items, list | tuple):
                self.check_estimate(self.measure_items(items, len(owner)), "a joined string")
        elif name in ("split", "rsplit"):
            sep = args[0] if args else kwargs.get("sep")
            if sep is None:
                if (len(owner) // 2 + 1) * _PIECE_BYTES + len(owner) <= self.limits.max_chars:
                    return  # short enough whatever it holds
                if owner.isascii():
                    pieces = sum(owner.count(space) for space in " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f") + 1
                else:
                    pieces = sum(1 for _ in _WORD.finditer(owner))
            elif isinstance(sep, str) and sep:
                pieces = owner.count(sep) + 1
            else:
                return
            self.check_estimate(len(owner) + pieces * _PIECE_BYTES, "a split")
        elif name == "splitlines":
            self.check_estimate(len(owner) + (len(_LINE_BREAK.findall(owner)) + 1) * _PIECE_BYTES, "a split")


class _Measure:
    """One sizing walk (see `_Budget.measure`); shared containers are sized once."""

    __slots__ = ("budget", "cap", "indent", "memo", "per_item", "visits")

    def __init__(self, budget: _Budget, indent: int, per_item: int) -> None:
        self.budget = budget
        self.cap = budget.limits.max_chars
        self.indent = indent
        self.per_item = per_item
        self.memo: dict[tuple[int, int], int] = {}
        self.visits = 0

    def size(self, value: Any, depth: int) -> int:
        if isinstance(value, str):
            return len(value) + 2 if depth else len(value)
        if value is None or isinstance(value, bool | float):
            return 24
        if isinstance(value, int):
            return value.bit_length() // 3 + 2
        if isinstance(value, Namespace):
            value = object.__getattribute__(value, "_Namespace__attrs")
        if not isinstance(value, list | tuple | dict | set | frozenset):
            return _OBJECT_BYTES
        key = (id(value), depth if self.indent else 0)
        known = self.memo.get(key)
        if known is not None:
            return known
        self.memo[key] = self.cap + 1  # a container inside itself is refused, not looped over
        items: Iterable[Any] = value.items() if isinstance(value, dict) else value
        gap = self.per_item + 1 + self.indent * (depth + 1) if self.indent else self.per_item
        total = 2
        for item in items:
            self.visits += 1
            if self.visits % 65536 == 0:
                self.budget.check_deadline()
            if isinstance(item, tuple) and isinstance(value, dict):
                total += self.size(item[0], depth + 1) + self.size(item[1], depth + 1) + gap + 2
            else:
                total += self.size(item, depth + 1) + gap
            if total > self.cap:
                break
        self.memo[key] = total
        return total


_DIGITS = re.compile(r"\d+")
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")
_WORD = re.compile(r"\S+")
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_BUDGET: ContextVar[_Budget | None] = ContextVar("smg_chat_template_budget", default=None)


def _iter_guard(iterable: Any) -> Any:
    """Wraps every `{% for %}` iterable (put there by `_Guards`): one step per iteration."""
    budget = _BUDGET.get()
    return iterable if budget is None else budget.iterate(iterable)


def _concat_guard(parts: list[Any]) -> str:
    """Every `~` concatenation (put there by `_Guards`): the printed parts are sized before
    they are printed and joined."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_estimate(budget.measure_items(parts, 0))
    result = "".join(map(str, parts))
    return result if budget is None else budget.check_size(result)


def _finalize(value: Any) -> Any:
    """Every `{{ ... }}` output: what it prints is sized (with the output so far) before it is."""
    budget = _BUDGET.get()
    if budget is not None and not isinstance(value, str) and budget.output + budget.measure(value) > budget.limits.max_chars:
        raise _LimitExceeded(f"chat template output exceeds {budget.limits.max_chars} characters")
    return value


#: The filter names the guards are registered under: `_Guards` applies them to the parsed
#: template. Filters are called directly by the compiled code (a call through the sandbox would
#: cost several times more), and a template cannot rebind a filter.
_ITER_GUARD = "_smg_iter_guard"
_CONCAT_GUARD = "_smg_concat_guard"


def _guarded(name: str, node: nodes.Expr) -> nodes.Filter:
    guard = nodes.Filter(node, name, [], [], None, None)
    guard.set_lineno(node.lineno or 1)
    return guard


class _Guards(NodeTransformer):
    """Rewrites a parsed template so its loops and concatenations pass through the guards above
    (filters are guarded where they are registered, `_make_environment`)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _guarded(_ITER_GUARD, cast(nodes.Expr, node.iter))
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        parts = nodes.List(list(node.nodes))
        parts.set_lineno(node.lineno or 1)
        return _guarded(_CONCAT_GUARD, parts)

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
    budget = _BUDGET.get()
    if budget is not None:
        width = 0
        if isinstance(indent, str):
            width = len(indent)
        elif isinstance(indent, int) and indent > 0:
            width = indent
        budget.check_arguments([width])
        per_item = 4
        if separators is not None and len(separators) == 2:
            per_item = sum(len(sep) for sep in separators if isinstance(sep, str))
        budget.check_estimate(budget.measure(value, indent=width, per_item=per_item), "JSON")
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
        budget.check_format(value, [*args, *kwargs.values()], percent=True)
    return do_format(value, *args, **kwargs)


def _guarded_replace(eval_ctx: Any, s: str, old: str, new: str, count: int | None = None) -> str:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_replace(str(s), old, new)
    return do_replace(eval_ctx, s, old, new, count)


def _guarded_join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    budget = _BUDGET.get()
    if budget is None:
        return sync_do_join(eval_ctx, value, d, attribute)
    if attribute is not None:
        value = map(make_attrgetter(eval_ctx.environment, attribute), value)
    items = list(value)
    budget.check_size(items)
    budget.check_estimate(budget.measure_items(items, len(str(d))), "a joined string")
    return sync_do_join(eval_ctx, items, d)


def _guarded_batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    budget = _BUDGET.get()
    if budget is not None and _is_int(linecount):
        budget.check_estimate(linecount * _SLOT_BYTES, "a batch")
    return do_batch(value, linecount, fill_with)


def _guarded_slice(value: Any, slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    budget = _BUDGET.get()
    if budget is not None and _is_int(slices):
        budget.check_estimate(slices * _PIECE_BYTES, "a slice")
    return sync_do_slice(value, slices, fill_with)


def _guarded_wordwrap(
    environment: Any,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    budget = _BUDGET.get()
    if budget is not None and isinstance(s, str):
        wrap = environment.newline_sequence if wrapstring is None else wrapstring
        # each line holds at least one character of `s`, so at most len(s) wraps
        budget.check_estimate(len(s) + (len(s) + 1) * len(str(wrap)), "a wrapped string")
    return do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)


def _guarded_sum(environment: Any, iterable: Iterable[Any], attribute: str | int | None = None, start: Any = 0) -> Any:
    budget = _BUDGET.get()
    if budget is None or not isinstance(start, list | tuple):
        return sync_do_sum(environment, iterable, attribute, start)
    # Summing sequences: Python copies the running total at each item (quadratic); when every
    # item has the start's type, build the same result in one pass, sized first.
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    items = list(iterable)
    budget.check_size(items)
    if not all(type(item) is type(start) for item in items):
        return sync_do_sum(environment, items, None, start)  # Python's TypeError, as HF's
    budget.check_estimate(_SLOT_BYTES * (len(start) + sum(len(item) for item in items)), "a sum")
    return type(start)(itertools.chain(start, *items))


def _guarded_list(value: Any) -> list[Any]:
    budget = _BUDGET.get()
    if budget is not None and isinstance(value, Sized):
        budget.check_estimate(_SLOT_BYTES * len(value), "a list")
    return list(value)


def _guarded_string(value: Any) -> Any:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_estimate(budget.measure(value), "a string")
    return soft_str(value)


def _guarded_pprint(value: Any) -> str:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_estimate(budget.measure(value, indent=1), "a string")
    return do_pprint(value)


def _spending(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose result is checked against the cap and spent from the render's total
    (also when called by `map`, `select`, ...)."""

    def spend(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        budget = _BUDGET.get()
        return result if budget is None else budget.check_size(result)

    pass_arg = getattr(function, "jinja_pass_arg", None)
    if pass_arg is not None:
        spend.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    return spend


_guarded_replace.jinja_pass_arg = do_replace.jinja_pass_arg  # type: ignore[attr-defined]
_guarded_join.jinja_pass_arg = sync_do_join.jinja_pass_arg  # type: ignore[attr-defined]
_guarded_wordwrap.jinja_pass_arg = do_wordwrap.jinja_pass_arg  # type: ignore[attr-defined]
_guarded_sum.jinja_pass_arg = sync_do_sum.jinja_pass_arg  # type: ignore[attr-defined]


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
                values = {k: v for k, v in kwargs.items() if not k.startswith("_")}
                budget.check_arguments([*args, *values.values()])
                budget.check_str_method(owner, getattr(target, "__name__", ""), args, values)
        result = super().call(context, obj, *args, **kwargs)
        return result if budget is None else budget.check_size(result)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _BUDGET.get()
        if budget is None:
            return self.binop_table[operator](left, right)
        limits = budget.limits
        if operator == "+":  # the common case (templates concatenate with +): a cheap size check
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                budget.check_estimate(_shallow_bytes(left) + _shallow_bytes(right))
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and _is_int(times) and times > 0:
                    if _shallow_bytes(seq) * times > limits.max_chars:
                        raise _LimitExceeded(f"chat template repetition would exceed {limits.max_chars}")
                    if not isinstance(seq, str) and budget.measure(seq) * times > limits.max_chars:
                        raise _LimitExceeded(f"chat template repetition would exceed {limits.max_chars}")
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > limits.max_int_bits:
                raise _LimitExceeded(f"chat template made an integer over {limits.max_int_bits} bits")
        elif operator == "**":
            if _is_int(left) and _is_int(right) and abs(left) > 1 and left.bit_length() * right > limits.max_int_bits:
                raise _LimitExceeded(f"chat template made an integer over {limits.max_int_bits} bits")
        elif operator == "%" and isinstance(left, str):
            budget.check_format(left, right if isinstance(right, tuple | list) else [right], percent=True)
        return budget.check_size(self.binop_table[operator](left, right))


_GUARDED_FILTERS: dict[str, Callable[..., Any]] = {
    "tojson": _tojson,
    "center": _guarded_center,
    "indent": _guarded_indent,
    "format": _guarded_format,
    "replace": _guarded_replace,
    "join": _guarded_join,
    "batch": _guarded_batch,
    "slice": _guarded_slice,
    "wordwrap": _guarded_wordwrap,
    "sum": _guarded_sum,
    "list": _guarded_list,
    "string": _guarded_string,
    "pprint": _guarded_pprint,
}


def _make_environment() -> _SandboxEnvironment:
    env = _SandboxEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag], finalize=_finalize)
    env.globals["raise_exception"] = _raise_exception
    env.globals.pop("lipsum", None)  # unbounded text generator; no chat template uses it
    env.filters.update(_GUARDED_FILTERS)
    for name, function in list(env.filters.items()):
        env.filters[name] = _spending(function)
    env.filters[_ITER_GUARD] = _iter_guard
    env.filters[_CONCAT_GUARD] = _concat_guard
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
            except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
                raise MessagesError(f"messages[{index}]: tool call arguments are not valid JSON: {exc}") from None
            except RecursionError:
                raise MessagesError(f"messages[{index}]: tool call arguments are nested too deeply") from None
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
        # Jinja folds constant expressions while compiling (`'%09999999d' | format(1)` would be
        # built right here): compiling under a budget makes the guards refuse such a fold, which
        # Jinja then leaves to run time, where the render's budget refuses it with a message.
        # Parsing, inspecting and rewriting the tree recurse: a deeply nested expression (500
        # `+` in a row) is a RecursionError, reported as any compile error.
        token = _BUDGET.set(_Budget(DEFAULT_LIMITS))
        try:
            ast = _ENV.parse(source)
            self.content_format: ContentFormat = detect_content_format(ast)
            self._template: Template = _ENV.from_string(_Guards().visit(ast))
        except TemplateSyntaxError as exc:
            raise ChatTemplateError(f"chat template syntax error at line {exc.lineno}: {exc.message}") from None
        except RecursionError:
            raise ChatTemplateError("chat template does not compile: it is nested too deeply") from None
        except Exception as exc:  # Jinja extensions and the lexer raise others on odd input
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
                budget.output = size
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
