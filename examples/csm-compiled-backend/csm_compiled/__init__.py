"""An example third-party csm-multi backend: CSM's backbone and depth decoder under ``torch.compile``.

:mod:`csm_compiled.plugin` registers the ``compiled`` backend (and imports nothing heavy);
:mod:`csm_compiled.engines` implements the engine interfaces of :mod:`csm_core.components` on top of
the shared model layer (:class:`csm_model.model.Csm`).
"""
