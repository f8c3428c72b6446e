"""Config: TOML, environment and flags in that order; errors that name the field and the reason."""

from __future__ import annotations

import logging
import os

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
    assert f"): {field}: " in message and reason in message
    assert "csm.toml" in message and "\n" not in message  # one line: the CLI prints it after "error: "


def test_preset_and_model_path_together_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="models.preset and models.model_path are both set"):
        load_settings(overrides={"models.preset": "tiny", "models.model_path": str(tmp_path)}, environ={})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "backend = \n"), environ={})


def test_environment_errors_name_the_source():
    with pytest.raises(ConfigError, match=r"environment.*: generation.top_k: "):
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


def test_every_problem_is_named_on_one_line(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load_settings(write(tmp_path, "speaker = -1\n[generation]\ntop_k = 0\n"), environ={})
    message = str(excinfo.value)
    assert "\n" not in message
    assert "speaker: Input should be greater than or equal to 0 (got -1); generation.top_k: " in message


@pytest.mark.parametrize(
    "overrides, field, reason",
    [
        ({"generation.seed": 2**64}, "generation.seed", "less than or equal to 18446744073709551615"),
        ({"generation.seed": -1}, "generation.seed", "greater than or equal to 0"),
        ({"generation.temperature": float("nan")}, "generation.temperature", "must be a finite number"),
        ({"generation.top_p": float("nan")}, "generation.top_p", "must be a finite number"),
        ({"generation.max_audio_length_ms": float("inf")}, "generation.max_audio_length_ms", "must be a finite number"),
        ({"speaker": 1024}, "speaker", "less than or equal to 1023"),
        ({"user_speaker": 5000}, "user_speaker", "less than or equal to 1023"),
        ({"models.preset": ""}, "models.preset", "is empty: leave the setting out"),
        ({"cache_dir": " "}, "cache_dir", "is empty"),
        ({"models.model_path": ""}, "models.model_path", "is empty"),
    ],
)
def test_values_beyond_what_can_be_used_are_refused(overrides, field, reason):
    with pytest.raises(ConfigError) as excinfo:
        load_settings(overrides=overrides, environ={})
    message = str(excinfo.value)
    assert f": {field}: " in message and reason in message


def test_the_largest_seed_is_taken():
    assert load_settings(overrides={"generation.seed": 2**64 - 1}, environ={}).generation.seed == 2**64 - 1


def test_a_model_flavor_with_a_preset_is_refused():
    with pytest.raises(ConfigError, match=r"models.model_flavor \(--model-flavor\).*models.preset \(--preset\)"):
        load_settings(overrides={"models.preset": "tiny", "models.model_flavor": "sesame"}, environ={})


def test_config_files_that_cannot_be_read_say_why(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes('# caf\xe9\nbackend = "pytorch"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.toml' is not UTF-8 text \(byte 0xe9 at offset 5\): save it as UTF-8"):
        load_settings(latin, environ={})
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_settings(tmp_path, environ={})
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_settings(os.devnull, environ={})
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    with pytest.raises(ConfigError, match=r"big.toml' is \d+ bytes; a config is at most 1048576 bytes"):
        load_settings(big, environ={})


def test_an_unrelated_variable_is_ignored_and_said_so(caplog):
    with caplog.at_level(logging.INFO, logger="csm.config"):
        settings = load_settings(environ={"CSM_HOME": "/opt/csm", "CSM_BACKEND": "onnxruntime"})
    assert settings.backend == "onnxruntime"
    assert "ignoring environment variable CSM_HOME: it names no setting" in caplog.text


@pytest.mark.parametrize(
    "variable, meant",
    [("CSM_GENERATION_TOP_K", "CSM_GENERATION__TOP_K"), ("CSM_BACKNED", "CSM_BACKEND"),
     ("CSM_MODELS_PRESET", "CSM_MODELS__PRESET")],
)
def test_a_misspelt_setting_in_the_environment_is_an_error(variable, meant):
    with pytest.raises(ConfigError, match=f"environment variable {variable} names no setting: did you mean {meant}"):
        load_settings(environ={variable: "3"})


def test_a_table_and_a_key_inside_it_from_the_environment_is_an_error():
    with pytest.raises(ConfigError, match="CSM_GENERATION and CSM_GENERATION__TOP_K both set 'generation'"):
        load_settings(environ={"CSM_GENERATION": "{}", "CSM_GENERATION__TOP_K": "3"})


def test_a_cache_dir_that_cannot_be_written_is_refused(tmp_path):
    a_file = tmp_path / "cache"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=r"cache_dir '.*cache' is a file, not a folder"):
        load_settings(overrides={"cache_dir": str(a_file)}, environ={})
    with pytest.raises(ConfigError, match=r"cache_dir '.*cache/sub' cannot be created: '.*cache' is a file"):
        load_settings(overrides={"cache_dir": str(a_file / "sub")}, environ={})
    fresh = tmp_path / "new" / "cache"
    assert load_settings(overrides={"cache_dir": str(fresh)}, environ={}).cache_dir == fresh
    assert not fresh.parent.exists()  # checking creates nothing
