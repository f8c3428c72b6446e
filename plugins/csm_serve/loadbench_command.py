"""The ``csmctl bench serve`` command (registered by :mod:`csm_serve.plugin`); the work is in
:mod:`csm_serve.loadbench`. Nothing heavy is imported until it runs.

No ``from __future__ import annotations`` here: typer evaluates the command's annotations.
"""

from typing import Annotated, Optional

import typer


def register_bench_serve(cli) -> None:
    from csm_core.cli import (
        Backend, ConfigFile, Device, MaxNewTokens, ModelFlavor, ModelPath, Optimizers, Preset, Seed, Speaker,
        Temperature, TopK, TopP, Verbose, _logging,
    )

    from csm_core.plugin_commands import command_group

    @command_group(cli, "bench").command("serve")
    def bench_serve(
        clients: Annotated[str, typer.Option("--clients", help="Comma-separated concurrency levels.")] = "1,2,4,8",
        requests_per_client: Annotated[int, typer.Option("--requests-per-client", "-n",
                                                         help="Requests each client sends, one after another.")] = 2,
        text: Annotated[Optional[str], typer.Option("--text", help="The sentence every request speaks.")] = None,
        out: Annotated[str, typer.Option("--out", "-o", help="Directory for bench-serve.json, .md and .png.")]
        = "bench-results",
        url: Annotated[Optional[str], typer.Option("--url", help="Base URL of a running server to load instead of "
                                                   "starting one (its key: --api-key or CSM_SERVE_API_KEY).")] = None,
        api_key: Annotated[Optional[str], typer.Option("--api-key", help="Bearer key of the --url server "
                                                       "(default: CSM_SERVE_API_KEY).")] = None,
        server_pid: Annotated[Optional[int], typer.Option("--server-pid", help="With --url: the server's process "
                                                          "id, to report its RSS.")] = None,
        threads: Annotated[Optional[int], typer.Option("--threads", help="torch threads of the started server's "
                                                       "worker ([options.serve] threads).")] = None,
        ray: Annotated[bool, typer.Option("--ray", help="Start `csmctl serve --ray` (Ray Serve, a local Ray) "
                                          "instead of the single server.")] = False,
        replicas: Annotated[Optional[int], typer.Option("--replicas", help="With --ray: replicas of the "
                                                        "started server.")] = None,
        max_rows: Annotated[Optional[str], typer.Option("--max-rows", help="Comma-separated [options.serve] "
                                                        "max_rows settings (e.g. 1,4: one request at a time and "
                                                        "continuous batching of 4): one started server each, one "
                                                        "after another, reported side by side.")] = None,
        model: Annotated[str, typer.Option("--model", help="The model name the requests send.")] = "tts-1",
        voice: Annotated[str, typer.Option("--voice", help="The voice the requests ask for.")] = "alloy",
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds a request may take (each socket read "
                                               "and connect).")] = 600.0,
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
        """Load-test the speech server with concurrent streaming clients; write bench-serve.json, .md, .png.

        Starts `csmctl serve` (--ray: `csmctl serve --ray [--replicas N]`) with the model options given (or
        loads --url), then for each --clients level runs that many clients at once, each sending
        --requests-per-client streaming pcm requests. --max-rows 1,4 starts one server per setting and
        compares them side by side (batching's gain over one request at a time). Exits 1
        (after writing the reports) when a request failed other than by a 429."""
        _logging(verbose)
        from csm_core.errors import CsmError
        from csm_serve.loadbench import ServerFailed, run_bench_serve

        flags = {"model_path": model_path, "model_flavor": model_flavor, "preset": preset,
                 "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                 "speaker": speaker, "seed": seed, "device": device, "backend": backend, "optimizer": optimizer,
                 "config": config}
        try:
            paths, document = run_bench_serve(
                clients=clients, requests_per_client=requests_per_client, text=text, out=out, url=url,
                api_key=api_key, server_pid=server_pid, threads=threads, model=model, voice=voice, timeout=timeout,
                flags=flags, ray=ray, replicas=replicas, max_rows=max_rows)
        except ServerFailed as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        except CsmError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho(f"interrupted: nothing written ({out} left as it was)", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None
        for path in paths:
            typer.echo(f"wrote {path}")
        failed = sum(level["errors"] for run in document["runs"] for level in run["levels"])
        if failed:  # 429s are a result of the load; other failures are not
            typer.secho(f"error: {failed} request(s) failed; see {paths[1]}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
