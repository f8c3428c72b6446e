"""The ``csm`` text-to-speech stage: CSM weights, engines from the stage's backend, the core's frame loop.

The stage owns what is the same on every backend (prompt assembly, embeddings, sampling, end of speech,
streaming through Mimi's streaming decoder); the backend chosen for the ``tts`` stage supplies the
``csm`` engines (backbone, depth decoder) and the ``codec`` engine.

:meth:`CsmSpeaker.speak` speaks one request; :meth:`CsmSpeaker.speak_batch` speaks several together on a
continuous-batching session (:meth:`CsmSpeaker.open_session`, :class:`SpeechSession` over
:class:`~csm_core.generation.batch_session.BatchSession`), the one batching path: ``speak_many`` with
``batched-generation``, ``csmctl bench --utterances`` and the server's continuous batching all run on it.
The session needs engines with per-row KV-cache calls (:mod:`csm_core.generation.row_engines`: the eager
PyTorch engines, re-allocated for the rows); ONNX graphs, TensorRT engines and captured CUDA graphs serve
one request at a time. The stage claims the ``position_window`` and ``batch`` capabilities
(:mod:`csm_core.stages`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from csm_core.config import MAX_BATCH
from csm_core.devices import resolve_device
from csm_core.errors import CsmError
from csm_core.generation.batch_session import BatchSession
from csm_core.generation.row_engines import BatchingUnsupported, OneRow, row_engines
from csm_core.generation.embedder import FrameEmbedder
from csm_core.generation.frames import SilenceGuard, generate_frames
from csm_core.generation.prompt import Prompt, build_prompt
from csm_core.generation.sampling import SamplingParams
from csm_core.records import StageContext
from csm_core.stages import BATCH, POSITION_WINDOW, SpeechChunk, SpeechParams, SpeechRequest
from csm_core.config import plugin_options
from csm_model.decoding_workers import open_decoding
from csm_model.pipelined_decoding import decoded_chunks
from csm_model.options import CsmOptions
from csm_model.sources import load_csm_weights, load_mimi_model


def shared_codec(context: StageContext, device: str):
    """The Mimi codec engine on ``context``'s backend, loaded once per pipeline."""
    key = ("codec", context.backend.name, device)
    return context.resource(key, lambda: context.engine("codec", load_mimi_model(context.settings, device)))


class CsmSpeaker:
    """Speaks text with CSM, yielding audio frame by frame (80 ms each) as it is generated."""

    capabilities = frozenset({POSITION_WINDOW, BATCH})

    def __init__(self, context: StageContext):
        settings = context.settings
        self.settings = settings
        self.context = context
        self.options = plugin_options(settings, "csm", CsmOptions)
        self.device = resolve_device(settings.device, settings.allow_fallback, context.report)
        weights = load_csm_weights(settings, self.device, context.report)
        context.log.info("CSM: %s on %s (backend %s)", weights.source, self.device, context.backend.name)
        self.args = weights.model.args
        self.tokenizer = weights.tokenizer
        self.embedder = FrameEmbedder.from_model(weights.model)
        self.engines = context.engine("csm", weights.model)
        self.codec = shared_codec(context, self.device)
        if self.codec.num_codebooks != self.args.num_codebooks:
            raise CsmError(
                f"the codec gives {self.codec.num_codebooks} codebooks but CSM expects "
                f"{self.args.num_codebooks}: use the Mimi checkpoint that belongs to this CSM"
            )
        self.sample_rate = self.codec.sample_rate
        self.decoding = open_decoding(self.codec, self.device, self.options.pipelined_decoding,
                                      self.options.decoding_worker)
        self.decoding_note = f"pipelined decoding: {self.decoding.describe()}" if self.options.pipelined_decoding else None
        if self.decoding_note:
            context.log.info(self.decoding_note)

    def close(self) -> None:
        """Stop the decoding worker, if any (:meth:`Pipeline.close <csm_core.pipeline.Pipeline.close>` calls this)."""
        self.decoding.close()

    @property
    def max_positions(self) -> int:
        """The backbone's position budget (2048 for CSM-1B): prompt plus generated frames."""
        return self.engines.backbone.max_positions

    def count_text_tokens(self, text: str) -> int:
        """Text tokens ``text`` costs in the prompt (the context policy counts with this)."""
        return len(self.tokenizer.encode(text))

    def _prompt(self, request: SpeechRequest):
        if not request.text.strip():
            raise CsmError("the text to speak is empty")
        try:
            return build_prompt(
                request.context, request.speaker, request.text, self.tokenizer,
                num_codebooks=self.args.num_codebooks,
                max_frames=request.params.max_frames,
                max_positions=self.engines.backbone.max_positions,
            )
        except ValueError as exc:
            raise CsmError(str(exc)) from None

    def _sampling(self, params: SpeechParams) -> SamplingParams:
        return SamplingParams(
            temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
            code_limit=self.codec.codebook_size,  # never sample a code the codec cannot decode
        )

    def speak(self, request: SpeechRequest) -> Iterator[SpeechChunk]:
        prompt = self._prompt(request)
        params = request.params
        frames = generate_frames(
            self.engines, self.embedder, prompt,
            max_frames=params.max_frames,
            sampling=self._sampling(params),
            seed=params.seed,
            silence_guard=SilenceGuard(self.settings.generation.max_silent_frames),
        )
        chunks = decoded_chunks(frames, self.decoding)
        try:
            for frame, samples in chunks:
                yield SpeechChunk(samples=samples, codes=frame[0].cpu().numpy().astype(np.int64)[:, None])
                self.context.safe_point(self.device)
        finally:
            chunks.close()  # a closed (cancelled) speak stops the frame loop at once
            if self.decoding_note:
                self.context.events.append(self.decoding_note)  # the turn's metrics say which worker ran

    def open_session(self, rows: int) -> "SpeechSession":
        """A continuous-batching session of up to ``rows`` requests (:class:`SpeechSession`).

        Raises :class:`~csm_core.generation.row_engines.BatchingUnsupported` (a :class:`CsmError`) for more
        than one row on engines that serve one request at a time. While it is in use, :meth:`speak` and
        :meth:`speak_batch` must not run (they reset or re-prefill the KV cache rows the session's
        requests live in).
        """
        engines = row_engines(self.engines, rows)
        if not isinstance(engines, OneRow) and engines is not self.engines:
            self.context.report(f"csm: KV caches re-allocated for {rows} rows (continuous batching)")
            self.engines = self.context.built("csm", engines)
        session = BatchSession(engines, self.embedder, rows, SilenceGuard(self.settings.generation.max_silent_frames))
        return SpeechSession(self, session)

    def speak_batch(self, requests: Sequence[SpeechRequest]) -> Iterator[tuple[int, SpeechChunk]]:
        """Speak several requests together on a continuous-batching session (:meth:`open_session`); yields
        ``(row, chunk)`` as frames are made.

        ``row`` indexes ``requests``. The session gets ``min(len(requests), generation.max_batch)`` rows
        (``max_batch`` unset: up to 64); requests join in order, the first ones at once, the others at the
        frame boundary after a row frees up. Each step of the frame loop yields one 80 ms chunk for every
        row still speaking, in row order; a row that has ended (end of speech, silence guard, or its
        ``max_frames``) yields nothing more, and the generator returns when every row has ended. A row's
        chunks, concatenated, are its utterance. Each row keeps its own :class:`SpeechParams` (sampling
        parameters, seed, ``max_frames``) and its own random generator and streaming Mimi state, so its
        codes equal those of :meth:`speak` on that request alone, under greedy decoding and under seeded
        sampling, whichever requests share the batch. Every request is checked (prompt, budget) before
        any is generated. More than one row on engines that serve one request at a time raises
        :class:`CsmError` naming the backend and what to change.
        """
        requests = list(requests)
        if not requests:
            raise CsmError("speak_batch: no requests given; pass at least one SpeechRequest")
        prompts = []
        for row, request in enumerate(requests):
            try:
                prompts.append(self._prompt(request))
            except CsmError as exc:
                raise CsmError(f"speak_batch: request {row}: {exc}") from None
        rows = min(len(requests), self.settings.generation.max_batch or MAX_BATCH)
        try:
            session = self.open_session(rows)
        except BatchingUnsupported:
            engines = self.engines
            backend = self.context.backend.name if self.context.backend else "?"
            raise CsmError(
                f"batched generation of {rows} utterances: the {backend!r} backend's csm engines "
                f"({type(engines).__name__} with {type(engines.backbone).__name__}) run a fixed batch of "
                f"{engines.batch_size} (exported graphs / captured CUDA graphs cannot grow); run the tts stage on the "
                "'pytorch' backend without cuda graphs (backends.tts = 'pytorch', options.pytorch.cuda_graphs = "
                "false), or remove 'batched-generation' from optimizers (generation.max_batch) to speak one by one"
            ) from None
        waiting = deque(enumerate(zip(requests, prompts)))
        owner: dict[int, int] = {}  # session row -> index into requests
        made = [0] * len(requests)  # frames each row has made
        try:
            while waiting or len(session):
                while waiting and session.free:  # at a frame boundary: fill the free slots, in row order
                    row, (request, prompt) = waiting.popleft()
                    try:
                        owner[session.add(request, prompt=prompt)] = row
                    except CsmError as exc:
                        raise CsmError(f"speak_batch: request {row}: {exc}") from None
                live = []
                for slot, chunk in session.step().items():
                    row = owner[slot]
                    if chunk is not None:
                        live.append((row, chunk))
                        made[row] += 1
                    if chunk is None or made[row] == requests[row].params.max_frames:
                        session.remove(slot)  # done: the slot is free for a waiting request at once
                        del owner[slot]
                yield from sorted(live, key=lambda item: item[0])
        finally:
            session.close()
            if self.decoding_note:
                self.context.events.append(self.decoding_note)


class SpeechSession:
    """Continuous batching on the ``csm`` stage: a :class:`~csm_core.generation.batch_session.BatchSession`
    plus a row of the stage's decoding (:mod:`csm_model.decoding_workers`) per request. ``add(request) ->
    row``, ``step() -> {row: SpeechChunk or None}`` (None: the row ended), ``remove(row)``. Each row's audio
    is decoded with its own streaming state, so a row's chunks are those :meth:`CsmSpeaker.speak` gives.

    A row is a handle of its own, never reused (a KV-cache slot is, as soon as its row has ended), so
    a late chunk can never be taken for another request's. With pipelined decoding
    (``options.csm.pipelined_decoding``) the frames a step makes are decoded on the worker while the next
    step generates: :meth:`step` returns the audio of the frames made by the call before it (one frame
    later; identical codes and audio), and a row's end comes after its last chunk, as without pipelining.
    """

    def __init__(self, speaker: CsmSpeaker, session: BatchSession) -> None:
        self.speaker, self.session = speaker, session
        self.rows = session.rows
        self.decoding = speaker.decoding
        self._row_of_slot: dict[int, int] = {}  # the KV-cache slot of a live row -> the row
        self._live: set[int] = set()  # rows added whose end has not been returned (nor removed)
        self._pending: list[tuple[int, torch.Tensor | None]] = []  # made by the last step, not decoded yet

    @property
    def free(self) -> int:
        """KV-cache slots free for :meth:`add` now."""
        return self.session.free

    def __len__(self) -> int:
        """Rows added whose end has not been returned by :meth:`step` (nor removed)."""
        return len(self._live)

    def add(self, request: SpeechRequest, *, prompt: Prompt | None = None) -> int:
        """Prefill ``request`` into a free slot; it speaks from the next :meth:`step`; returns its row.
        Raises :class:`CsmError` for a request that cannot be spoken (and SessionFull when no slot is free).
        ``prompt``: the request's prompt when the caller has built it already (``CsmSpeaker._prompt``)."""
        speaker = self.speaker
        prompt = speaker._prompt(request) if prompt is None else prompt
        params = request.params
        try:
            slot = self.session.add(prompt, max_frames=params.max_frames, sampling=speaker._sampling(params),
                                    seed=params.seed)
        except ValueError as exc:
            raise CsmError(str(exc)) from None
        row = self.decoding.open()
        self._row_of_slot[slot] = row
        self._live.add(row)
        return row

    def remove(self, row: int) -> None:
        """Drop ``row`` (cancelled, failed, or done by its caller); nothing more comes for it."""
        for slot, live in list(self._row_of_slot.items()):
            if live == row:
                del self._row_of_slot[slot]
                self.session.remove(slot)
        if row in self._live:
            self._live.discard(row)
            self.decoding.drop(row)

    def close(self) -> None:
        """Drop every row still open on the stage's decoding (the session is not used after this)."""
        for row in list(self._live):
            self.remove(row)
        self._pending = []

    def step(self) -> dict[int, SpeechChunk | None]:
        """One frame for every active row, decoded to audio: ``{row: chunk}``, None for a row that ended.

        The rows' frames are decoded together, in one codec call where the codec offers ``decode_rows``."""
        if self.decoding.ahead:  # decode the last step's frames on the worker while this step generates
            decoding = self._submit(self._pending)
            self._pending = self._generate()
            out = self._collect(*decoding)
        else:
            out = self._collect(*self._submit(self._generate()))
        self.speaker.context.safe_point(self.speaker.device)
        return out

    def _generate(self) -> list[tuple[int, torch.Tensor | None]]:
        made = []
        for slot, frame in self.session.step().items():
            row = self._row_of_slot[slot]
            if frame is None:
                del self._row_of_slot[slot]  # the slot is free; the row ends once its frames are decoded
            made.append((row, frame))
        return made

    def _submit(self, made: list[tuple[int, torch.Tensor | None]]):
        """Send ``made``'s frames of live rows to the decoding: (rows, codes [n,K], ended rows, job or None)."""
        live = [(row, frame) for row, frame in made if row in self._live]
        rows = [row for row, frame in live if frame is not None]
        codes = torch.stack([frame for _, frame in live if frame is not None]) if rows else None
        job = self.decoding.submit(rows, codes) if rows else None
        return rows, codes, [row for row, frame in live if frame is None], job

    def _collect(self, rows, codes, ended, job) -> dict[int, SpeechChunk | None]:
        """The chunks of a :meth:`_submit`; rows removed since are skipped, ended rows are dropped."""
        out: dict[int, SpeechChunk | None] = {}
        if job is not None:
            samples = job.result()
            all_codes = codes.cpu().numpy().astype(np.int64)[:, :, None]  # [n,K,1]
            for i, row in enumerate(rows):
                if row in self._live:
                    out[row] = SpeechChunk(samples=samples[i], codes=all_codes[i])
        for row in ended:
            if row in self._live:
                self._live.discard(row)
                self.decoding.drop(row)
                out[row] = None
        return out
