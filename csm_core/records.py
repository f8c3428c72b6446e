"""The typed records a plugin passes to ``register(...)``, and what their factories receive."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping

from csm_core.errors import BackendUnavailable

if TYPE_CHECKING:  # annotations only; registry imports this module
    from csm_core.config import Settings
    from csm_core.doctor import Check
    from csm_core.registry import Registry


def _check_name(record: object, name: str) -> None:
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(
            f"{type(record).__name__}.name must be letters, digits, '-', '_' or '.', got {name!r}"
        )


@dataclass(frozen=True)
class Backend:
    """A runtime that builds engines for model components.

    ``engines`` maps a component kind (see :data:`csm_core.components.COMPONENT_KINDS`) to a factory
    ``factory(module, context) -> engine``: ``module`` is the component's PyTorch module (the source of
    the weights), ``context`` a :class:`StageContext`. ``check()`` returns nothing when the backend can
    run here and raises :class:`csm_core.errors.BackendUnavailable` saying what is missing otherwise;
    it must be cheap and must not load models. ``prepare(context, progress)``, when given, builds the
    backend's artifacts ahead of time (exported graphs, compiled engines) for ``csmctl export`` and
    returns the paths written; ``progress(description, completed, total)`` reports how far it is.
    ``devices`` are the device kinds it runs on (``cpu``, ``cuda``); a pipeline that asks another refuses
    before anything loads. ``device_check(device)``, when given, says why the backend's runtime cannot use ``device`` on this
    machine although the machine has it (a runtime build without CUDA support), or returns None when
    it can; ``csmctl doctor`` reports it. ``doctor_checks()``, when given, returns what ``csmctl
    doctor`` lists about the backend's runtime besides ``check()``, one :class:`csm_core.doctor.Check`
    each (installed packages, packages that clash, the runtime's own view of CUDA); it is called even
    when ``check()`` fails, so it can say what is missing. Like ``check`` these two must be cheap.
    """

    name: str
    engines: Mapping[str, Callable[[Any, "StageContext"], Any]]
    check: Callable[[], None]
    description: str = ""
    devices: tuple[str, ...] = ("cpu",)
    prepare: Callable[["StageContext", Callable[[str, int, int], None]], list] | None = None
    device_check: Callable[[str], str | None] | None = None
    doctor_checks: Callable[[], Iterable["Check"]] | None = None

    def __post_init__(self) -> None:
        _check_name(self, self.name)

    def supports(self, component: str) -> bool:
        return component in self.engines


@dataclass(frozen=True)
class StageImpl:
    """An implementation of one pipeline stage; ``factory(context)`` builds the stage object.

    ``components`` lists the engine kinds the stage asks its backend for (``("csm", "codec")`` for
    CSM); the pipeline checks before loading anything that the backend the settings name for the stage
    provides them and can run here. A stage that declares none gets no backend: its
    ``StageContext.backend`` is None, and no backend is checked for it.
    """

    name: str
    factory: Callable[["StageContext"], Any]
    description: str = ""
    components: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self, self.name)


@dataclass(frozen=True)
class Optimizer:
    """An optimization that can be switched on by name.

    ``effect`` declares what it may change: ``"exact"`` ones must give identical codes to the
    unoptimized run; ``"approximate"`` ones state a quality bound in their ``description``.
    ``factory(context)`` returns an object that is registered as a plugin while the pipeline lives, so
    it may implement hooks (``run_stage`` as a wrapper, ``at_safe_point``, ``engine_built``). The object may also have
    ``configure(settings) -> Mapping[str, Any]``: dotted setting overrides (``{"precision": "bf16"}``,
    ``{"options.prosody.amortize": True}``) that the pipeline applies before any stage loads, and
    reports. An optimizer whose work lives in a backend or stage (selective precision, CUDA graphs)
    switches it on this way, so the code stays with the component it changes.
    """

    name: str
    factory: Callable[["StageContext"], Any]
    effect: Literal["exact", "approximate"] = "exact"
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self, self.name)
        if self.effect not in ("exact", "approximate"):
            raise ValueError(f"Optimizer.effect must be 'exact' or 'approximate', got {self.effect!r}")


@dataclass
class StageContext:
    """What a stage, backend engine or optimizer factory is given.

    ``backend`` is the backend the settings name for the stage (``backends.<stage>``, else
    ``backend``) when the stage declares components (:attr:`StageImpl.components`), else None.
    """

    stage: str
    settings: "Settings"
    registry: "Registry"
    backend: Backend | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("csm"))
    events: list[str] = field(default_factory=list)
    resources: dict[Any, Any] = field(default_factory=dict)
    hook: Any = None  # the plugin manager's hook relay, set by the pipeline

    def safe_point(self, device: str) -> None:
        """Tell plugins (optimizers) that no intermediate tensor is alive: call between frames."""
        if self.hook is not None:
            self.hook.at_safe_point(stage=self.stage, device=str(device))

    def resource(self, key: Any, build: Callable[[], Any]) -> Any:
        """A value shared by every stage of the pipeline (a loaded model, say), built on first use."""
        if key not in self.resources:
            self.resources[key] = build()
        return self.resources[key]

    def engine(self, component: str, module: Any) -> Any:
        """Build ``component``'s engine from its PyTorch ``module`` on this stage's backend."""
        if self.backend is None:
            raise BackendUnavailable(
                f"the {self.stage} stage has no backend to build a {component!r} engine on: a stage that "
                f"builds engines must list them in its StageImpl.components"
            )
        if not self.backend.supports(component):
            having = [] if self.registry is None else sorted(
                name for name, entry in self.registry.backends.items() if entry.record.supports(component)
            )
            raise BackendUnavailable(
                f"backend {self.backend.name!r} has no {component} engine for the {self.stage} stage (it provides: "
                f"{', '.join(sorted(self.backend.engines)) or 'none'}); backends that have one: "
                f"{', '.join(having) or 'none'}. Set backends.{self.stage} to one of them"
            )
        return self.built(component, self.backend.engines[component](module, self))

    def built(self, component: str, engine: Any) -> Any:
        """Hand a newly built ``component`` engine to the ``engine_built`` hook (optimizers may install a
        part of theirs on it) and return it. :meth:`engine` calls it; a stage that re-allocates its engines
        (``CsmEngines.for_batch``) calls it for the new ones."""
        if self.hook is not None:
            self.hook.engine_built(stage=self.stage, component=component, engine=engine, context=self)
        return engine

    def report(self, message: str) -> None:
        """Log a notable event (a fallback, an export, a rebuild) and keep it for the turn's metrics."""
        self.log.warning(message)
        self.events.append(message)
