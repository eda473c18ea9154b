"""`ditlab vision3d`: the command-line entry of ditlab.vision3d."""

import typer

from ditlab.vision3d import __version__

app = typer.Typer(
    name="vision3d",
    help="ditlab.vision3d: point-cloud shape and LiDAR scene generation.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def info() -> None:
    """Print the package version and which of its features are available."""
    typer.echo(f"ditlab-vision3d {__version__}: package installed; its tasks land with their own issues.")
