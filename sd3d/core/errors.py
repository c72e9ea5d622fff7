"""Errors a user can cause.

Everything a user can get wrong (bad file, missing weights, impossible option) raises a subclass of
:class:`UserError` with a one-line message. The CLI maps these to exit code 2 and prints only that
line (``--debug`` shows the traceback); anything else is a bug and keeps its traceback. Something
odd that does not stop the work is a warning (:class:`WeightsWarning`), shown as one ``warning:`` line.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is a single line meant to be shown as is."""

    exit_code = 2


class InputImageError(UserError):
    """An input image cannot be read, is too large, or holds no usable foreground."""


class ViewsFolderError(UserError):
    """A views folder is missing files, has extra/mis-sized views or unreadable images."""


class WeightsError(UserError):
    """A checkpoint is missing, corrupt, of the wrong shape, or cannot be downloaded."""


class MissingDependencyError(UserError):
    """An optional extra (rembg, carvekit, tinycudann, ...) is needed but not installed."""


class OutputPathError(UserError):
    """The output location cannot be written."""


class WeightsWarning(UserWarning):
    """A checkpoint loads, but holds values that inference ignores and that differ from the official ones."""
