"""csm_listen: what the user's voice says besides the words.

Prosody features from the waveform (:mod:`csm_listen.prosody`, pitch by YIN in
:mod:`csm_listen.pitch`), statistics of the Mimi codes (:mod:`csm_listen.token_stats`), and a
sentiment analyzer that turns them into an emotion label, arousal and valence
(:mod:`csm_listen.sentiment`), pure numpy; and the transformers-based ``whisper`` transcriber and
reply model (:mod:`csm_listen.transcriber`, :mod:`csm_listen.reply_llm`), which import torch when built.
"""

from csm_listen.prosody import ProsodyFeatures, ProsodySettings, extract_prosody
from csm_listen.sentiment import (
    DEFAULT_EMOTIONS,
    EMOTION_PROTOTYPES,
    EmotionClassifier,
    EmotionDecision,
    RuleBasedClassifier,
    RuleThresholds,
    Sentiment,
    SentimentAnalyzer,
    SentimentSettings,
)
from csm_listen.token_stats import CodebookStats, TokenStatistics, token_statistics

__all__ = [
    "DEFAULT_EMOTIONS",
    "EMOTION_PROTOTYPES",
    "CodebookStats",
    "EmotionClassifier",
    "EmotionDecision",
    "ProsodyFeatures",
    "ProsodySettings",
    "RuleBasedClassifier",
    "RuleThresholds",
    "Sentiment",
    "SentimentAnalyzer",
    "SentimentSettings",
    "TokenStatistics",
    "extract_prosody",
    "token_statistics",
]
