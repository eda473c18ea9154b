"""`ditlab molecules`: the command-line entry of ditlab.molecules."""

import typer

from ditlab.molecules import __version__

app = typer.Typer(
    name="molecules",
    help="ditlab.molecules: all-atom latent DiT molecule generation.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def info() -> None:
    """Print the package version and which of its features are available."""
    typer.echo(f"ditlab-molecules {__version__}: package installed; its tasks land with their own issues.")
