"""sd3d: one photo -> 16 multiview-consistent views (SyncDreamer) -> textured mesh.

Importing the package must stay cheap and must never fail because an optional extra (rembg,
tinycudann, nerfacc, ...) is missing: heavy modules are imported where they are used.
"""

__version__ = "0.1.0"

DEFAULT_SEED = 6033  # = sd3d.core.defaults.SEED (kept here for `from sd3d import DEFAULT_SEED`)
"""The seed every command uses unless ``--seed`` is given: the official SyncDreamer ``generate.py``
default, so ``sd3d run`` and the stage commands it chains agree by default."""
