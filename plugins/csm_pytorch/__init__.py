"""In-tree plugin: the PyTorch backend, the CSM text-to-speech stage and the Mimi tokenizer stage."""
