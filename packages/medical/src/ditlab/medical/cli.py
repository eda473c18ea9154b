"""`ditlab medical`: the command-line entry of ditlab.medical."""

import typer

from ditlab.medical import __version__

app = typer.Typer(
    name="medical",
    help="ditlab.medical: 3D CT and MRI reconstruction with a DiT prior.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def info() -> None:
    """Print the package version and which of its features are available."""
    typer.echo(f"ditlab-medical {__version__}: package installed; its tasks land with their own issues.")
