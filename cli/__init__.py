"""The ``sd3d`` command line: thin Typer commands over the library (no numerics here)."""
