"""Running cells: what is skipped with its reason, what fails, and quality against the baseline cell.

The optimizers and the unusable backend here are real plugins registered with the plugin manager, as a
third-party package's would be; the cells that run load the ``tiny`` preset on the pytorch backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from csm_core import hookimpl
from csm_bench.matrix import REFERENCE_BACKEND, Cell, parse_matrix
from csm_bench.runner import MatrixRunner, run_matrix
from csm_bench.session import RunOptions, utterance_texts
from csm_core.errors import BackendUnavailable, CsmError
from csm_core.plugins import Plugins
from csm_core.records import Backend, Optimizer

pytest.importorskip("torch", reason="running cells needs the torch extra")


def _no_gpu() -> None:
    raise BackendUnavailable("the gpu-only backend needs a CUDA device")


class NeedsCuda:
    """Like CUDA graphs on a CPU-only machine: refuses, with a user-facing CsmError, when switched on."""

    def configure(self, settings):
        raise CsmError("needs-cuda: CUDA graphs need a CUDA device")


class Broken:
    def configure(self, settings):
        raise RuntimeError("a bug in the optimizer")


class Noop:
    """Changes nothing: must give the baseline's codes exactly. Counts the safe points it sees."""

    instances: list["Noop"] = []

    def __init__(self):
        self.safe_points = 0
        Noop.instances.append(self)

    @hookimpl
    def at_safe_point(self, stage, device):
        self.safe_points += 1


class Sampled:
    """Switches greedy decoding to sampling: the codes must move away from the baseline's."""

    def configure(self, settings):
        return {"generation.temperature": 1.5, "generation.top_k": 2000, "generation.seed": 7}


class BenchTestPlugin:
    @hookimpl
    def register_backends(self, register):
        register(Backend(name="gpu-only", engines={"csm": None, "codec": None}, check=_no_gpu))

    @hookimpl
    def register_optimizers(self, register):
        register(Optimizer("needs-cuda", lambda context: NeedsCuda()))
        register(Optimizer("broken", lambda context: Broken()))
        register(Optimizer("noop", lambda context: Noop(), effect="exact"))
        register(Optimizer("sampled", lambda context: Sampled(), effect="approximate"))


def with_test_plugin() -> Plugins:
    plugins = Plugins.from_environment()
    plugins.register(BenchTestPlugin(), name="bench-test")
    return plugins


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The factory of each pipeline's plugin manager: the installed plugins and the test plugin."""
    monkeypatch.setenv("CSM_CACHE_DIR", str(tmp_path / "cache"))
    return with_test_plugin


OPTIONS = RunOptions(frames=2, repeats=1, warmup=0, bandwidth_gbs=10.0)


def test_cells_that_cannot_run_are_skipped_with_the_reason(plugins):
    runner = MatrixRunner(OPTIONS, plugins)
    results = {cell.id: runner.run(cell) for cell in [
        Cell("tiny", "no-such-backend"), Cell("tiny", "pytorch", ("no-such-optimizer",)),
        Cell("tiny", "gpu-only"), Cell("tiny", "pytorch", ("needs-cuda",)),
        Cell("tiny", REFERENCE_BACKEND, ("noop",)),
    ]}
    assert {r.status for r in results.values()} == {"skipped"}
    reasons = {cell_id: r.reason for cell_id, r in results.items()}
    assert "unknown backend 'no-such-backend'" in reasons["tiny/no-such-backend/none"]
    assert "pytorch" in reasons["tiny/no-such-backend/none"]  # names the known ones
    assert "unknown optimizer 'no-such-optimizer'" in reasons["tiny/pytorch/no-such-optimizer"]
    assert "noop" in reasons["tiny/pytorch/no-such-optimizer"]
    assert reasons["tiny/gpu-only/none"] == "the gpu-only backend needs a CUDA device"
    assert reasons["tiny/pytorch/needs-cuda"] == "needs-cuda: CUDA graphs need a CUDA device"
    assert "optimizers do not apply" in reasons[f"tiny/{REFERENCE_BACKEND}/noop"]


def test_a_failing_cell_is_an_error_with_the_reason_not_a_crash(plugins):
    result = MatrixRunner(OPTIONS, plugins).run(Cell("tiny", "pytorch", ("broken",)))
    assert result.status == "error" and result.reason == "RuntimeError: a bug in the optimizer"


@pytest.mark.slow
def test_optimized_cells_are_measured_and_compared_with_the_baseline(plugins):
    cells = parse_matrix("pytorch", "none,noop,sampled", "tiny", ["tiny"])
    seen = []
    results = run_matrix(cells, OPTIONS, plugins, on_cell=lambda cell, result: seen.append((cell.id, result)))
    assert [cell_id for cell_id, _ in seen][::2] == [c.id for c in cells] and seen[0][1] is None
    base, noop, sampled = results
    assert [r.status for r in results] == ["ok", "ok", "ok"], [r.reason for r in results]
    for result in results:
        figures = result.figures
        assert figures["frames"] == 2 and figures["frames_per_second"] > 0
        assert figures["real_time_factor"] == pytest.approx(sum(figures["generation_seconds"]) / 0.16, rel=1e-3)
        assert 0 < figures["time_to_first_audio_s"] <= figures["generation_seconds"][0]
        assert figures["stage_seconds"]["tts"] >= figures["generation_seconds"][0] * 0.5
        assert figures["peak_rss_bytes"] > 50 * 1024 * 1024
        assert 0 <= figures["added_rss_bytes"] < figures["peak_rss_bytes"]
        assert result.floor["bandwidth_source"] == "given (--bandwidth-gbs)"
        assert figures["x_floor"] == pytest.approx(result.floor["frames_per_second"] / figures["frames_per_second"])
    assert base.quality is None and base.figures["paired_speedup"] is None
    for result in (noop, sampled):  # paired with the baseline pipeline, kept loaded, repeat by repeat
        assert len(result.figures["paired_ratios"]) == OPTIONS.repeats
        assert result.figures["paired_speedup"] == pytest.approx(result.figures["paired_ratios"][0])
    assert noop.effects == {"noop": "exact"} and noop.quality["code_agreement"] == 1.0
    # its hooks saw its own pipeline's frames only, not the paired baseline's: each pipeline has its plugins
    assert [n.safe_points for n in Noop.instances] == [OPTIONS.frames * (OPTIONS.warmup + OPTIONS.repeats)]
    assert noop.quality["snr_db"] == float("inf") and noop.quality["versus"] == "tiny/pytorch/none"
    assert sampled.effects == {"sampled": "approximate"} and sampled.quality["code_agreement"] < 0.9
    assert sampled.quality["snr_db"] < 20
    assert any("generation.temperature" in event for event in sampled.events)


def test_utterance_texts_differ_in_length_and_one_is_the_text_itself():
    assert utterance_texts("Hi.", 1) == ["Hi."]
    texts = utterance_texts("Hi.", 4)
    assert texts[0] == "Hi." and all(t.startswith("Hi.") for t in texts)
    assert len({len(t) for t in texts}) == 4


@pytest.mark.slow
def test_unit_codes_are_the_utterances_codes_concatenated_in_order(plugins):
    """A 2-utterance unit against each text spoken alone on the same pipeline (greedy: same codes)."""
    from csm_bench.session import CellSession

    options = RunOptions(frames=2, repeats=1, warmup=0, utterances=2)
    with CellSession(Cell("tiny", "pytorch"), options, plugins()) as session:
        unit = session.measure()
        alone = [session.pipeline.speak(text, context=()) for text in utterance_texts(options.text, 2)]
    assert [t.reply.text for t in unit.turns] == utterance_texts(options.text, 2)
    assert (unit.reply_codes == np.concatenate([t.reply_codes for t in alone], axis=1)).all()
    assert unit.metrics.frames == 4 and len(unit.audio.samples) == sum(len(t.audio.samples) for t in alone)
    assert unit.metrics.generation_seconds >= sum(t.metrics.generation_seconds for t in unit.turns)
    assert len(unit.metrics.stages) == sum(len(t.metrics.stages) for t in unit.turns)  # sequential: none shared


@pytest.mark.slow
def test_a_cells_optimizer_options_reach_its_pipeline_and_its_row(plugins):
    """``weight-quantization:bits=4``: the cell's pipeline runs 4-bit weights and its row says so."""
    from csm_bench.matrix import parse_matrix

    cells = parse_matrix("pytorch", "none,weight-quantization:bits=4", "tiny", ["tiny"])
    result = MatrixRunner(OPTIONS, plugins).run(cells[1])
    assert result.status == "ok", result.reason
    assert result.to_dict()["label"] == "weight-quantization:bits=4"
    assert result.to_dict()["options"] == {"options.weight-quantization.bits": 4}
    assert "int4" in result.precision  # the floor counts the bytes of 4-bit weights
