"""Component benchmarks: one engine call at a time, on each backend's engines as the ``csm`` stage built them.

Groups, one per component: ``component backbone.prefill`` (the benchmark text's prompt from an empty
cache), ``component backbone.step`` (one backbone position after that prefill),
``component decoder.frame`` (the depth decoder's K-1 steps of one frame), ``component codec.decode_step``
(Mimi decoding one frame with its streaming state). The engines are taken from a loaded baseline cell
(:class:`csm_bench.session.CellSession`) of each backend in ``CSM_BENCH_BACKENDS``, on the
``CSM_BENCH_PRESET`` weights; a backend that cannot run here is skipped with the reason.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import BENCH_BACKENDS, BENCH_PRESET
from csm_bench.matrix import REFERENCE_BACKEND, Cell, split_names
from csm_bench.session import SKIP_ERRORS, CellSession, skip_reason

BACKENDS = [name for name in split_names(BENCH_BACKENDS, "CSM_BENCH_BACKENDS") if name != REFERENCE_BACKEND]
COMPONENTS = ("backbone.prefill", "backbone.step", "decoder.frame", "codec.decode_step")


@pytest.fixture(scope="module")
def speakers(matrix_runner):
    """backend -> (its loaded ``csm`` speaker, or the reason it cannot run here)."""
    loaded, sessions = {}, []
    for backend in BACKENDS:
        cell = Cell(BENCH_PRESET, backend)
        reason = skip_reason(cell, matrix_runner.registry)
        if reason is None:
            try:
                session = CellSession(cell, matrix_runner.options, matrix_runner.new_plugins())
            except SKIP_ERRORS as exc:
                reason = str(exc)
            else:
                sessions.append(session)
                loaded[backend] = session.pipeline.stage("tts")
        if reason is not None:
            loaded[backend] = reason
    yield loaded
    for session in sessions:
        session.close()


def _prompt(speaker):
    """(embeddings [1, T, D], positions [1, T]) of the benchmark text's prompt, as the csm stage builds it."""
    from csm_bench.session import DEFAULT_TEXT
    from csm_core.generation import build_prompt

    engines, embedder = speaker.engines, speaker.embedder
    prompt = build_prompt([], 0, DEFAULT_TEXT, speaker.tokenizer, num_codebooks=embedder.num_codebooks,
                          max_frames=8, max_positions=engines.backbone.max_positions)
    tokens, mask = prompt.tokens[None].to(embedder.device), prompt.mask[None].to(embedder.device)
    return embedder.embed_frames(tokens, mask), torch.arange(tokens.shape[1], device=embedder.device)[None]


def _time_backbone_prefill(benchmark, speaker):
    backbone = speaker.engines.backbone
    embeds, positions = _prompt(speaker)

    def prefill():
        backbone.reset()
        backbone.prefill(embeds, positions)

    benchmark.pedantic(prefill, rounds=10, warmup_rounds=1)
    benchmark.extra_info["positions"] = int(positions.shape[1])


def _time_backbone_step(benchmark, speaker):
    engines, embedder = speaker.engines, speaker.embedder
    embeds, positions = _prompt(speaker)
    engines.backbone.reset()
    engines.backbone.prefill(embeds, positions)
    frame = torch.ones(1, embedder.num_codebooks, dtype=torch.long, device=embedder.device)
    embed, position = embedder.embed_codes(frame), positions[:, -1:] + 1
    benchmark.pedantic(lambda: engines.backbone.step(embed, position), rounds=20, warmup_rounds=2)


def _time_decoder_frame(benchmark, speaker):
    engines, embedder = speaker.engines, speaker.embedder
    d = embedder.audio_embeddings.shape[1]
    hidden = torch.zeros(1, 1, d, dtype=embedder.dtype, device=embedder.device)
    code = torch.ones(1, dtype=torch.long, device=embedder.device)

    def frame():
        engines.decoder.reset()
        x = torch.cat((hidden, embedder.embed_audio(0, code)), dim=1)
        positions = torch.arange(2, device=embedder.device)[None]
        for i in range(1, embedder.num_codebooks):
            engines.decoder.step(x, positions)
            x = embedder.embed_audio(i, code)
            positions = torch.full((1, 1), i + 1, dtype=torch.long, device=embedder.device)

    benchmark.pedantic(frame, rounds=10, warmup_rounds=1)


def _time_codec_step(benchmark, speaker):
    codec = speaker.codec
    codes = torch.ones(1, codec.num_codebooks, 1, dtype=torch.long, device=speaker.embedder.device)
    state = [codec.init_state(1)]

    def step():
        _, state[0] = codec.decode_step(codes, state[0])

    benchmark.pedantic(step, rounds=20, warmup_rounds=2)


TIMERS = {"backbone.prefill": _time_backbone_prefill, "backbone.step": _time_backbone_step, "decoder.frame": _time_decoder_frame,
          "codec.decode_step": _time_codec_step}


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_component(benchmark, speakers, backend, component):
    benchmark.group = f"component {component}"
    speaker = speakers[backend]
    if isinstance(speaker, str):
        pytest.skip(speaker)
    with torch.inference_mode():
        TIMERS[component](benchmark, speaker)
    benchmark.extra_info.update(backend=backend, preset=BENCH_PRESET, component=component,
                                calls_per_second=1.0 / benchmark.stats.stats.mean)
