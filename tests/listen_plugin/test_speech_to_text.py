"""The ``speech_to_text`` component: the core's greedy Whisper loop on the PyTorch engine against
transformers' ``generate``, and the ``whisper`` stage on it.

The model is the random tiny Whisper of :mod:`csm_listen.tiny_models` with its weights redrawn wider
(std 4/sqrt(fan_in)): the checkpoint as written repeats one token, which would make equal ids a weak
check; these weights give varied text and sometimes an early end token. Clips are noise (random
weights transcribe nothing meaningful anyway).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from csm_core.audio import Audio
from csm_core.components import SpeechToText, SpeechToTextEngine
from csm_core.config import Settings
from csm_core.generation.speech_decoding import WhisperDecoding, decode_speech, whisper_decoding
from csm_core.plugins import Plugins
from csm_core.records import StageContext
from csm_core.registry import Registry
from csm_listen.transcriber import WhisperTranscriber, _text_tokens
from whisper_models import load_whisper, varied_whisper

MAX_NEW = 16
SEEDS = (0, 1)
PARITY = ("language en", "detected language", "legacy forced_decoder_ids", "english-only")


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return varied_whisper(tmp_path_factory.mktemp("stt") / "varied-whisper")


@pytest.fixture(scope="module")
def loaded(whisper_dir):
    return load_whisper(whisper_dir)


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def features(processor, seed: int) -> torch.Tensor:
    return processor.feature_extractor(noise(1.0 + 0.5 * seed, seed), sampling_rate=16000,
                                       return_tensors="pt").input_features


def configs(model):
    """name -> (generation config, generate kwargs): multilingual with a given language, with language
    detection (three extra, fake language tokens so that detection has a choice), without a task, legacy
    ``forced_decoder_ids``, and English-only."""
    base = model.generation_config
    several = copy.deepcopy(base)
    several.lang_to_id = {**base.lang_to_id, "<|fr|>": 70, "<|de|>": 71, "<|es|>": 72}
    legacy = copy.deepcopy(base)
    legacy.forced_decoder_ids = [[1, base.lang_to_id["<|en|>"]], [2, base.task_to_id["translate"]]]
    english = copy.deepcopy(base)
    english.is_multilingual = False
    del english.lang_to_id, english.task_to_id
    return {
        "language en": (base, {"task": "transcribe", "language": "en"}),
        "language english": (base, {"task": "transcribe", "language": "english"}),
        "detected language": (several, {"task": "transcribe", "language": None}),
        "detected, no task": (several, {}),
        "legacy forced_decoder_ids": (legacy, {}),
        "english-only": (english, {}),
    }


def generate(model, feats, config, kwargs, max_new_tokens=MAX_NEW) -> list[int]:
    """``generate`` of ``model`` with ``config`` as its own generation config (as a checkpoint would have it:
    a config passed to ``generate`` is merged with the model's, which would bring back deleted fields)."""
    original = model.generation_config
    model.generation_config = config
    try:
        with torch.inference_mode():
            ids = model.generate(feats, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, **kwargs)
    finally:
        model.generation_config = original
    return ids[0].tolist()


def text_ids(tokens, eos: int) -> list[int]:
    """``generate`` drops the end token from its output; the loop returns it."""
    tokens = list(tokens)
    return tokens[:-1] if tokens and tokens[-1] == eos else tokens


@pytest.mark.slow  # 8 windows, each decoded twice (generate and the loop): ~10-15 s on 2 busy cores
def test_greedy_ids_equal_generate_on_every_prompt_kind(loaded):
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    from csm_pytorch.speech_to_text import TorchSpeechToText

    processor, model = loaded
    engine = TorchSpeechToText(SpeechToText(model, model.config.max_target_positions))
    assert isinstance(engine, SpeechToTextEngine)
    eos = model.generation_config.eos_token_id
    lengths, detected = set(), set()
    for name in PARITY:
        config, kwargs = configs(model)[name]
        decoding = whisper_decoding(config, language_codes=TO_LANGUAGE_CODE, **kwargs)
        for seed in SEEDS:
            feats = features(processor, seed)
            ours = decode_speech(engine, feats, decoding, MAX_NEW)
            assert text_ids(ours.tokens, eos) == generate(model, feats, config, kwargs), (name, seed)
            lengths.add(len(ours.tokens))
            if decoding.detects_language:
                detected.add(ours.prompt[1])
    assert len(lengths) > 1  # some clips end early with the end token
    assert detected and detected != {model.generation_config.lang_to_id["<|en|>"]}  # not the first by default


def test_prompts_are_the_ones_generate_forces(loaded):
    _, model = loaded
    gc = model.generation_config
    sot, en, nots = gc.decoder_start_token_id, gc.lang_to_id["<|en|>"], gc.no_timestamps_token_id
    transcribe, translate = gc.task_to_id["transcribe"], gc.task_to_id["translate"]
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    decodings = {name: whisper_decoding(config, language_codes=TO_LANGUAGE_CODE, **kwargs)
                 for name, (config, kwargs) in configs(model).items()}
    assert decodings["language english"] == decodings["language en"]
    assert decodings["language en"].prompt == (sot, en, transcribe, nots)
    assert decodings["detected language"].prompt == (sot, None, transcribe, nots)
    assert decodings["detected, no task"].prompt == (sot, None, nots)
    assert decodings["legacy forced_decoder_ids"].prompt == (sot, en, translate, nots)
    assert decodings["english-only"].prompt == (sot, nots) and not decodings["english-only"].detects_language
    assert decodings["language en"].suppress_tokens == tuple(gc.suppress_tokens)
    assert decodings["language en"].begin_suppress_tokens == tuple(gc.begin_suppress_tokens)


def test_the_limits_generate_enforces(loaded):
    from csm_pytorch.speech_to_text import TorchSpeechToText

    processor, model = loaded
    engine = TorchSpeechToText(SpeechToText(model, model.config.max_target_positions))
    decoding = whisper_decoding(model.generation_config, task="transcribe", language="en")
    too_many = model.config.max_target_positions - len(decoding.prompt) + 1
    with pytest.raises(ValueError, match="max_target_positions"):
        decode_speech(engine, features(processor, 0), decoding, too_many)
    penalised = copy.deepcopy(model.generation_config)
    penalised.repetition_penalty = 1.3
    with pytest.raises(ValueError, match="repetition_penalty=1.3"):
        whisper_decoding(penalised)
    with pytest.raises(ValueError, match="English-only"):
        whisper_decoding(configs(model)["english-only"][0], language="en")
    with pytest.raises(ValueError, match="<|fr|>"):
        whisper_decoding(model.generation_config, language="fr")
    with pytest.raises(ValueError, match="startoftranscript"):
        WhisperDecoding(prompt=(None,))


@pytest.mark.parametrize("language", [None, "en"])
def test_the_stage_gives_what_generate_gave(whisper_dir, loaded, language):
    """The ``whisper`` stage on the pytorch backend against the code it replaced."""
    processor, model = loaded
    options = {"whisper": {"max_new_tokens": MAX_NEW, "language": language}}
    registry = Registry.collect(Plugins.from_environment({"CSM_LOAD_PLUGINS": "pytorch"}))
    settings = Settings(device="cpu", models={"asr": str(whisper_dir)}, options=options)
    stage = WhisperTranscriber(StageContext("transcriber", settings, registry=registry,
                                            backend=registry.backend("pytorch")))
    for seed in SEEDS:
        clip = noise(1.0 + 0.5 * seed, seed)
        with torch.inference_mode():
            ids = model.generate(features(processor, seed), do_sample=False, num_beams=1, max_new_tokens=MAX_NEW,
                                 task="transcribe", language=language)
        (ours,) = stage.token_ids(Audio(clip, 16000))
        assert ours.tolist() == _text_tokens(ids[0].numpy(), model.generation_config).tolist()
