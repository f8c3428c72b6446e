"""The emotion map: the reply's emotion chooses CSM's sampling parameters."""

from __future__ import annotations

from typing import Callable

from csm_core.config import Settings
from csm_core.stages import SpeechParams

SAMPLING_FIELDS = ("temperature", "top_k", "top_p")


def speech_params(
    settings: Settings, emotion: str | None, report: Callable[[str], None] | None = None
) -> SpeechParams:
    """Sampling parameters for an utterance spoken with ``emotion``.

    The emotion map supplies temperature, top-k and top-p; a generation setting that was set
    explicitly (CLI flag, environment or config file) wins over the map. An emotion that the map does
    not hold keeps the generation settings and is reported.
    """
    generation = settings.generation
    values = {name: getattr(generation, name) for name in SAMPLING_FIELDS}
    if emotion is not None:
        mapped = settings.emotions.get(emotion)
        if mapped is None:
            if report:
                report(
                    f"emotion {emotion!r} is not in the emotion map "
                    f"({', '.join(sorted(settings.emotions))}); using the generation settings"
                )
        else:
            for name in SAMPLING_FIELDS:
                if name not in generation.model_fields_set:
                    values[name] = getattr(mapped, name)
    return SpeechParams(max_frames=generation.frame_limit(), seed=generation.seed, **values)
