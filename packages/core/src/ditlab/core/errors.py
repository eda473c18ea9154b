"""The input-error family. Every vertical's bad-input errors subclass `InputError`: the CLI prints them as
one line and exits 2, the apps show them as a message. Anything else raised from our code is a bug: the CLI
reports it as an internal error (exit 1, traceback with `--debug`).

`InputError` subclasses `ValueError`, so `except ValueError` around a ditlab call keeps working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: a value, file or option that is wrong, with what was expected."""

    def __str__(self) -> str:  # KeyError-style quoting (the whole message in one pair of quotes) never reaches the user
        text = super().__str__()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text


class FileFormatError(InputError):
    """A file that cannot be read as what it claims to be (wrong format, truncated, bad header)."""


class UsageError(InputError):
    """Options that do not go together or are out of range."""


def is_input_error(exc: BaseException) -> bool:
    """True for errors that come from the user's input rather than from a bug: our `InputError`s and files that
    do not exist or cannot be opened."""
    return isinstance(exc, InputError | FileNotFoundError | IsADirectoryError | NotADirectoryError
                      | PermissionError)
