"""Untrusted jinja2 templates rendered with bounded work: a chat template is code from strangers (every Hub
model carries one in tokenizer_config.json), run on every conversation of a data set and every chat turn.

jinja2's ImmutableSandboxedEnvironment keeps a template away from Python's internals, from changing its
arguments and from ranges over 100,000 items. It does not stop two nested loops (10**10 steps), a macro
calling itself, or a string doubled forty times. BoundedEnvironment adds, for each render:

- steps: every loop iteration (each `{% for %}`'s iterable is wrapped when the template is compiled) and
  every call (function, method, macro, a recursive loop's `loop()`) costs one: STEPS in all and SECONDS of
  wall clock, both checked at each step (no signal, no tracing: it works in any thread)
- nesting: at most DEPTH calls deep, so a macro calling itself stops here, not in Python's RecursionError
- size: no string or list it builds (operators, `~`, filters, calls, blocks, macros) and not its output may
  hold more than SIZE characters and items; widths and counts passed to filters and methods (`center`,
  `'%*d'`, `'{:>9}'`) stay under ARGUMENT. Checked before the work where the work could be large, so a
  single C-level operation cannot run away (a value's size is walked only as far as the limit)
- files: the environment has no loader, and a template that includes, imports or extends another is refused
  when compiled: no template ever reads a file

The filters are jinja2's, `tojson` as transformers writes it, and `raise_exception` as transformers provides it
(a template's way to refuse a conversation). Failures are TemplateProblem: what went wrong, in words; the
caller names the template.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace, pass_context
from jinja2.visitor import NodeTransformer

STEPS = 1_000_000  # loop iterations + calls per render: a real chat template spends a few per message
SECONDS = 10.0  # wall clock per render; a real one takes well under a millisecond per message
DEPTH = 50  # nested calls (transformers' templates nest two or three)
SIZE = 8 << 20  # characters (and items) of any value built, and of the output: 8 MiB, some 2M tokens
ARGUMENT = 100_000  # the largest width or count a filter or method may be asked for (jinja2 caps ranges there)
BITS = 4096  # the largest integer a template may compute
CONTAINERS = (list, tuple, dict, set, frozenset, Namespace)
# a width or precision of 6+ digits in a %-format ('%1000000d') or in a str.format field ('{:>1000000}')
WIDE_FORMAT = re.compile(r"%[-#0 +]*\d*\.?\d{6,}|\{[^{}]*:[^{}]*?\d{6,}[^{}]*\}")
# '%*d' and '{:>{}}': the width comes from the arguments
WIDTH_ARGUMENT = re.compile(r"%[-#0 +]*\d*\.?\*|\{[^{}]*:[^{}]*\{")
STEPS_FILTER, JOIN_FILTER = "bounded_steps", "bounded_join"  # what Bounded routes loops and `~` through
INCLUDES = {"Include": "includes", "Import": "imports", "FromImport": "imports", "Extends": "extends"}


class TemplateProblem(Exception):
    """What is wrong with a template or one of its renders, as a phrase that follows the template's name."""


class Budget:
    """One render's allowance, kept per thread (a server may render in several)."""

    __slots__ = ("steps", "deadline", "depth")

    def __init__(self) -> None:
        self.steps, self.deadline, self.depth = STEPS, time.monotonic() + SECONDS, 0

    def spend(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise TemplateProblem(f"did not finish within {STEPS:,} steps (a loop or recursion that does not end?)")
        if time.monotonic() > self.deadline:
            raise TemplateProblem(f"did not finish within {SECONDS:g} s (a loop or recursion that does not end?)")


_local = threading.local()


def too_big(value: Any, limit: int = SIZE) -> bool:
    """Whether `value` holds more than `limit` characters and items in all: a string its length, a container
    its items and what they hold. A shared reference counts each time it appears, as str() and tojson would
    write it each time, but each container is walked once."""
    return isinstance(value, (str, *CONTAINERS)) and _weight(value, limit, {}) > limit


def _weight(value: Any, limit: int, seen: dict[int, int]) -> int:
    """What too_big counts, walking no further than past `limit`; `seen`: the weights of containers walked."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, CONTAINERS):
        return 1
    if id(value) in seen:  # alive while `value` is, so the id is not reused during the walk
        return seen[id(value)]
    seen[id(value)] = 1  # a namespace holding itself counts once
    items = dict(value._Namespace__attrs) if isinstance(value, Namespace) else value  # what its repr writes
    total = len(items)
    for child in itertools.chain(items.keys(), items.values()) if isinstance(items, dict) else items:
        if total > limit:
            break
        total += _weight(child, limit, seen)
    seen[id(value)] = total
    return total


def sized(value: Any, what: str = "a value") -> Any:
    """`value`, unless it is over SIZE (or an integer over BITS). Strings first: most values are."""
    kind = type(value)
    if kind is str:
        if len(value) > SIZE:
            raise TemplateProblem(f"builds {what} of more than {SIZE:,} characters")
    elif kind is int:
        if value.bit_length() > BITS:
            raise TemplateProblem(f"computes an integer of more than {BITS} bits")
    elif isinstance(value, CONTAINERS) and _weight(value, SIZE, {}) > SIZE:
        raise TemplateProblem(f"builds {what} of more than {SIZE:,} characters")
    return value


def output(value: Any) -> Any:
    """The environment's finalize: each `{{ ... }}` value, before str() writes it."""
    return sized(value, "an output value")


def check_arguments(args: Iterable[Any], name: str) -> None:
    """Widths and counts within ARGUMENT and values within SIZE, before a filter or method does the work."""
    for value in args:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > ARGUMENT:
            raise TemplateProblem(f"passes {value:,} to {name} (at most {ARGUMENT:,} is allowed)")
        sized(value, f"an argument of {name}")


def check_format(text: str, args: Any) -> None:
    """A %-format or str.format string and its arguments, before formatting."""
    if WIDE_FORMAT.search(text):
        raise TemplateProblem(f"formats with a width of 100,000 characters or more ({text[:40]!r})")
    args = args if isinstance(args, tuple) else (args,)
    if WIDTH_ARGUMENT.search(text):
        check_arguments(args, "a format's width")
    for value in args:
        sized(value, "a formatted value")


def bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` with its arguments (the filtered value, then widths and counts) and its result checked.
    functools.wraps keeps jinja2's pass_context / pass_environment mark: the filter is called as before."""
    passes = getattr(func, "jinja_pass_arg", None) is not None  # the first argument is a context or environment

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        value, *rest = args[1:] if passes else args
        sized(value, f"the value of the {name} filter")
        if name == "format" and isinstance(value, str):  # its arguments are values, not widths
            check_format(value, (*rest, *kwargs.values()))
        else:
            check_arguments([*rest, *kwargs.values()], f"the {name} filter")
        return sized(func(*args, **kwargs), f"a value with the {name} filter")

    return bounded


class Refusal(TemplateError):
    """raise_exception's: the template refuses the conversation it was given."""


def raise_exception(message: str) -> None:
    """transformers' global: a template's way to refuse a conversation ("roles must alternate")."""
    raise Refusal(message)


def tojson(value: Any, indent: int | None = None) -> str:
    """transformers' tojson: no HTML escaping, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with the bounds of this module's docstring."""

    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja2's names)
        budget = _local.budget
        budget.spend()
        name = getattr(__obj, "__name__", "a function")
        if name == "format_checked":  # str.format's arguments are values; its widths are checked
            check_format(__obj.text, (*args, *kwargs.values()))
        else:
            check_arguments([*args, *kwargs.values()], f"{'range' if name == 'safe_range' else name}()")
        if budget.depth >= DEPTH:
            raise TemplateProblem(
                f"calls nest deeper than {DEPTH} (a macro or a recursive loop calling itself without end?)"
            )
        budget.depth += 1
        try:
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        return sized(result)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "+":  # the common one (strings joined per message): its result is checked, cheaply
            result = left + right
            return result if type(result) is str and len(result) <= SIZE else sized(result)
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right * abs(left).bit_length() > BITS:
                raise TemplateProblem(f"computes {left} ** {right}, an integer of more than {BITS} bits")
        elif operator == "*" and isinstance(left, int) != isinstance(right, int):
            count, seq = (left, right) if isinstance(left, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and count > 0 and too_big(seq, SIZE // count):
                raise TemplateProblem(f"builds a value of more than {SIZE:,} characters with *")
        elif operator == "%" and isinstance(left, str):
            check_format(left, right)
        return sized(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format / format_map with their widths checked first ('{:>99999999}')."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None

        def format_checked(*args: Any, **kwargs: Any) -> str:  # call() checks its widths and arguments first
            return wrapped(*args, **kwargs)

        format_checked.text = value.__self__
        return format_checked

    def concat(self, parts: Iterable[str]) -> str:  # what macros, {% set %} and {% filter %} blocks return
        parts = list(parts)
        if sum(map(len, parts)) > SIZE:
            raise TemplateProblem(f"builds a block of more than {SIZE:,} characters")
        return "".join(parts)


@pass_context
def loop_steps(context: Any, iterable: Iterable[Any]) -> Iterator[Any]:
    """Each `{% for %}`'s iterable (the filter Bounded puts there): one step per item. A filter, not a call,
    so it costs no sandbox call check; pass_context keeps jinja2 from running it at compile time."""
    budget = _local.budget
    for item in iterable:
        budget.spend()
        yield item


@pass_context
def joined(context: Any, parts: list[Any]) -> str:
    """`a ~ b ~ c` (Bounded puts it there): each part checked before str() writes it."""
    for part in parts:
        sized(part, "a value joined with ~")
    return context.environment.concat([str(part) for part in parts])


@functools.lru_cache(maxsize=1)
def environment() -> BoundedEnvironment:
    """The one environment every chat template compiles in (no loader: nothing to read files with)."""
    env = BoundedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
        finalize=output,
    )
    env.globals.pop("lipsum", None)  # lorem ipsum: n paragraphs in one call, of no use to a chat template
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = tojson
    env.filters.update({name: bounded_filter(name, func) for name, func in env.filters.items()})
    env.filters.update({STEPS_FILTER: loop_steps, JOIN_FILTER: joined})  # after: they check for themselves
    return env


class Bounded(NodeTransformer):
    """Routes each loop's iterable and each `~` through the environment's counters; refuses include, import
    and extends."""

    def __init__(self, env: BoundedEnvironment) -> None:
        self.env = env

    def filtered(self, name: str, arg: nodes.Expr, lineno: int) -> nodes.Filter:
        return nodes.Filter(arg, name, [], [], None, None).set_lineno(lineno).set_environment(self.env)

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = self.filtered(STEPS_FILTER, node.iter, node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        self.generic_visit(node)
        return self.filtered(JOIN_FILTER, nodes.List(node.nodes), node.lineno)

    def refuse(self, node: nodes.Stmt) -> None:
        name = node.template.value if isinstance(node.template, nodes.Const) else "a template"
        raise TemplateProblem(
            f"{INCLUDES[type(node).__name__]} another template ({name!r}, line {node.lineno}), and no template "
            f"may read a file"
        )

    visit_Include = visit_Import = visit_FromImport = visit_Extends = refuse


@functools.lru_cache(maxsize=16)
def compile_template(text: str) -> Any:
    """The jinja2 Template for `text`, bounded; cached, since data preparation renders one template thousands of
    times. TemplateProblem for a syntax error or a template that would read another."""
    env = environment()
    try:
        return env.from_string(Bounded(env).visit(env.parse(text)))
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"does not parse ({exc.message}, line {exc.lineno})") from None
    except TemplateError as exc:
        raise TemplateProblem(f"does not compile ({exc})") from None


def render(template: Any, **context: Any) -> str:
    """`template` (from compile_template) rendered within the bounds; any failure is a TemplateProblem."""
    outer = getattr(_local, "budget", None)
    _local.budget = Budget()
    try:
        out, size = [], 0
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > SIZE:
                raise TemplateProblem(f"writes more than {SIZE:,} characters")
            out.append(chunk)
        return "".join(out)
    except TemplateProblem:
        raise
    except RecursionError:
        raise TemplateProblem("recurses too deeply (a macro or a recursive loop without end?)") from None
    except SecurityError as exc:
        raise TemplateProblem(f"did what the sandbox forbids ({exc})") from None
    except Refusal as exc:
        raise TemplateProblem(f"refused the conversation: {exc}") from None
    except MemoryError:
        raise TemplateProblem("ran out of memory") from None
    except Exception as exc:  # the template's own bug in any Python operation: ZeroDivisionError, TypeError, ...
        raise TemplateProblem(f"failed ({type(exc).__name__}: {exc})") from None
    finally:
        _local.budget = outer
