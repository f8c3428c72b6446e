"""Hooks of the in-tree listening plugin: the ``prosody`` sentiment analyzer."""

from __future__ import annotations

from csm_core import hookimpl
from csm_core.records import StageImpl


class ProsodySentiment:
    """The ``sentiment`` stage: prosody of the user's audio plus statistics of its Mimi codes.

    Options come from the config table ``[options.prosody]`` (fields of
    :class:`csm_listen.sentiment.SentimentSettings`, e.g. ``amortize = true``).
    """

    def __init__(self, context):
        from pydantic import ValidationError

        from csm_core.config import format_validation_error
        from csm_core.errors import ConfigError
        from csm_listen.sentiment import SentimentAnalyzer, SentimentSettings

        try:
            settings = SentimentSettings(**context.settings.options.get("prosody", {}))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "[options.prosody]")) from None
        self.analyzer = SentimentAnalyzer(settings)

    def analyze(self, audio, codes):
        return self.analyzer.analyze(audio.samples, audio.sample_rate, codes)


@hookimpl
def register_sentiment_analyzers(register):
    register(
        StageImpl(
            name="prosody",
            factory=ProsodySentiment,
            description="energy, YIN pitch, speaking rate, pauses and Mimi code statistics -> emotion",
        )
    )
