"""The official defaults that every entry point shares: the library's settings, the CLI's options and
the web app's controls all read them here, so a default is changed in one place.

Plain numbers and no imports: the CLI reads them at start-up to show its defaults without loading
the library.
"""

SEED = 6033  # the official SyncDreamer generate.py's seed (also sd3d.DEFAULT_SEED)
INPUT_ELEVATION_DEG = 30.0  # the middle of SyncDreamer's training range
SYNCDREAMER_STEPS = 50
SYNCDREAMER_CFG = 2.0
DDIM_ETA = 1.0  # the official samplers are fully stochastic DDIM
CROP_SIZE = 200  # object size after recentring, pixels of 256
ZERO123_STEPS = 50
ZERO123_CFG = 3.0
PREVIEW_FRAMES = 72  # 3 s at 24 fps
PREVIEW_FPS = 24
