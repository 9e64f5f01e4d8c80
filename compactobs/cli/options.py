"""Click options generated from the dataclasses they fill, and the option sets commands share.

`dataclass_options(Thresholds, into="thresholds")` gives a command one option per field of `Thresholds`:
`--loop-min` from `loop_min`, its type and default from the field, its help (and metavar, envvar, option
name) from the field's metadata; the command receives the built `Thresholds`. A field added to the
dataclass is an option of every command that takes it, with nothing to write here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import click

from compactobs.reports.model import Filters, usd_amount
from compactobs.reports.render import FORMATS
from compactobs.reports.times import build_filters

__all__ = [
    "dataclass_options",
    "filter_options",
    "group_options",
    "report_options",
    "usd_amount",
    "window_options",
]

F = TypeVar("F", bound=Callable[..., Any])

_CLICK_TYPES: Mapping[type, click.ParamType] = {
    int: click.INT,
    float: click.FLOAT,
    str: click.STRING,
}
_SEQUENCES = (tuple, list, Iterable, Sequence)
"""Annotations an option takes repeatedly (`--model a --model b`)."""
_METADATA_KEYS = frozenset({"option", "help", "metavar", "envvar", "show_envvar"})
"""What a field's metadata may say about its option; other keys are not the CLI's."""


def _option_type(annotation: Any, where: str) -> tuple[click.ParamType, bool, bool]:
    """(click type, repeatable, optional) for a field's or a builder's parameter annotation; `X | None`
    is an optional X (an option not given is None)."""
    optional = False
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [arg for arg in args if arg is not type(None)]
        optional = True
        if len(rest) != 1:
            raise TypeError(f"{where}: no option type for {annotation!r}")
        annotation, args = rest[0], typing.get_args(rest[0])
    origin = typing.get_origin(annotation)
    if origin in _SEQUENCES:
        item = args[0] if args else str
        if item not in _CLICK_TYPES:
            raise TypeError(f"{where}: no option type for items {item!r}")
        return _CLICK_TYPES[item], True, optional
    if annotation not in _CLICK_TYPES:
        raise TypeError(f"{where}: no option type for {annotation!r}")
    return _CLICK_TYPES[annotation], False, optional


def dataclass_options(
    cls: type[Any],
    *,
    into: str,
    build: Callable[..., Any] | None = None,
    only: Sequence[str] | None = None,
    help_for: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """One click option per field of the dataclass `cls` (or of the fields named in `only`), in field order.

    Each option is `--name-of-field` unless the field's metadata gives `option`; its help, metavar, envvar
    and show_envvar come from the metadata (`help_for` overrides a field's help for one command). Its type
    is the annotation of `build`'s parameter of the field's name: `build` turns the options' values into
    the object (the dataclass itself by default; `build_filters` parses --since strings into `Filters`'
    datetimes). A sequence annotation makes a repeatable option. A field default that says something (not
    None, not empty) is shown in the help; a field with no default whose type takes no None is required.
    The command receives `build(**values)` as its parameter `into`, built (and checked: a bad value raises
    the builder's error) before the command's body runs.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    builder = build if build is not None else cls
    hints = typing.get_type_hints(builder)
    fields = [f for f in dataclasses.fields(cls) if only is None or f.name in only]
    if only is not None and len(fields) != len(only):
        raise TypeError(f"{cls.__name__} has no field {set(only) - {f.name for f in fields}}")
    overrides = dict(help_for or {})
    options = []
    for field in fields:
        unknown = set(field.metadata) - _METADATA_KEYS
        if unknown:
            raise TypeError(f"{cls.__name__}.{field.name}: metadata {sorted(unknown)} says nothing to click")
        where = f"{cls.__name__}.{field.name}"
        if field.default_factory is not dataclasses.MISSING:
            # The option would hand None over the factory's value: give the field a plain default.
            raise TypeError(f"{where}: an option cannot stand for a default_factory")
        kind, repeatable, optional = _option_type(hints[field.name], where)
        settings: dict[str, Any] = {"type": kind, "multiple": repeatable}
        for key in ("metavar", "envvar", "show_envvar"):
            if key in field.metadata:
                settings[key] = field.metadata[key]
        text = overrides.pop(field.name, field.metadata.get("help"))
        if text is not None:
            settings["help"] = text
        default = field.default
        if default is not dataclasses.MISSING and default is not None and default != ():
            settings["default"] = default
            settings["show_default"] = True
        elif default is dataclasses.MISSING and not (optional or repeatable):
            settings["required"] = True  # else the builder would get None for a value it needs
        name = field.metadata.get("option", "--" + field.name.replace("_", "-"))
        options.append(click.option(name, field.name, **settings))
    if overrides:
        raise TypeError(f"{cls.__name__} has no field {sorted(overrides)} to give help to")
    names = [field.name for field in fields]

    def decorate(func: F) -> F:
        if into not in inspect.signature(func).parameters:
            raise TypeError(f"{func.__name__} takes no parameter {into!r} for the {cls.__name__}")

        @functools.wraps(func)
        def command(*args: Any, **values: Any) -> Any:
            built = builder(**{name: values.pop(name) for name in names})
            return func(*args, **values, **{into: built})

        wrapped: Any = command
        for option in reversed(options):
            wrapped = option(wrapped)
        return typing.cast(F, wrapped)

    return decorate


def filter_options(func: F) -> F:
    """--since, --until, --tz, --model, --conversation, --service, from `Filters`' fields: the command
    receives `filters` (a bad value: ReportInputError, exit 2)."""
    return dataclass_options(Filters, into="filters", build=build_filters)(func)


def window_options(func: F) -> F:
    """--since, --until and --tz alone (a command over the whole store, not a report): the command receives
    `filters`, with no model, conversation or service."""
    return dataclass_options(
        Filters,
        into="filters",
        build=build_filters,
        only=("since", "until", "tz"),
        help_for={"tz": "IANA time zone for --since/--until dates (default: local)."},
    )(func)


def report_options(func: F) -> F:
    """The options every report command shares: `filter_options` and --format (the command receives
    `filters` and `fmt`)."""
    func = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(func)
    return filter_options(func)


def group_options(func: F) -> F:
    """--limit and --sort, for a report that lists groups: the command receives `limit` and `sort` (pass
    them to `make_report` or `emit_report`)."""
    func = click.option(
        "--sort",
        metavar="COLUMN",
        help="Order rows by this column (its JSON name or table label): numbers largest first.",
    )(func)
    return click.option(
        "--limit", type=int, metavar="N", help="Show the first N rows (the totals still cover every call)."
    )(func)


