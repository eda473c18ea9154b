"""`ditlab audio`: the command-line entry of ditlab.audio."""

import typer

from ditlab.audio import __version__

app = typer.Typer(
    name="audio",
    help="ditlab.audio: non-autoregressive DiT text-to-speech and joint audio-video.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def info() -> None:
    """Print the package version and which of its features are available."""
    typer.echo(f"ditlab-audio {__version__}: package installed; its tasks land with their own issues.")
