"""The out-of-tree example backend (``examples/csm-compiled-backend``), installed for real.

``pip install --target`` puts the distribution in a folder of its own (the venv is left alone); every
``csmctl`` below runs with that folder on ``PYTHONPATH``, so the backend is found the way a third
party's is: through the ``csm_multi`` entry point of its installed dist-info. Parity is the bar every
backend meets: greedy codes identical to the ``pytorch`` backend's. Its ``torch.compile`` backend is
``aot_eager`` here (seconds to compile, no C++ compiler needed); the default, ``inductor``, is the same
code path with a slower compiler.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile

from csm_core.errors import BackendUnavailable, CsmError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "csm-compiled-backend"
CSMCTL = shutil.which("csmctl") or str(Path(sys.executable).parent / "csmctl")
TEXT = "Compiled or eager, the same codes."
FRAMES = "6"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The environment of a process that sees the example installed (and a cache folder of its own)."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("compiled-backend")
    source, site = root / "source", root / "site"  # built from a copy: the build leaves nothing in the repo
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "CSM_CACHE_DIR": str(root / "cache"), "NO_COLOR": "1",
            "COLUMNS": "200", "CSM_OPTIONS__COMPILED__BACKEND": "aot_eager"}


def csmctl(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CSMCTL, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_csmctl_finds_the_installed_backend(env):
    report = json.loads(csmctl(env, "plugins", "--json").stdout)
    plugin = next(p for p in report["plugins"] if p["name"] == "compiled")
    assert plugin["distribution"] == "csm-compiled-backend" and plugin["version"] == "0.1.0"
    assert plugin["hooks"] == ["register_backends"]
    assert plugin["registered"] == ["backend:compiled"]
    assert report["conflicts"] == [] and not [f for f in report["failures"] if f["name"] == "compiled"]
    doctor = {check["name"]: check for check in json.loads(csmctl(env, "doctor", "--json").stdout)}
    assert doctor["backend compiled"]["ok"], doctor["backend compiled"]
    assert "usable (codec, csm; devices here: cpu" in doctor["backend compiled"]["detail"]


@pytest.mark.slow
def test_csmctl_say_gives_the_pytorch_backends_audio(env, tmp_path):
    """`csmctl say` on both backends, greedy: the same frames and the same samples in the WAV (Mimi is
    the same eager engine on both, so equal audio means equal codes; the codes themselves are compared
    in the next test)."""
    runs = {}
    for backend in ("compiled", "pytorch"):
        out = tmp_path / f"{backend}.wav"
        result = csmctl(env, "say", TEXT, "--preset", "tiny", "--temperature", "0", "--max-new-tokens", FRAMES,
                        "--device", "cpu", "--backend", backend, "--output", str(out), "--json")
        assert result.returncode == 0, result.stderr
        turn = json.loads(result.stdout)
        assert [(s["stage"], s["backend"]) for s in turn["metrics"]["stages"]] == [("tts", backend)]
        runs[backend] = turn["metrics"]["frames"], soundfile.read(str(out), dtype="float32")
    (frames, (audio, rate)), (want_frames, (want_audio, want_rate)) = runs["compiled"], runs["pytorch"]
    assert frames == want_frames > 0 and rate == want_rate
    assert np.array_equal(audio, want_audio)


SPEAK_ON_BOTH = textwrap.dedent("""
    import json, sys
    from csm_core.config import Settings
    from csm_core.pipeline import Pipeline

    out = {}
    for backend in ("compiled", "pytorch"):
        settings = Settings(backend=backend, device="cpu", models={"preset": "tiny"},
                            generation={"temperature": 0.0, "max_new_frames": int(sys.argv[2])})
        with Pipeline(settings) as pipeline:  # plugins from the entry points, as csmctl finds them
            turn = pipeline.speak(sys.argv[1])
            engines = type(pipeline.stage("tts").engines)
            out[backend] = {"engines": f"{engines.__module__}.{engines.__name__}",
                            "codes": turn.reply_codes.tolist(), "audio": turn.audio.samples.tolist()}
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_greedy_codes_equal_the_pytorch_backends(env):
    """The reply codes themselves, from a process that finds the backend through its entry point."""
    result = subprocess.run([sys.executable, "-c", SPEAK_ON_BOTH, TEXT, FRAMES], capture_output=True,
                            text=True, env={**env, "CSM_LOAD_PLUGINS": "model,pytorch,compiled"}, timeout=300)
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert runs["compiled"]["engines"] == "csm_compiled.engines.CompiledCsmEngines"
    codes, want = np.array(runs["compiled"]["codes"]), np.array(runs["pytorch"]["codes"])
    assert codes.shape == want.shape and codes.shape[1] > 0
    assert np.array_equal(codes, want)
    # the stated audio bound: identical, since Mimi is the same eager engine on both backends
    assert np.array_equal(np.array(runs["compiled"]["audio"]), np.array(runs["pytorch"]["audio"]))


# -- the example's checks, imported from its source folder (fast) -----------------------------------
@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import csm_compiled.plugin

    return csm_compiled.plugin


def test_check_says_what_is_missing_without_torch(plugin, monkeypatch):
    for name in ("torch", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)  # find_spec(name) is None: as if not installed
    with pytest.raises(BackendUnavailable, match=r"the compiled backend needs torch and transformers: "
                                                  r"pip install 'csm-multi\[torch\]'"):
        plugin.check()


def test_device_check_names_a_torch_build_without_cuda(plugin, monkeypatch):
    monkeypatch.setattr(plugin.metadata, "version", lambda name: "2.13.0+cpu")
    assert plugin.device_check("cpu") is None
    assert plugin.device_check("cuda") == "this torch build (2.13.0+cpu) has no CUDA support"


class _Context:
    def __init__(self, **settings):
        import logging

        from csm_core.config import Settings

        self.settings = Settings(**settings)
        self.log = logging.getLogger("test")


def test_an_unknown_compile_backend_is_an_error_naming_the_choices(plugin):
    torch = pytest.importorskip("torch")
    context = _Context(options={"compiled": {"backend": "no-such-compiler"}})
    with pytest.raises(BackendUnavailable, match=r"backend = 'no-such-compiler' is not a torch.compile backend "
                                                  r"here; choose one of .*aot_eager.*inductor"):
        plugin._csm_engines(torch.nn.Linear(1, 1), context)


def test_settings_the_backend_cannot_honour_are_errors_not_ignored(plugin):
    torch = pytest.importorskip("torch")
    context = _Context(weight_quantization={"csm": {"bits": 8}})
    with pytest.raises(CsmError, match="the compiled backend does not quantize weights"):
        plugin._csm_engines(torch.nn.Linear(1, 1), context)
    with pytest.raises(CsmError, match="the compiled backend runs the Mimi codec in fp32 only"):
        plugin._codec_engine(None, _Context(component_precision={"codec": "fp16"}))
