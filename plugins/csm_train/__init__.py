"""csm-multi's fine-tuning: ``csmctl train`` (data preparation, the CSM loss with compute amortization,
the trainer with LoRA, checkpoints, resume and DDP) and ``csmctl eval`` (a prompt set spoken and
measured: WER/CER, prosody, emotion coherence; see docs/eval.md)."""
