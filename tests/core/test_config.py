"""Config: TOML, environment and flags in that order; errors that name the field and the reason."""

from __future__ import annotations

import pytest

from csm_core.config import Settings, load_settings
from csm_core.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "csm.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid():
    settings = load_settings(environ={})
    assert settings.backend == "pytorch" and settings.device == "auto"
    assert settings.emotions["happy"].temperature == 0.8 and settings.emotions["calm"].top_k == 20


def test_precedence_file_then_environment_then_flags(tmp_path):
    path = write(tmp_path, 'backend = "onnxruntime"\n[generation]\ntemperature = 0.3\ntop_k = 7\n')
    settings = load_settings(path, environ={})
    assert (settings.backend, settings.generation.temperature, settings.generation.top_k) == ("onnxruntime", 0.3, 7)
    environ = {"CSM_GENERATION__TEMPERATURE": "0.4", "CSM_OPTIMIZERS": '["a", "b"]'}
    settings = load_settings(path, environ=environ)
    assert settings.generation.temperature == 0.4 and settings.optimizers == ["a", "b"]
    settings = load_settings(path, {"generation.temperature": 0.5, "generation.top_k": None}, environ=environ)
    assert settings.generation.temperature == 0.5
    assert settings.generation.top_k == 7  # a flag that was not given overrides nothing


@pytest.mark.parametrize(
    "toml, field, reason",
    [
        ("[generation]\ntemperature = -1\n", "generation.temperature", "greater than or equal to 0"),
        ("[generation]\ntop_p = 1.5\n", "generation.top_p", "less than or equal to 1"),
        ("[generation]\nmax_new_frames = 0\n", "generation.max_new_frames", "greater than or equal to 1"),
        ('device = "tpu"\n', "device", "must be auto, cpu, cuda or cuda:N"),
        ("speaker = -1\n", "speaker", "greater than or equal to 0"),
        ('precision = "int3"\n', "precision", "'fp32', 'fp16' or 'bf16'"),
        ('[generation]\ntemprature = 0.5\n', "generation.temprature", "unknown setting"),
        ('[backends]\nvocoder = "onnxruntime"\n', "backends", "unknown stage 'vocoder'"),
        ('optimizers = ["lazy", "lazy"]\n', "optimizers", "'lazy' is listed more than once"),
        ('[emotions.happy]\ntemperature = 0.8\n', "emotions.happy.top_k", "Field required"),
    ],
)
def test_validation_errors_name_the_field_and_reason(tmp_path, toml, field, reason):
    with pytest.raises(ConfigError) as excinfo:
        load_settings(write(tmp_path, toml), environ={})
    message = str(excinfo.value)
    assert f"  {field}: " in message and reason in message
    assert "csm.toml" in message


def test_preset_and_model_path_together_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="models.preset and models.model_path are both set"):
        load_settings(overrides={"models.preset": "tiny", "models.model_path": str(tmp_path)}, environ={})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "backend = \n"), environ={})


def test_environment_errors_name_the_source():
    with pytest.raises(ConfigError, match=r"environment.*\n  generation.top_k: "):
        load_settings(environ={"CSM_GENERATION__TOP_K": "0"})


def test_the_benchmarks_own_variables_are_not_settings():
    """CSM_BENCH_* configure benchmarks/conftest.py; exported in a shell they must not break `csmctl say`."""
    settings = load_settings(environ={"CSM_BENCH_PRESET": "small", "CSM_BACKEND": "onnxruntime"})
    assert settings.backend == "onnxruntime"


def test_frame_limit_takes_the_smaller_of_frames_and_milliseconds():
    generation = Settings().generation.model_copy(update={"max_new_frames": 100, "max_audio_length_ms": 2000})
    assert generation.frame_limit() == 25
    assert Settings().generation.frame_limit() == 250


def test_backend_for_a_stage():
    settings = Settings(backend="onnxruntime", backends={"llm": "pytorch"})
    assert settings.backend_for("llm") == "pytorch" and settings.backend_for("tts") == "onnxruntime"
