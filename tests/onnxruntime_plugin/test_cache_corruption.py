"""Every cached artifact the onnxruntime backend loads is verified: damaged, it is reported and rebuilt.

One tiny-preset cache is made per module (the exported graphs, ONNX Runtime's saved optimized graphs,
the voice profile) and the output of a clean greedy turn on it recorded. Each case copies that cache,
damages one kind of artifact (truncated, bytes flipped in the middle, checksum file missing, wrong or
garbage), runs the same turn with real ONNX Runtime sessions, and checks that every damaged file was
reported, that the codes and audio are identical to the clean run, and that the cache is whole again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from audio_signals import tone
from csm_core.artifact_check import checksum_path, problem_with

pytestmark = pytest.mark.slow  # one tiny export per module (~25 s on 2 cores), then ~1 s per turn

DAMAGES = ("truncated", "bytes-flipped", "checksum-missing", "checksum-wrong", "checksum-garbage")
CSMCTL = shutil.which("csmctl") or str(Path(sys.executable).parent / "csmctl")


def damage(path: Path, how: str) -> None:
    """Damage the cached file ``path`` (or its checksum file) ``how``."""
    sums = checksum_path(path)
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bytes-flipped":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0x5A for b in data[middle:middle + 4]) + data[middle + 4:])
    elif how == "checksum-missing":
        sums.unlink()
    elif how == "checksum-wrong":
        sums.write_text(f"{'0' * 64}  {path.name}\n")
    elif how == "checksum-garbage":
        sums.write_bytes(os.urandom(64) + b"\x00")
    else:
        raise ValueError(how)


def speak(cache_dir: Path, voice: Path):
    """(reply codes, audio samples, events) of one greedy tiny-preset turn on onnxruntime with ``voice``."""
    from csm_core.config import Settings
    from csm_core.pipeline import Pipeline
    from csm_core.plugins import Plugins

    settings = Settings(
        backend="onnxruntime", device="cpu", models={"preset": "tiny"}, cache_dir=cache_dir,
        voice={"audio": str(voice), "text": "A reference clip."},
        generation={"max_new_frames": 4, "temperature": 0, "seed": 0},
    )
    with Pipeline(settings, plugins=Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,onnxruntime"})) as pipeline:
        turn = pipeline.speak("Every cache is checked.")
    return turn.reply_codes, turn.audio.samples, list(turn.metrics.events)


def graphs(cache_dir: Path) -> list[Path]:
    """The exported graphs (not the optimized ones), by name."""
    return sorted(p for p in (cache_dir / "onnx").glob("*.onnx") if not p.name.endswith(".opt.onnx"))


def optimized(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "onnx").glob("*.opt.onnx"))


def profiles(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "profiles").glob("*.json"))


KINDS = {"graph": graphs, "optimized graph": optimized, "voice profile": profiles}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """(the clean cache folder, its voice clip, the codes and audio of a clean turn on it)."""
    root = tmp_path_factory.mktemp("clean")
    voice = root / "voice.wav"
    soundfile.write(str(voice), tone(220.0, 0.4, 16000), 16000)
    cache_dir = root / "cache"
    speak(cache_dir, voice)  # exports the graphs, saves the optimized ones, encodes the profile
    codes, audio, events = speak(cache_dir, voice)  # the clean run: everything read from the cache
    assert events == [] and codes is not None and codes.shape[1] == 4
    # backbone prefill and step, depth decoder, Mimi decoder step, and the Mimi encoder step (the voice clip)
    assert len(graphs(cache_dir)) == 5 and len(optimized(cache_dir)) == 5 and len(profiles(cache_dir)) == 1
    return cache_dir, voice, codes, audio


@pytest.fixture
def cache_copy(clean, tmp_path) -> Path:
    cache_dir = tmp_path / "cache"
    shutil.copytree(clean[0], cache_dir)
    return cache_dir


def assert_whole(cache_dir: Path) -> None:
    """Every artifact in the cache verifies against its checksum file."""
    for kind, files in KINDS.items():
        for path in files(cache_dir):
            assert problem_with(path) is None, (kind, path.name)


def assert_same_as_clean(clean, result) -> None:
    _, _, codes, audio = clean
    np.testing.assert_array_equal(result[0], codes)
    np.testing.assert_array_equal(result[1], audio)


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_optimized_graphs_are_reported_and_made_again(clean, cache_copy, how):
    # the encoder graph opens on the first encode: with the voice profile read from the cache, never
    victims = [path for path in optimized(cache_copy) if not path.name.startswith("mimi_encoder_step")]
    for path in victims:
        damage(path, how)
    result = speak(cache_copy, clean[1])
    events = result[2]
    for path in victims:
        assert any(e.startswith(f"onnxruntime: rebuilding {path.name}: ") for e in events), (path.name, events)
    assert len(events) == len(victims)  # the graphs themselves were fine: nothing else rebuilt
    assert_same_as_clean(clean, result)
    assert_whole(cache_copy)
    again = speak(cache_copy, clean[1])
    assert again[2] == []  # repaired: read from the cache, nothing to say
    assert_same_as_clean(clean, again)


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_exported_graph_is_reported_and_exported_again(clean, cache_copy, how):
    """One graph per case (each export takes seconds), a different one in each: the four a turn opens."""
    opened = [path for path in graphs(cache_copy) if not path.name.startswith("mimi_encoder_step")]
    victim = opened[DAMAGES.index(how) % len(opened)]
    damage(victim, how)
    result = speak(cache_copy, clean[1])
    rebuilt = [e for e in result[2] if e.startswith(f"onnxruntime: rebuilding {victim.name}: ")]
    assert len(rebuilt) == 1, result[2]
    assert_same_as_clean(clean, result)
    assert_whole(cache_copy)
    assert speak(cache_copy, clean[1])[2] == []


def test_a_damaged_encoder_graph_is_exported_again_when_the_voice_is_encoded_again(clean, cache_copy):
    [encoder] = [path for path in graphs(cache_copy) if path.name.startswith("mimi_encoder_step")]
    [entry] = profiles(cache_copy)
    damage(encoder, "bytes-flipped")
    entry.unlink()  # the voice clip is encoded again, on the encoder graph
    result = speak(cache_copy, clean[1])
    assert [e for e in result[2] if e.startswith(f"onnxruntime: rebuilding {encoder.name}: ")], result[2]
    assert_same_as_clean(clean, result)
    assert_whole(cache_copy)


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_voice_profile_is_reported_and_encoded_again(clean, cache_copy, how):
    [entry] = profiles(cache_copy)
    damage(entry, how)
    result = speak(cache_copy, clean[1])
    [event] = [e for e in result[2] if "voice profile" in e]
    assert str(entry) in event and "cannot be used" in event and "encoding" in event and "again" in event
    assert not [e for e in result[2] if "rebuilding" in e]  # only the profile was made again
    assert_same_as_clean(clean, result)
    assert_whole(cache_copy)
    assert speak(cache_copy, clean[1])[2] == []


def test_an_optimized_graph_onnxruntime_rejects_is_made_again(clean, cache_copy):
    """A file whose checksum file matches it but that onnxruntime cannot load (written by a broken run)."""
    from csm_core.artifact_check import seal

    victim = optimized(cache_copy)[0]
    victim.write_bytes(b"not an onnx model")
    seal(victim)
    result = speak(cache_copy, clean[1])
    [event] = result[2]
    assert event.startswith(f"onnxruntime: rebuilding {victim.name}: onnxruntime cannot load it")
    assert_same_as_clean(clean, result)
    assert_whole(cache_copy)


def test_an_optimized_graph_that_cannot_be_replaced_is_refused_naming_it(clean, cache_copy):
    """Something else (here a folder) sits where the optimized graph goes: it can be neither read nor
    removed, so the turn stops with an error that names the file and what to do."""
    from csm_core.errors import CsmError

    victim = optimized(cache_copy)[0]
    victim.unlink()
    victim.mkdir()
    (victim / "keep").write_text("not ours")
    with pytest.raises(CsmError) as error:
        speak(cache_copy, clean[1])
    message = str(error.value)
    assert str(victim) in message and "cannot be removed" in message and "delete it" in message
    assert (victim / "keep").is_file()  # nothing of someone else's was deleted


def test_csmctl_export_repairs_damaged_graphs(clean, cache_copy):
    """``csmctl export`` opens every graph's session: damaged optimized graphs and graphs are made again."""
    damaged_opt = optimized(cache_copy)
    for path in damaged_opt:
        damage(path, "bytes-flipped")
    damaged_graph = graphs(cache_copy)[0]
    damage(damaged_graph, "checksum-wrong")
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "300", "CSM_CACHE_DIR": str(cache_copy),
           "CSM_LOAD_PLUGINS": "model,pytorch,onnxruntime"}
    result = subprocess.run([CSMCTL, "export", "--preset", "tiny", "--device", "cpu"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: onnxruntime: rebuilding")]
    for path in [damaged_graph, *damaged_opt]:
        assert any(f"rebuilding {path.name}: " in line for line in notes), (path.name, result.stdout)
    assert_whole(cache_copy)
    after = speak(cache_copy, clean[1])
    assert after[2] == []  # export left a whole cache: the turn reads everything from it
    assert_same_as_clean(clean, after)


# ------------------------------------------------------------ graphs whose weights are in a .data file


def toy_spec_and_build():
    """A MatMul graph whose weights the build writes to an external data file (as past 2 GB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from csm_export.artifacts import ArtifactSpec

    weights = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)

    def build(path: Path) -> None:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "toy", [x], [y],
                                  [numpy_helper.from_array(weights, "W")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".weights", size_threshold=0)

    spec = ArtifactSpec("toy", "0123456789abcdef", export={"exporter": "test", "opset": 18}, facts={"width": 32})
    return spec, build


def toy_output(directory: Path, events: list) -> np.ndarray:
    """Open the toy artifact as the engines do (verified graph, then a session over its optimized graph)."""
    from csm_export.artifacts import ensure_artifact
    from csm_onnxruntime.session import SessionOptions, create_session

    spec, build = toy_spec_and_build()
    artifact = ensure_artifact(directory, spec, build, events.append)
    session, _ = create_session(artifact.path, artifact.sha256, "cpu", SessionOptions(), allow_fallback=False,
                                report=events.append)
    return session.run(None, {"x": np.linspace(-1, 1, 32, dtype=np.float32)[None]})[0]


@pytest.mark.parametrize("how", ("truncated", "bytes-flipped"))
def test_a_damaged_external_data_file_is_reported_and_exported_again(tmp_path, how):
    clean_events: list[str] = []
    clean_output = toy_output(tmp_path, clean_events)
    assert toy_output(tmp_path, clean_events).tolist() == clean_output.tolist() and len(clean_events) == 1
    [data] = sorted(tmp_path.glob("*.onnx.data"))
    damage(data, how)  # the graph's checksum file lists its data file
    events: list[str] = []
    output = toy_output(tmp_path, events)
    assert len(events) == 1 and events[0].startswith("onnxruntime: rebuilding toy-") and data.name in events[0]
    np.testing.assert_array_equal(output, clean_output)
