"""csm_model: the shared model layer every backend builds on.

Sesame's CSM in plain PyTorch (:mod:`csm_model.model`), the Mimi codec over transformers' ``MimiModel``
(:mod:`csm_model.mimi`, its streaming decoder in :mod:`csm_model.mimi_streaming`), checkpoint layouts and
their conversion (:mod:`csm_model.checkpoints`, :mod:`csm_model.convert`), the random-weight presets
(:mod:`csm_model.presets`), where weights come from (:mod:`csm_model.sources`), and the backend-neutral
``csm`` TTS and ``mimi`` tokenizer stages. torch serves here as the holder of weights; no runtime is named:
backends turn these modules into engines.
"""
