"""The user's pricing overrides file (TOML), which wins over genai-prices where it speaks.

Its path comes from `COMPACTOBS_PRICING_FILE` (read by `default_pricer()`) or `Pricer(overrides_path=...)`.

```toml
[models."claude-opus-4-8"]          # an exact model id (case-insensitive), or a glob: "claude-opus-4-8*"
input = 5.0                          # USD per million tokens (required)
output = 25.0                        # (required)
cache_read = 0.5                     # optional; default 0.1 x input
cache_write_5m = 6.25                # optional; default 1.25 x input
cache_write_1h = 10.0                # optional; default 2 x input

[models."my-finetune".batch]         # optional variant tables, same keys: `batch` and `fast`
input = 1.0
output = 5.0
```

Rules:
- A model entry owns its model completely: genai-prices is not consulted for a model the file matches,
  so a missing `fast` table means fast requests bill at the entry's standard rates, and a missing `batch`
  table means 50% of them. Variant cache rates default from the variant's own input rate.
- An override rate holds for every date and has no tiers. US-only inference (`inference_geo: "us"`)
  still adds 1.1x when the model id is Claude 4.6 or later.
- Matching: an exact id first; else the most specific glob (most literal characters), then file order.
- Numbers are read exactly (as `Decimal`); integers are fine. Anything unexpected is an error: unknown
  keys, non-numeric, negative or non-finite rates, a missing `input` or `output`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase

from compactobs._types import JSON
from compactobs.configfile import ConfigError, line_of, parse_toml
from compactobs.pricing.records import PricingError
from compactobs.pricing.schedule import CLASSES, HALF, ClassRates, Schedule, complete, scaled

__all__ = ["OverrideEntry", "Overrides", "OverridesError", "load_overrides"]

_RATE_KEYS = frozenset(CLASSES)
_VARIANTS = ("batch", "fast")
_ENTRY_KEYS = _RATE_KEYS | frozenset(_VARIANTS)
_GLOB_CHARS = frozenset("*?[")


class OverridesError(ConfigError, PricingError):
    """A bad overrides file: one line naming the file, the line (where the key is written out) and the
    problem. A PricingError too, as the CLI and callers of `Pricer` have always caught."""

    def __init__(self, message: str, *, at: str | None = None) -> None:
        super().__init__(message)
        self.at = at


@dataclass(frozen=True, slots=True)
class _Rates:
    rates: ClassRates
    defaulted: frozenset[str]


@dataclass(frozen=True, slots=True)
class OverrideEntry:
    """One `[models."..."]` table."""

    key: str
    standard: _Rates
    batch: _Rates | None
    fast: _Rates | None

    def schedule(self, *, batch: bool, fast: bool, source: str) -> Schedule:
        """This entry's schedule for the variant (see the module docstring for the fallbacks)."""
        chosen, variant = self.standard, "standard"
        notes: list[str] = []
        if fast:
            if self.fast is not None:
                chosen, variant = self.fast, "fast"
            else:
                notes.append(
                    f"fast mode: overrides entry {self.key!r} has no fast rates; billed at its standard rates"
                )
        if batch and variant != "fast" and self.batch is not None:
            chosen, variant = self.batch, "batch"
        schedule = Schedule(
            model_id=self.key,
            base=chosen.rates,
            tiers=(),
            source=source,
            by_overrides=True,
            variant=variant,
            notes=tuple(notes),
            defaulted=chosen.defaulted,
        )
        if batch and variant == "fast":
            return scaled(
                schedule,
                HALF,
                variant="fast+batch",
                note="fast with batch is not offered by the API; fast rates halved",
            )
        if batch and variant != "batch":
            return scaled(
                schedule,
                HALF,
                variant="batch",
                note=f"batch: overrides entry {self.key!r} has no batch rates; priced at 50% of standard",
            )
        return schedule


@dataclass(frozen=True, slots=True)
class Overrides:
    """A validated overrides file."""

    path: str
    sha256: str
    exact: Mapping[str, OverrideEntry]
    globs: tuple[tuple[str, OverrideEntry], ...]
    """Most specific first."""

    @property
    def short_hash(self) -> str:
        return self.sha256[:8]

    def match(self, model: str) -> OverrideEntry | None:
        ref = model.lower()
        entry = self.exact.get(ref)
        if entry is not None:
            return entry
        for pattern, candidate in self.globs:
            if fnmatchcase(ref, pattern):
                return candidate
        return None


class _Reader:
    """Validation with one-line errors that name the file, the key and the problem."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> OverridesError:
        return OverridesError(f"pricing overrides {self.path}: {where}: {problem}", at=where)

    def rate(self, where: str, value: object) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            raise self.fail(where, f"must be a number (USD per million tokens), got {_show(value)}")
        rate = Decimal(value)
        if not rate.is_finite():
            raise self.fail(where, f"must be a finite number, got {value}")
        if rate < 0:
            raise self.fail(where, f"must not be negative, got {value}")
        return rate if rate else Decimal(0)  # -0.0 reads as 0

    def rates(self, where: str, table: Mapping[str, JSON], allowed: frozenset[str]) -> _Rates:
        for key in table:
            if key not in allowed:
                expected = ", ".join(name for name in (*CLASSES, *_VARIANTS) if name in allowed)
                raise self.fail(f"{where}.{_key(key)}", f"unknown key (expected one of: {expected})")
        for required in ("input", "output"):
            if required not in table:
                raise self.fail(where, f"missing required key '{required}'")
        values = {name: self.rate(f"{where}.{name}", table[name]) for name in CLASSES if name in table}
        completed = complete(values)
        assert completed is not None  # input and output were checked above
        return _Rates(*completed)

    def table(self, where: str, value: object) -> Mapping[str, JSON]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"must be a table, got {_show(value)}")
        return value


def _show(value: object) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


def _key(key: str) -> str:
    """A TOML key as the user would write it in a dotted path."""
    return key if key.replace("-", "").replace("_", "").isalnum() else f'"{key}"'


def _specificity(pattern: str) -> int:
    return sum(1 for char in pattern if char not in _GLOB_CHARS)


def load_overrides(path: str | os.PathLike[str], *, origin: str | None = None) -> Overrides:
    """Read and validate an overrides file. Raises `PricingError` with a one-line message."""
    shown = os.fspath(path) + (f" (from {origin})" if origin else "")
    reader = _Reader(shown)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise OverridesError(f"pricing overrides {shown}: file not found") from None
    except IsADirectoryError:
        raise OverridesError(f"pricing overrides {shown}: is a directory, not a TOML file") from None
    except OSError as err:
        raise OverridesError(f"pricing overrides {shown}: cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise OverridesError(f"pricing overrides {shown}: not UTF-8 text (byte {err.start})") from None
    document = parse_toml(text, OverridesError, f"pricing overrides {shown}: not valid TOML")
    try:
        return _overrides_from(document, reader, path, raw)
    except OverridesError as err:
        line = line_of(text, err.at) if err.at else None
        if line is None:
            raise
        prefix = f"pricing overrides {shown}"
        message = str(err).replace(f"{prefix}:", f"{prefix}, line {line}:", 1)
        raise OverridesError(message, at=err.at) from None


def _overrides_from(
    document: Mapping[str, JSON], reader: _Reader, path: str | os.PathLike[str], raw: bytes
) -> Overrides:
    """The overrides in a parsed file. Raises OverridesError, `at` the key at fault."""
    for key in document:
        if key != "models":
            raise reader.fail(_key(key), 'unknown key (expected only a [models."<model id or glob>"] table)')
    models = reader.table("models", document.get("models", {}))

    exact: dict[str, OverrideEntry] = {}
    globs: list[tuple[str, OverrideEntry]] = []
    seen: dict[str, str] = {}
    for model_key, body in models.items():
        where = f'models."{model_key}"'
        if not model_key.strip():
            raise reader.fail(where, "model id must not be empty")
        table = reader.table(where, body)
        standard = reader.rates(where, table, _ENTRY_KEYS)
        variants: dict[str, _Rates | None] = {}
        for variant in _VARIANTS:
            variant_where = f"{where}.{variant}"
            variants[variant] = (
                reader.rates(variant_where, reader.table(variant_where, table[variant]), _RATE_KEYS)
                if variant in table
                else None
            )
        folded = model_key.lower()
        if folded in seen:
            raise reader.fail(where, f'same model as models."{seen[folded]}" (ids are case-insensitive)')
        seen[folded] = model_key
        entry = OverrideEntry(
            key=model_key, standard=standard, batch=variants["batch"], fast=variants["fast"]
        )
        if _GLOB_CHARS & set(folded):
            globs.append((folded, entry))
        else:
            exact[folded] = entry
    # Stable sort: equally specific globs keep file order.
    globs.sort(key=lambda item: -_specificity(item[0]))
    return Overrides(
        path=os.fspath(path), sha256=hashlib.sha256(raw).hexdigest(), exact=exact, globs=tuple(globs)
    )
