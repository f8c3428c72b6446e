"""csm-multi's fine-tuning: ``csmctl train`` (data preparation, the CSM loss with compute amortization,
the trainer with LoRA, checkpoints, resume and DDP). ``csmctl eval`` is to come."""
