"""The benchmark matrix: cells of backend x optimizer set x preset, parsed from CLI strings.

Strings look like the flags of ``csmctl bench``::

    --backends pytorch,onnxruntime --optimizers none,cache-clearing,cache-clearing+context-window --presets small

Commas separate the entries of each axis; ``+`` joins optimizers that run together in one set; ``none``
is the empty set (the unoptimized baseline that the quality of every other set is measured against).
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

    @property
    def optimizer_label(self) -> str:
        """``none`` or the optimizer names joined by ``+``, as on the command line."""
        return "+".join(self.optimizers) or NONE

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


def split_names(value: str, option: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; an empty entry or a repeated name raises naming ``option``."""
    names = [part.strip() for part in value.split(",")]
    if not value.strip() or any(not name for name in names):
        raise BenchInputError(f"{option}={value!r}: give comma-separated names without empty entries")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BenchInputError(f"{option}={value!r}: {repeated[0]!r} is listed more than once")
    return names


def parse_optimizer_sets(value: str, option: str = "--optimizers") -> list[tuple[str, ...]]:
    """``"none,a,a+b"`` -> ``[(), ("a",), ("a", "b")]``."""
    sets: list[tuple[str, ...]] = []
    for entry in split_names(value, option):
        names = tuple(part.strip() for part in entry.split("+"))
        if any(not name for name in names):
            raise BenchInputError(f"{option}={value!r}: {entry!r} has an empty name around '+'")
        if NONE in names and len(names) > 1:
            raise BenchInputError(f"{option}={value!r}: {entry!r} combines 'none' with optimizers; list 'none' alone")
        if len(set(names)) != len(names):
            raise BenchInputError(f"{option}={value!r}: {entry!r} names an optimizer twice")
        optimizers = () if names == (NONE,) else names
        if optimizers in sets:
            raise BenchInputError(f"{option}={value!r}: the set {entry!r} is listed more than once")
        sets.append(optimizers)
    return sets


def parse_matrix(backends: str, optimizers: str, presets: str, known_presets: Iterable[str]) -> list[Cell]:
    """The cells of the matrix, baselines first within each preset and backend.

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
        Cell(preset, backend, optimizer_set)
        for preset in preset_names
        for backend in split_names(backends, "--backends")
        for optimizer_set in sorted(sets, key=lambda s: (len(s) > 0,))  # stable: baseline first
    ]
    return cells
