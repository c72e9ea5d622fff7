"""The official defaults (and the ranges around them) that every entry point shares: the library's
settings, the CLI's options and the web app's controls all read them here, so a default is changed in
one place.

Plain numbers and no imports: the CLI reads them at start-up to show its defaults without loading
the library.
"""

SEED = 6033  # the official SyncDreamer generate.py's seed (also sd3d.DEFAULT_SEED)
SEED_RANGE = (0, 2**63 - 1)  # any seed: a non-negative int64
INPUT_ELEVATION_DEG = 30.0  # the middle of SyncDreamer's training range
SYNCDREAMER_STEPS = 50
SYNCDREAMER_CFG = 2.0
DDIM_ETA = 1.0  # the official samplers are fully stochastic DDIM
CROP_SIZE = 200  # object size after recentring, pixels of 256
ZERO123_STEPS = 50
ZERO123_CFG = 3.0
PREVIEW_FRAMES = 72  # 3 s at 24 fps
PREVIEW_FPS = 24

# Elevations of the input camera, in degrees (also sd3d.core.cameras'). Any camera: -90..90.
# SyncDreamer was trained on inputs between -10 and 40 (estimates are clipped to that before
# generating); the estimator searches a wider range so that an input outside the trained one is seen
# as such.
ELEVATION_LIMITS_DEG = (-90.0, 90.0)
TRAINED_ELEVATION_RANGE_DEG = (-10.0, 40.0)
ELEVATION_SEARCH_RANGE_DEG = (-20.0, 60.0)
