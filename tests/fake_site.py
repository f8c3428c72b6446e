"""A throwaway site folder of installed distributions, for the ``csmctl doctor`` tests: a
``*.dist-info`` folder with a METADATA file is all importlib.metadata reads."""

from __future__ import annotations

from pathlib import Path


def fake_site(root: Path, **distributions: str) -> Path:
    """A site folder holding ``name==version`` distributions (metadata only, no code); ``_`` in a
    keyword stands for ``-`` in the distribution name (``onnxruntime_gpu="1.20.1"``)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, version in distributions.items():
        name = name.replace("_", "-")
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root
