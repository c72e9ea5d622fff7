"""sd3d: one photo -> 16 multiview-consistent views (SyncDreamer) -> textured mesh.

Importing the package must stay cheap and must never fail because an optional extra (rembg,
tinycudann, nerfacc, ...) is missing: heavy modules are imported where they are used.

``DEFAULT_SEED`` is the seed every command uses unless ``--seed`` is given: the official SyncDreamer
``generate.py`` default (kept with the other official defaults in :mod:`sd3d.core.defaults`), so
``sd3d run`` and the stage commands it chains agree by default.
"""

from sd3d.core.defaults import SEED as DEFAULT_SEED

__version__ = "0.1.0"
__all__ = ["DEFAULT_SEED", "__version__"]
