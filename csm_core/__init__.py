"""csm-multi core: hookspecs, plugin manager, config, pipeline and the ``csmctl`` CLI.

Plugins import :data:`hookimpl` from here. Nothing heavy is imported by this package.
"""

from csm_core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
