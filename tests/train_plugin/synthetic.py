"""Training data without audio: utterances with random Mimi codes, for tests of the trainer's bookkeeping
(resume, LoRA) that do not need speech. Codes follow a simple pattern (each codebook cycles through a
few values), so a model can learn them and losses fall."""

from __future__ import annotations

import torch

from csm_model.text_tokenizer import ByteTextTokenizer
from csm_train.dataset import DataReport, TrainingData
from csm_train.samples import Utterance, build_samples, split_samples

TEXTS = ["Hello there.", "How are you?", "Fine, thanks.", "See you soon.", "Good night.", "Bye now."]


def synthetic_data(num_codebooks: int, max_positions: int, conversations: int = 3, turns: int = 2, seed: int = 0) -> TrainingData:
    tokenizer = ByteTextTokenizer()
    gen = torch.Generator().manual_seed(seed)
    utterances = []
    for c in range(conversations):
        for t in range(turns):
            text = TEXTS[(c * turns + t) % len(TEXTS)]
            frames = int(torch.randint(8, 16, (1,), generator=gen))
            start = torch.randint(0, 50, (num_codebooks, 1), generator=gen)
            codes = (start + torch.arange(frames) % 4) % 2048
            ids = torch.tensor(tokenizer.encode(f"[{t % 2}]{text}"))
            utterances.append(Utterance(f"u{c}-{t}", f"synthetic {c}/{t}", f"c{c}", ids, codes))
    samples = build_samples(utterances, max_positions)
    train, evaluation = split_samples(samples, utterances, 0.34, seed)
    return TrainingData(utterances, train, evaluation, DataReport("synthetic", len(utterances), len(utterances)))
