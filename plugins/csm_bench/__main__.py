"""``python -m csm_bench``: the ``csmctl bench`` command on its own."""

import typer

from csm_bench.command import bench

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(bench)

if __name__ == "__main__":
    app()
