"""Hooks of the in-tree serve plugin (nothing heavy is imported here: the command imports the server).

No ``from __future__ import annotations`` here: typer evaluates the command's annotations, which name
the option types imported inside the hook.

``csmctl serve`` takes the options ``csmctl say`` takes (model, backend, optimizers, device, config,
generation defaults) plus ``--host`` and ``--port``; the config file and ``CSM_*`` environment apply as
for every command, and ``[options.serve]`` (see :mod:`csm_serve.options`) holds the server's own
settings and limits. ``--ray [--replicas N]`` serves the same app on Ray Serve instead (``[options.ray]``,
:mod:`csm_serve.ray_options`, docs/scale-out.md); Ray is imported only then.
"""

import os
from typing import Annotated, Optional

import typer

from csm_core import hookimpl


@hookimpl
def register_commands(cli):
    from csm_core.cli import (
        Backend, ConfigFile, Device, MaxNewTokens, ModelFlavor, ModelPath, Optimizers, Preset, Seed, Speaker,
        Temperature, TopK, TopP, Verbose, _fail, _logging, _settings,
    )

    Host = Annotated[Optional[str], typer.Option("--host", help="Address to bind (default 127.0.0.1).")]
    Port = Annotated[Optional[int], typer.Option("--port", help="TCP port (default 8000).")]
    Ray = Annotated[bool, typer.Option("--ray", help="Serve on Ray Serve: replicas, routing, autoscaling "
                                       "(options.ray in the config, docs/scale-out.md; needs the ray extra).")]
    Replicas = Annotated[Optional[int], typer.Option("--replicas", help="With --ray: this many replicas "
                                                     "(instead of the configured count or autoscaling).")]

    @cli.command()
    def serve(
        host: Host = None,
        port: Port = None,
        ray: Ray = False,
        replicas: Replicas = None,
        model_path: ModelPath = None,
        model_flavor: ModelFlavor = None,
        preset: Preset = None,
        max_new_tokens: MaxNewTokens = None,
        temperature: Temperature = None,
        top_k: TopK = None,
        top_p: TopP = None,
        speaker: Speaker = None,
        seed: Seed = None,
        device: Device = None,
        backend: Backend = None,
        optimizer: Optimizers = None,
        config: ConfigFile = None,
        verbose: Verbose = False,
    ) -> None:
        """Serve OpenAI-compatible speech over HTTP and WebSocket (see docs/serve.md)."""
        _logging(verbose)
        from csm_core.errors import CsmError

        try:
            from csm_serve.options import serve_options, settings_environ

            flags = {k: v for k, v in locals().items()
                     if k not in ("host", "port", "ray", "replicas", "config", "verbose")}
            # as for `say`, with CSM_SERVE_API_KEY (this plugin's variable, no setting) left out
            settings = _settings(config, environ=settings_environ(), **flags)
            options = serve_options(settings, host=host, port=port)
            if replicas is not None and not ray:
                _fail("--replicas is for --ray (the single server runs one pipeline)")
            if ray:
                from csm_serve.ray_options import ray_options

                placement = ray_options(settings, replicas=replicas)
                if verbose:  # every request's log line, not Ray's deduplicated summary of them
                    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
                try:
                    from csm_serve.ray_app import serve_on_ray
                except ImportError as exc:
                    _fail(f"--ray needs Ray Serve ({exc}): pip install 'csm-multi[ray]'")
                code = serve_on_ray(settings, options, placement, log_level="info" if verbose else "warning")
            else:
                from csm_serve.server import serve as run_server

                typer.secho(f"csmctl serve: http://{options.host}:{options.port} (docs at /docs); loading the models",
                            err=True)
                code = run_server(settings, options, log_level="info" if verbose else "warning")
        except CsmError as exc:
            _fail(str(exc))
        if code == 1:
            _fail("the models failed to load (see the log above)", code=1)
        if code == 130:
            typer.secho("interrupted: server stopped", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code)

    from csm_serve.loadbench_command import register_bench_serve

    register_bench_serve(cli)
