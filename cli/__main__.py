"""``python -m cli`` runs the ``sd3d`` command (used where the console script is not on PATH)."""

from cli.app import entry

entry()
