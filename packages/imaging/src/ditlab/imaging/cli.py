"""`ditlab imaging`: the command-line entry of ditlab.imaging."""

import typer

from ditlab.imaging import __version__

app = typer.Typer(
    name="imaging",
    help="ditlab.imaging: real-world super-resolution and restoration.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def info() -> None:
    """Print the package version and which of its features are available."""
    typer.echo(f"ditlab-imaging {__version__}: package installed; its tasks land with their own issues.")
