"""Which stages of a turn run on which backend, and why a stage would not run on the one chosen.

One table, computed from the registry and the settings before anything loads: the pipeline refuses a
turn with every stage that cannot run on its backend named in one message (not only the first), and
``csmctl doctor --backend NAME`` prints the same table for a backend without running anything.

A stage declares the engine kinds it needs (``StageImpl.components``); it runs on a backend that
provides all of them and can run here (``Backend.check()``). A stage that declares none runs on no
backend: it brings its own runtime (a library that runs its model itself), and the table says so rather
than claim it ran on the backend chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from csm_core.config import Settings
from csm_core.errors import BackendUnavailable
from csm_core.registry import Registry


@dataclass(frozen=True)
class StageCoverage:
    """One stage: its implementation, the backend it would run on, and what stands in the way."""

    stage: str
    implementation: str
    backend: str  # the backend the settings choose for the stage
    components: tuple[str, ...]  # the engine kinds the implementation declares
    missing: tuple[str, ...] = ()  # declared kinds the backend does not provide
    unavailable: str | None = None  # why the backend cannot run here (its check()), None when it can
    providers: tuple[str, ...] = ()  # registered backends that provide every declared kind

    @property
    def runs_on_backend(self) -> bool:
        """True when the stage's engines come from ``backend`` and it can run here."""
        return bool(self.components) and not self.missing and self.unavailable is None

    @property
    def status(self) -> str:
        """``runs``, ``missing engines``, ``backend unavailable`` or ``own runtime`` (no engines declared)."""
        if not self.components:
            return "own runtime"
        if self.missing:
            return "missing engines"
        return "backend unavailable" if self.unavailable else "runs"

    def reason(self) -> str:
        """Why the stage does not run on its backend, in one line ('' when it does)."""
        if not self.components:
            return f"declares no engines: it runs its model itself, not on {self.backend!r}"
        if self.missing:
            others = ", ".join(self.providers) or "none"
            return (f"needs {', '.join(self.missing)} engines, which backend {self.backend!r} does not provide; "
                    f"backends that do: {others}")
        return self.unavailable or ""

    def to_dict(self) -> dict:
        return {"stage": self.stage, "implementation": self.implementation, "backend": self.backend,
                "components": list(self.components), "status": self.status, "reason": self.reason() or None}


def stage_coverage(
    registry: Registry, settings: Settings, stages: Sequence[str], backend: str | None = None
) -> list[StageCoverage]:
    """The coverage of each of ``stages`` (implementation from ``settings.stages``), on the backend the
    settings choose for it, or on ``backend`` for every stage when given. Unknown stage or backend names
    raise :class:`~csm_core.errors.UnknownNameError`; ``check()`` runs once per backend."""
    checked: dict[str, str | None] = {}
    rows = []
    for stage in stages:
        impl = registry.stage(stage, getattr(settings.stages, stage))
        name = backend or settings.backend_for(stage)
        if impl.components or backend is not None:
            record = registry.backend(name)  # an unknown name is an error where it is used
        else:
            rows.append(StageCoverage(stage, impl.name, name, ()))
            continue
        missing = tuple(c for c in impl.components if not record.supports(c))
        if name not in checked:
            try:
                record.check()
                checked[name] = None
            except BackendUnavailable as exc:
                checked[name] = str(exc)
        providers = tuple(sorted(
            other for other, entry in registry.backends.items()
            if all(entry.record.supports(c) for c in impl.components)
        ))
        rows.append(StageCoverage(stage, impl.name, name, tuple(impl.components), missing, checked[name], providers))
    return rows


def missing_engines_message(rows: Sequence[StageCoverage]) -> str | None:
    """One message naming every stage whose backend lacks its engines (None when there is none), with the
    stages that run their model themselves noted, and what to set."""
    lacking = [row for row in rows if row.missing]
    if not lacking:
        return None
    lines = [f"{row.stage} stage {row.implementation!r} {row.reason()}" for row in lacking]
    own = [row for row in rows if not row.components]
    if own:
        lines.append("not on any backend (they run their model themselves): "
                     + ", ".join(f"{row.stage} ({row.implementation})" for row in own))
    hint = ", ".join(f'backends.{row.stage} = "<name>"' for row in lacking)
    head = "this turn cannot run on the chosen backend" if len(lacking) > 1 else lines.pop(0)
    body = "".join(f"\n  {line}" for line in lines)
    return f"{head}{body}\n(set {hint} to run {'those stages' if len(lacking) > 1 else 'only this stage'} there)"


__all__ = ["StageCoverage", "missing_engines_message", "stage_coverage"]
