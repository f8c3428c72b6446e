"""The bench report: JSON document, Markdown ratios from a document built here, the PNG plot."""

from __future__ import annotations

import json

import pytest

from csm_bench.matrix import Cell
from csm_bench.report import SCHEMA, build_document, markdown, read_document, write_json
from csm_bench.runner import CellResult

FLOOR = {"precision": "fp32", "bytes_per_frame": 400_000_000, "bandwidth_bytes_per_s": 10e9,
         "bandwidth_source": "given (--bandwidth-gbs)", "seconds_per_frame": 0.04, "frames_per_second": 25.0}


def ran(backend: str, optimizers: tuple[str, ...], fps: float, quality: dict | None = None,
        effects: dict | None = None, paired: float | None = None) -> CellResult:
    figures = {"frames": 24, "frames_per_second": fps, "real_time_factor": 12.5 / fps,
               "time_to_first_audio_s": 0.25, "peak_rss_bytes": 512 * 1024 * 1024, "x_floor": 25.0 / fps,
               "added_rss_bytes": 64 * 1024 * 1024, "repeat_code_agreement": 1.0, "paired_speedup": paired}
    return CellResult(Cell("small", backend, optimizers), "ok", precision="fp32", effects=effects or {},
                      figures=figures, floor=FLOOR, quality=quality)


@pytest.fixture
def document() -> dict:
    results = [
        ran("pytorch", (), 10.0),
        ran("pytorch", ("fast",), 15.0,
            {"code_agreement": 0.5, "snr_db": 3.25, "log_spectral_distance_db": 4.5, "versus": "small/pytorch/none"},
            {"fast": "approximate"}),
        ran("pytorch", ("paired",), 30.0, paired=1.25),
        CellResult(Cell("small", "pytorch", ("cuda-graphs",)), "skipped", "CUDA graphs need a CUDA device"),
        ran("transformers-reference", (), 5.0),
        ran("pytorch", ("claims-exact",), 11.0, {"code_agreement": 0.75, "versus": "small/pytorch/none"},
            {"claims-exact": "exact"}),
        CellResult(Cell("small", "broken", ()), "error", "RuntimeError: boom"),
    ]
    return build_document(results, {"frames": 24, "repeats": 3, "warmup": 1, "seed": 0},
                          {"cpu": "Test CPU", "cores": 2, "versions": {"torch": "2.13.0"}, "gpu": None})


def rows(text: str) -> dict[tuple[str, str], list[str]]:
    table = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| backend"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            table[(cells[0], cells[1])] = cells
    return table


def test_markdown_shows_ratios_against_baseline_reference_and_floor(document):
    text = markdown(document)
    table = rows(text)
    base, fast, ref = table[("pytorch", "none")], table[("pytorch", "fast (approximate)")], \
        table[("transformers-reference", "none")]
    # columns: backend, optimizers, frames/s, RTF, first audio, speed-up, vs reference, x floor,
    # code agreement, SNR, LSD, RSS
    assert base[2:8] == ["10.0", "1.25", "250", "1.00x", "2.00x", "2.5"]
    assert fast[2:12] == ["15.0", "0.83", "250", "1.50x", "3.00x", "1.7", "0.500", "3.2", "4.50", "512 / 64"]
    assert table[("pytorch", "paired")][5] == "1.25x"  # the paired speed-up wins over the ratio of rates (3.00x)
    assert ref[5:7] == ["-", "1.00x"]
    assert "Physical limit, preset `small` at fp32: 400.0 MB of weights read per frame / 10.0 GB/s" in text
    assert "40.00 ms per frame (25.0 frames/s)" in text and "Test CPU, 2 cores" in text


def test_an_exact_optimizer_that_changes_codes_is_flagged(document):
    table = rows(markdown(document))
    assert "QUALITY GATE FAILED: exact optimizer(s) claims-exact changed the codes" in \
        table[("pytorch", "claims-exact (exact)")][-1]
    assert "QUALITY GATE" not in table[("pytorch", "fast (approximate)")][-1]


def test_skipped_and_failed_cells_carry_their_reasons(document):
    table = rows(markdown(document))
    assert table[("pytorch", "cuda-graphs")][-1] == "skipped: CUDA graphs need a CUDA device"
    assert table[("broken", "none")][-1] == "error: RuntimeError: boom"
    skipped = next(c for c in document["cells"] if c["status"] == "skipped")
    assert skipped["reason"] == "CUDA graphs need a CUDA device" and skipped["figures"] == {}


def test_json_round_trip_and_schema_check(document, tmp_path):
    path = tmp_path / "bench.json"
    write_json(document, path)
    loaded = read_document(path)
    assert loaded["schema"] == SCHEMA and loaded["cells"][0] == json.loads(json.dumps(document["cells"][0]))
    document["cells"][1]["quality"]["snr_db"] = float("inf")  # identical audio
    write_json(document, path)
    assert '"snr_db": "inf"' in path.read_text()  # strict JSON: no Infinity literal
    assert rows(markdown(read_document(path)))[("pytorch", "fast (approximate)")][9] == "inf"
    other = tmp_path / "pytest-benchmark.json"
    other.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ValueError, match="benchmarks.report"):
        read_document(other)


def test_plot_writes_a_real_png(document, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from csm_bench.plot import plot

    path = plot(document, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas
