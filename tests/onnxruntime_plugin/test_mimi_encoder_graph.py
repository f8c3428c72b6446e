"""The exported Mimi encoder step (csm_export.mimi_encoder) on a real ONNX Runtime CPU session: codes
identical to TorchMimi.encode over seconds of audio, frame by frame with the state carried through the
graph's inputs and outputs; and its artifact spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from audio_signals import tone

FRAME = 1920
RATE = 24_000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The graph runs many small ops: on a shared 2-core CPU one intra-op thread is much faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clip(batch: int, samples: int) -> torch.Tensor:
    """[B,1,samples]: tones under a slow envelope with a DC offset (a different signal per row)."""
    rows = []
    for b in range(batch):
        base = 110.0 * (1 + b)
        x = tone(base, samples / RATE, RATE, 0.3) + tone(2.7 * base, samples / RATE, RATE, 0.15)
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * (1.3 + b) * np.arange(samples) / RATE)
        rows.append(torch.from_numpy((x * envelope + 0.1).astype(np.float32)))
    return torch.stack(rows)[:, None]


def session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def encode_with_graph(sess, mimi, num_codebooks: int, pcm: torch.Tensor):
    """What a backend does with the graph: pad the clip's end with zeros to whole chunks, carry the state
    from each call's ``new_state.*`` outputs to the next call's ``state.*`` inputs, keep the
    ``ceil(samples / FRAME)`` frames of the clip. Returns (codes [B,K,F], the last state's arrays)."""
    from csm_model.mimi_encoder_streaming import MimiStreamingEncoder

    chunk = sess.get_inputs()[0].shape[2]
    frames = -(-pcm.shape[-1] // FRAME)
    pcm = torch.nn.functional.pad(pcm, (0, -pcm.shape[-1] % chunk)).numpy()
    state = {f"state.{n}": t.numpy() for n, t in MimiStreamingEncoder(mimi, num_codebooks).init_state(pcm.shape[0]).tensors().items()}
    names = [o.name for o in sess.get_outputs()]
    pieces = []
    for start in range(0, pcm.shape[-1], chunk):
        out = dict(zip(names, sess.run(None, {"pcm": pcm[..., start : start + chunk], **state})))
        pieces.append(out.pop("codes"))
        state = {"state." + n.removeprefix("new_state."): v for n, v in out.items()}
    return torch.from_numpy(np.concatenate(pieces, axis=-1)[..., :frames]), state


@pytest.fixture(scope="module")
def graph8(tiny_mimi, tmp_path_factory):
    """The tiny Mimi's encoder step with 8 codebooks, batch 1, 1 frame (8 codebooks export in ~5 s, 32 in ~10 s)."""
    from csm_export.mimi_encoder import export_mimi_encoder_step

    path = tmp_path_factory.mktemp("mimi-encoder") / "mimi_encoder_step.onnx"
    export_mimi_encoder_step(tiny_mimi, 8, path, batch_size=1)
    return path


def test_graph_inputs_and_outputs(tiny_mimi, graph8):
    from csm_model.mimi_encoder_streaming import MimiStreamingEncoder

    sess = session(graph8)
    state = MimiStreamingEncoder(tiny_mimi, 8).init_state(1).tensors()
    inputs = {i.name: (i.shape, i.type) for i in sess.get_inputs()}
    outputs = {o.name: (o.shape, o.type) for o in sess.get_outputs()}
    assert list(inputs) == ["pcm", *(f"state.{n}" for n in state)]
    assert list(outputs) == ["codes", *(f"new_state.{n}" for n in state)]
    assert inputs["pcm"] == ([1, 1, FRAME], "tensor(float)")
    assert outputs["codes"] == ([1, 8, 1], "tensor(int64)")
    assert inputs["state.position"] == ([], "tensor(int64)")
    for name, tensor in state.items():  # every shape static, each output the shape of its input
        assert inputs[f"state.{name}"][0] == list(tensor.shape) == outputs[f"new_state.{name}"][0]


def test_graph_codes_equal_torch_mimi_encode(tiny_mimi, graph8):
    """3 s that end in part of a frame: 38 graph calls, the last frame padded as TorchMimi.encode pads it."""
    from csm_model.mimi import TorchMimi
    from csm_model.mimi_encoder_streaming import MimiStreamingEncoder

    pcm = clip(1, 37 * FRAME + 1234)
    want = TorchMimi(tiny_mimi, num_codebooks=8).encode(pcm)
    got, state = encode_with_graph(session(graph8), tiny_mimi, 8, pcm)
    assert want.shape == (1, 8, 38) and torch.equal(got, want)
    # the state the graph carried is PyTorch's, up to float rounding (exact for the position)
    padded = torch.nn.functional.pad(pcm, (0, -pcm.shape[-1] % FRAME))
    encoder = MimiStreamingEncoder(tiny_mimi, 8)
    _, torch_state = encoder.step(padded, encoder.init_state(1))
    for name, tensor in torch_state.tensors().items():
        np.testing.assert_allclose(state[f"state.{name}"], tensor.numpy(), rtol=0, atol=1e-4, err_msg=name)
    assert int(state["state.position"]) == 76


def test_spec_keys_the_graph(tiny_mimi):
    from csm_export.artifacts import mimi_decoder_spec
    from csm_export.mimi_encoder import mimi_encoder_spec

    spec = mimi_encoder_spec(tiny_mimi, 32, 1)
    decoder = mimi_decoder_spec(tiny_mimi, 32, 1)
    assert spec.component == "mimi_encoder_step" and spec.weights_hash == decoder.weights_hash
    assert {k: spec.export[k] for k in decoder.export} == decoder.export  # same exporter, opset, batch, dtype
    assert spec.export["frames"] == 1 and spec.facts["samples_per_frame"] == FRAME
    assert spec.filename().startswith("mimi_encoder_step-")
    others = [mimi_encoder_spec(tiny_mimi, 8, 1), mimi_encoder_spec(tiny_mimi, 32, 2), mimi_encoder_spec(tiny_mimi, 32, 1, frames=2)]
    assert len({spec.key(), decoder.key(), *(o.key() for o in others)}) == 5


def test_the_graph_goes_through_the_artifact_cache(tiny_mimi, graph8, tmp_path):
    import shutil

    from csm_export.artifacts import ensure_artifact
    from csm_export.mimi_encoder import mimi_encoder_spec

    spec, events = mimi_encoder_spec(tiny_mimi, 8, 1), []
    built = ensure_artifact(tmp_path, spec, lambda path: shutil.copyfile(graph8, path), events.append)
    again = ensure_artifact(tmp_path, spec, lambda path: pytest.fail("exported twice"), events.append)
    assert built.built and not again.built and again.path == built.path
    assert "exporting mimi_encoder_step" in events[0] and len(events) == 1
    pcm = clip(1, 4 * FRAME)
    assert encode_with_graph(session(again.path), tiny_mimi, 8, pcm)[0].shape == (1, 8, 4)


@pytest.mark.slow
@pytest.mark.parametrize("batch, frames", [(1, 1), (2, 3)], ids=["b1-1frame", "b2-3frames"])
def test_all_codebooks_graph_equals_torch_mimi_encode(tiny_mimi, tmp_path, batch, frames):
    """32 codebooks (the graph a backend uses; ~10 s to export), batch 1 frame by frame and batch 2 in
    chunks of 3 frames, over 5 s (the last chunk partly padding)."""
    from csm_export.mimi_encoder import export_mimi_encoder_step
    from csm_model.mimi import TorchMimi

    path = tmp_path / "mimi_encoder_step.onnx"
    export_mimi_encoder_step(tiny_mimi, 32, path, batch_size=batch, frames=frames)
    pcm = clip(batch, 62 * FRAME + 50)
    want = TorchMimi(tiny_mimi).encode(pcm)
    got, _ = encode_with_graph(session(path), tiny_mimi, 32, pcm)
    assert want.shape == (batch, 32, 63) and torch.equal(got, want)


@pytest.mark.slow
def test_real_preset_graph_past_its_window(tmp_path):
    """kyutai/mimi's config with random weights (~15 s to export): 11.2 s of audio, frame by frame, go
    past its 250-position window."""
    from csm_export.mimi_encoder import export_mimi_encoder_step
    from csm_model.mimi import TorchMimi, random_mimi

    mimi = random_mimi("real", seed=0)
    path = tmp_path / "mimi_encoder_step.onnx"
    export_mimi_encoder_step(mimi, 32, path)
    pcm = clip(1, 140 * FRAME)
    got, state = encode_with_graph(session(path), mimi, 32, pcm)
    assert torch.equal(got, TorchMimi(mimi).encode(pcm))
    assert int(state["state.position"]) == 280 and state["state.keys"].shape[3] == 249
