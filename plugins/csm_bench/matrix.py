"""The benchmark matrix: cells of backend x optimizer set x preset, parsed from CLI strings.

Strings look like the flags of ``csmctl bench``::

    --backends pytorch,onnxruntime --optimizers none,cache-clearing,cache-clearing+context-window --presets small

Commas separate the entries of each axis; ``+`` joins optimizers that run together in one set; ``none``
is the empty set (the unoptimized baseline that the quality of every other set is measured against).
An optimizer may carry options of its own for that cell, ``name:key=value[:key=value]`` (for example
``weight-quantization:bits=8,weight-quantization:bits=4`` gives two rows); they are set as
``options.<name>.<key>`` over the config file's.
Names are checked for syntax here; whether a backend or optimizer is registered, and whether it can run
on this machine, is decided per cell by the runner, which skips the cell with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from csm_core.errors import CsmError, UnknownNameError

NONE = "none"
REFERENCE_BACKEND = "transformers-reference"  # transformers' CsmForConditionalGeneration.generate


class BenchInputError(CsmError, ValueError):
    """A matrix string that cannot be parsed; the message names the option and the value."""


@dataclass(frozen=True, order=True)
class Cell:
    """One benchmark: a preset, run on a backend with a set of optimizers (empty: the baseline)."""

    preset: str
    backend: str
    optimizers: tuple[str, ...] = ()
    options: tuple[tuple[str, str, str], ...] = ()  # (optimizer, key, value) given in --optimizers

    @property
    def optimizer_label(self) -> str:
        """``none`` or the optimizer names joined by ``+`` (each with its ``:key=value`` options), as on
        the command line."""
        return "+".join(
            name + "".join(f":{key}={value}" for owner, key, value in self.options if owner == name)
            for name in self.optimizers
        ) or NONE

    @property
    def option_overrides(self) -> dict[str, object]:
        """The cell's optimizer options as setting overrides ``{"options.<name>.<key>": value}`` (numbers
        and true/false parsed, anything else a string)."""
        return {f"options.{name}.{key}": _value(value) for name, key, value in self.options}

    @property
    def is_baseline(self) -> bool:
        return not self.optimizers

    @property
    def id(self) -> str:
        """A stable name for the cell: ``preset/backend/optimizers``."""
        return f"{self.preset}/{self.backend}/{self.optimizer_label}"

    def baseline(self) -> "Cell":
        """The unoptimized cell of the same backend and preset."""
        return Cell(self.preset, self.backend, ())


def _value(text: str) -> object:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _optimizer_with_options(part: str, entry: str, option: str) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    """``"name:key=value:key2=value2"`` -> (name, ((name, key, value), ...))."""
    name, *settings = (piece.strip() for piece in part.split(":"))
    options = []
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key.strip() or not value.strip():
            raise BenchInputError(f"{option}: {entry!r}: {setting!r} is not key=value (give e.g. "
                                  f"{name}:bits=4)")
        options.append((name, key.strip(), value.strip()))
    if len({key for _, key, _ in options}) != len(options):
        raise BenchInputError(f"{option}: {entry!r} sets an option of {name!r} twice")
    return name, tuple(options)


def split_names(value: str, option: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; an empty entry or a repeated name raises naming ``option``."""
    names = [part.strip() for part in value.split(",")]
    if not value.strip() or any(not name for name in names):
        raise BenchInputError(f"{option}={value!r}: give comma-separated names without empty entries")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BenchInputError(f"{option}={value!r}: {repeated[0]!r} is listed more than once")
    return names


def parse_optimizer_sets(value: str, option: str = "--optimizers") -> list[tuple[tuple[str, ...], tuple]]:
    """``"none,a,a+b:k=1"`` -> ``[((), ()), (("a",), ()), (("a", "b"), (("b", "k", "1"),))]``: each set's
    optimizer names and the options given to them."""
    sets: list[tuple[tuple[str, ...], tuple]] = []
    for entry in split_names(value, option):
        parts = [part.strip() for part in entry.split("+")]
        if any(not part for part in parts):
            raise BenchInputError(f"{option}={value!r}: {entry!r} has an empty name around '+'")
        parsed = [_optimizer_with_options(part, entry, option) for part in parts]
        names = tuple(name for name, _ in parsed)
        options = tuple(setting for _, settings in parsed for setting in settings)
        if any(not name for name in names):
            raise BenchInputError(f"{option}={value!r}: {entry!r} has an empty optimizer name before ':'")
        if NONE in names and (len(names) > 1 or options):
            raise BenchInputError(f"{option}={value!r}: {entry!r} combines 'none' with optimizers; list 'none' alone")
        if len(set(names)) != len(names):
            raise BenchInputError(f"{option}={value!r}: {entry!r} names an optimizer twice")
        optimizers = () if names == (NONE,) else names
        if (optimizers, options) in sets:
            raise BenchInputError(f"{option}={value!r}: the set {entry!r} is listed more than once")
        sets.append((optimizers, options))
    return sets


def parse_matrix(backends: str, optimizers: str, presets: str, known_presets: Iterable[str]) -> list[Cell]:
    """The cells of the matrix, baselines first within each preset and backend; the transformers reference
    gets its baseline only (optimizers act on this project's stages, not on transformers' ``generate``).

    An unknown preset raises :class:`UnknownNameError` (nothing could run it); backends and optimizers
    are checked per cell by the runner, because a missing one skips that cell, not the whole run.
    """
    known = list(known_presets)
    preset_names = split_names(presets, "--presets")
    for name in preset_names:
        if name not in known:
            raise UnknownNameError("preset", name, known, "Pass one of them to --presets")
    sets = parse_optimizer_sets(optimizers)
    cells = [
        Cell(preset, backend, optimizer_set, options)
        for preset in preset_names
        for backend in split_names(backends, "--backends")
        for optimizer_set, options in sorted(sets, key=lambda s: (len(s[0]) > 0,))  # stable: baseline first
        if backend != REFERENCE_BACKEND or not optimizer_set  # transformers' generate takes no optimizer
    ]
    return cells
