"""Hooks of the in-tree PyTorch plugin."""
