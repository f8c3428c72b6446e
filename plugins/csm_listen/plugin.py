"""Hooks of the in-tree listening plugin: the ``whisper`` transcriber (on its backend's ``speech_to_text``
engine), the ``prosody`` sentiment analyzer and the ``transformers`` reply model (on its backend's
``causal_lm`` engine). The stage modules that import torch load only when a pipeline builds them."""

from __future__ import annotations

from csm_core import hookimpl
from csm_core.records import StageImpl


class ProsodySentiment:
    """The ``sentiment`` stage: prosody of the user's audio plus statistics of its Mimi codes.

    Options come from the config table ``[options.prosody]`` (fields of
    :class:`csm_listen.sentiment.SentimentSettings`, e.g. ``amortize = true``).
    """

    def __init__(self, context):
        from csm_core.config import plugin_options
        from csm_listen.sentiment import SentimentAnalyzer, SentimentSettings

        self.analyzer = SentimentAnalyzer(plugin_options(context.settings, "prosody", SentimentSettings))

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


def _whisper(context):
    from csm_listen.transcriber import WhisperTranscriber

    return WhisperTranscriber(context)


def _reply_model(context):
    from csm_listen.reply_llm import TransformersReplyModel

    return TransformersReplyModel(context)


@hookimpl
def register_transcribers(register):
    register(
        StageImpl(
            name="whisper",
            factory=_whisper,
            description="Whisper speech to text (on its backend's speech_to_text engine): greedy, 16 kHz, 30 s windows",
            components=("speech_to_text",),
        )
    )


@hookimpl
def register_llms(register):
    register(
        StageImpl(
            name="transformers",
            factory=_reply_model,
            description="any transformers causal chat LM, answering {emotion, reply} as JSON",
            components=("causal_lm",),
        )
    )
