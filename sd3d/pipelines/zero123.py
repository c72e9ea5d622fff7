"""Zero123 / Zero123-XL as a Python API: one novel view at a relative pose, or the 16 SyncDreamer views.

* :func:`prepare_zero123_input` -- the official demo's preprocessing (reference-zero123.md §2), which
  differs from SyncDreamer's recentering: foreground = mask ``> 127`` (hard), white fill, inclusive
  bounding-box crop, LANCZOS thumbnail to 200 px that never enlarges, white padding to 256; or, with
  ``preprocess=False``, a LANCZOS resize to 256 and an over-white composite.
* :func:`novel_view` -- the demo's ``sample_model``: CLIP + pose -> ``cc_projection`` context, VAE
  posterior mean as concat latent, classifier-free guidance (scale 3) with the zero null condition,
  DDIM with eta 1, decode, truncating uint8 quantisation.
* :func:`generate_views_zero123` -- the 16 target cameras of SyncDreamer without synchronisation,
  either each view sampled independently (the SyncDreamer paper's baseline) or with 3DiM stochastic
  conditioning (:mod:`sd3d.sampling.stochastic_conditioning`); :func:`generate_view_sets_zero123` makes
  several such sets with consecutive seeds.

The input view is placed at azimuth 0 and the given elevation at radius 1.5 (SyncDreamer's camera
distance, inside Zero123's training range); every relative pose comes from absolute camera centres.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from sd3d.background import check_backend_name, remove_background
from sd3d.core import cameras as cam
from sd3d.core import defaults
from sd3d.core.device import make_generator, resolve_device, resolve_dtype
from sd3d.core.errors import InputImageError, UserError
from sd3d.core.io import ViewSet, check_max_pixels, read_image
from sd3d.core.zero123_pose import orbit_center, pose_from_deltas, relative_pose
from sd3d.models.zero123 import images_to_uint8
from sd3d.models.zero123_checkpoint import load_zero123
from sd3d.preprocess import PreparedInput
from sd3d.sampling.ddim import ZERO123, ddim_sample, ddim_tables, nearest_usable_steps, uniform_steps_usable
from sd3d.sampling.schedule import zero123_schedule
from sd3d.sampling.stochastic_conditioning import (
    INPUT_VIEW,
    ConditioningView,
    sample_stochastic_conditioning,
)
from sd3d.weights import require

if TYPE_CHECKING:
    import torch

    from sd3d.core.io import ViewSet
    from sd3d.core.progress import Progress
    from sd3d.models.zero123 import Zero123
    from sd3d.preprocess import PreparedInput

MODEL_SIZE = 256
DEMO_MAX_SIDE = 1536
DEMO_OBJECT_SIZE = 200
DEFAULT_STEPS = defaults.ZERO123_STEPS
DEFAULT_CFG = defaults.ZERO123_CFG
DEFAULT_SEED = defaults.SEED
INPUT_RADIUS = 1.5
SAMPLERS = ("independent", "stochastic-conditioning")
WEIGHTS_NAME = "zero123-xl"


# --------------------------------------------------------------------------------------------------
# preprocessing (the official demo's)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Zero123Input:
    """The conditioning image as Zero123 sees it.

    ``image``: (256, 256, 3) float32 in [0, 1] on white (the model input is ``image * 2 - 1``, CHW).
    ``preprocessed``: whether the demo's crop-and-pad ran (else a plain resize + composite).
    ``crop_box``: (x, y, w, h) of the foreground box in the source (after the demo's 1536 px
    thumbnail), or ``None``. ``background``: the foreground backend used, or ``None``;
    ``background_note``: how it was chosen and what it used (:class:`sd3d.background.Foreground`).
    """

    image: np.ndarray
    preprocessed: bool
    source: Path | None = None
    crop_box: tuple[int, int, int, int] | None = None
    background: str | None = None
    background_note: str = ""

    def __post_init__(self) -> None:
        if self.image.shape != (MODEL_SIZE, MODEL_SIZE, 3) or self.image.dtype != np.float32:
            raise ValueError(f"image must be (256,256,3) float32, got {self.image.shape} {self.image.dtype}")
        self.image.setflags(write=False)

    def uint8(self) -> np.ndarray:
        return np.clip(np.rint(self.image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)

    def opaque_rgba(self) -> np.ndarray:
        """(256, 256, 4) uint8: the image with an opaque alpha, the ``input.png`` of a views folder."""
        rgb = np.rint(self.image * 255).astype(np.uint8)
        return np.concatenate([rgb, np.full((MODEL_SIZE, MODEL_SIZE, 1), 255, np.uint8)], axis=-1)


def demo_crop_and_pad(
    rgb: np.ndarray, foreground: np.ndarray
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The demo's ``load_and_preprocess`` after segmentation: uint8 RGB (H,W,3) + boolean mask -> (256,256,3).

    Background pixels become white; the inclusive bounding box of the mask is cropped, shrunk with a
    LANCZOS ``thumbnail`` to fit 200x200 (never enlarged) and pasted at ``((256-w)//2, (256-h)//2)``
    on white. Returns the image and the box (x, y, w, h).
    """
    if not foreground.any():
        raise InputImageError("no foreground: the object mask is empty after the > 127 threshold")
    rgb = np.array(rgb, dtype=np.uint8, copy=True)
    rgb[~foreground] = 255
    ys, xs = np.nonzero(foreground)
    x, y = int(xs.min()), int(ys.min())
    w, h = int(xs.max()) - x + 1, int(ys.max()) - y + 1
    crop = Image.fromarray(rgb[y : y + h, x : x + w])
    crop.thumbnail((DEMO_OBJECT_SIZE, DEMO_OBJECT_SIZE), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (MODEL_SIZE, MODEL_SIZE), (255, 255, 255))
    canvas.paste(crop, ((MODEL_SIZE - crop.width) // 2, (MODEL_SIZE - crop.height) // 2))
    return np.asarray(canvas, dtype=np.uint8), (x, y, w, h)


def demo_resize_composite(rgba: Image.Image) -> np.ndarray:
    """The demo with preprocessing off: LANCZOS resize to 256, then ``a * rgba + (1 - a) * 1`` in float32."""
    rgba = rgba if rgba.mode == "RGBA" else rgba.convert("RGBA")
    x = np.asarray(rgba.resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    alpha = x[:, :, 3:4]
    x = alpha * x + (1.0 - alpha) * np.ones_like(x)
    return np.ascontiguousarray(x[:, :, :3], dtype=np.float32)


def prepare_zero123_input(
    source: str | os.PathLike | Image.Image,
    preprocess: bool = True,
    background: str = "auto",
    max_pixels: int | None = None,
    *,
    weights_dir: str | os.PathLike | None = None,
) -> Zero123Input:
    """Read ``source`` and apply the official demo's preprocessing (see the module docstring).

    ``background`` picks the foreground backend (:mod:`sd3d.background`; the demo used carvekit,
    ``alpha`` reproduces it for cut-out images). Every user-caused problem is a one-line UserError.
    """

    method = check_backend_name(background)
    image = read_image(source, max_pixels=check_max_pixels(max_pixels))
    image.thumbnail((DEMO_MAX_SIDE, DEMO_MAX_SIDE), Image.Resampling.LANCZOS)
    path = None if isinstance(source, Image.Image) else Path(source)
    if not preprocess:
        return Zero123Input(image=demo_resize_composite(image), preprocessed=False, source=path)
    fg = remove_background(image, method, weights_dir=weights_dir)
    foreground = np.asarray(fg.rgba.getchannel("A")) > 127
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    u8, box = demo_crop_and_pad(rgb, foreground)
    return Zero123Input(
        image=(u8 / 255.0).astype(np.float32),
        preprocessed=True,
        source=path,
        crop_box=box,
        background=fg.backend,
        background_note=fg.note,
    )


def model_input(
    image: Zero123Input | PreparedInput | str | os.PathLike | Image.Image, **prepare: Any
) -> torch.Tensor:
    """(1,3,256,256) float32 in [-1,1] from a prepared input, or from a file/PIL image (demo preprocessing).

    A :class:`sd3d.preprocess.PreparedInput` (SyncDreamer's recentering) is used as is, so Zero123 and
    SyncDreamer can be compared on the very same input.
    """

    if isinstance(image, PreparedInput):
        return torch.from_numpy(np.array(image.model_rgb)).permute(2, 0, 1)[None].contiguous()
    if not isinstance(image, Zero123Input):
        image = prepare_zero123_input(image, **prepare)
    x = torch.from_numpy(np.array(image.image)).permute(2, 0, 1)[None].contiguous()
    return x * 2.0 - 1.0


# --------------------------------------------------------------------------------------------------
# model loading and argument checks
# --------------------------------------------------------------------------------------------------
def _resolve(device: str | torch.device, dtype: str | torch.dtype) -> tuple[torch.device, torch.dtype]:

    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(str(dtype), dev)
    return dev, dt


def load_model(
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
) -> Zero123:
    """Zero123-XL from ``weights`` (a checkpoint file) or the registered file in the weights folder.

    Nothing is downloaded: a missing file is a one-line WeightsError saying how to get it.
    """

    path = Path(weights) if weights is not None else require(WEIGHTS_NAME, weights_dir)
    dev, dt = _resolve(device, dtype)
    model = load_zero123(path, device=dev, dtype=dt)
    model.weights_path = str(path)
    return model


def check_sampling_args(steps: int, cfg: float, samples: int = 1, eta: float = 1.0) -> None:
    """One-line UserErrors for impossible sampling settings (before any weights are read)."""

    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= int(steps) <= 1000:
        raise UserError(f"--steps must be an integer between 1 and 1000, got {steps}")
    if not uniform_steps_usable(int(steps)):
        hint = " or ".join(str(s) for s in nearest_usable_steps(int(steps), 1000))
        raise UserError(
            f"--steps {steps} is not possible with the official DDIM timestep rule (it would reach t = 1000); "
            f"use {hint}"
        )
    if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or not 1 <= int(samples) <= 64:
        raise UserError(f"--samples must be an integer between 1 and 64, got {samples}")
    if not math.isfinite(float(cfg)) or float(cfg) < 0:
        raise UserError(f"--cfg must be a finite number >= 0, got {cfg}")
    if not math.isfinite(float(eta)) or not 0.0 <= float(eta) <= 1.0:
        raise UserError(f"eta must be between 0 and 1, got {eta}")


CONDITION_ON = ("image", "latent")


@dataclass(frozen=True)
class Zero123Settings:
    """Every sampling knob of :func:`novel_view` and :func:`generate_views_zero123`.

    ``samples``: views per :func:`novel_view` call (``generate_views_zero123`` makes one set per
    call; ``sd3d generate --model zero123`` makes ``samples`` sets with seeds ``seed``, ``seed + 1``,
    ...). ``sampler``, ``batch_view_num`` (views per UNet call, which changes nothing but float
    round-off) and ``condition_on`` are the 16-view generation's (see :func:`generate_views_zero123`).
    """

    steps: int = DEFAULT_STEPS
    cfg: float = DEFAULT_CFG
    eta: float = 1.0
    seed: int = DEFAULT_SEED
    samples: int = 1
    sampler: str = "independent"
    batch_view_num: int = 8
    condition_on: str = "image"

    def check(self) -> Zero123Settings:
        """Raise a one-line :class:`UserError` for impossible values (before any weights are read)."""
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if self.condition_on not in CONDITION_ON:
            raise UserError(f"condition_on must be 'image' or 'latent', got {self.condition_on!r}")
        check_sampling_args(self.steps, self.cfg, self.samples, self.eta)
        if self.batch_view_num < 1:
            raise UserError(f"batch_view_num must be >= 1, got {self.batch_view_num}")
        return self


def _model(model: Zero123 | None, weights, weights_dir, device, dtype) -> Zero123:
    if model is not None:
        return model
    return load_model(weights, weights_dir, device, dtype)


# --------------------------------------------------------------------------------------------------
# one view at a relative pose
# --------------------------------------------------------------------------------------------------
def novel_view(
    image_or_prepared: Zero123Input | PreparedInput | str | os.PathLike | Image.Image,
    d_elevation: float,
    d_azimuth: float,
    d_radius: float = 0.0,
    settings: Zero123Settings | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    progress: Progress | None = None,
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    model: Zero123 | None = None,
    background: str = "auto",
    preprocess: bool = True,
) -> list[np.ndarray]:
    """``settings.samples`` views of the object with the camera moved by the given deltas: uint8 (256,256,3) each.

    ``d_elevation`` (degrees, + = camera up), ``d_azimuth`` (degrees, + = camera moves to its right,
    counter-clockwise seen from above), ``d_radius`` (world units of the unit-cube-normalised object,
    + = further away; Zero123 was trained with |dr| <= 0.7). The samples differ only through noise;
    noise comes from ``settings.seed`` (x_T for all samples, then one draw per step). A file or PIL
    image goes through the demo preprocessing (``background``, ``preprocess``); ``model`` reuses a
    loaded model (``device``/``dtype`` only load one: names are resolved there, once).
    """

    settings = (settings or Zero123Settings()).check()
    steps, cfg, eta, seed, samples = (
        settings.steps,
        settings.cfg,
        settings.eta,
        settings.seed,
        settings.samples,
    )
    x_in = model_input(
        image_or_prepared, background=background, preprocess=preprocess, weights_dir=weights_dir
    )
    net = _model(model, weights, weights_dir, device, dtype)
    dev = net.device
    pose = torch.from_numpy(pose_from_deltas(d_elevation, d_azimuth, d_radius)).reshape(1, 1, -1)
    with torch.inference_mode():
        enc = net.encode_view(x_in.to(dev))
        context = net.project(enc.clip_embed, pose.to(dev)).expand(samples, -1, -1)
        concat = enc.concat_latent.expand(samples, -1, -1, -1)
        gen = make_generator(seed, dev)
        shape = (samples, net.config.latent_channels, net.config.latent_size, net.config.latent_size)
        x_T = torch.randn(shape, generator=gen, device=dev, dtype=torch.float32)
        tables = ddim_tables(zero123_schedule(), steps, eta, variant=ZERO123)

        def eps_fn(x: torch.Tensor, t: int, index: int) -> torch.Tensor:
            return net.guided_eps(x, t, context, concat, cfg)

        latents = ddim_sample(eps_fn, x_T, tables, gen, progress, description="zero123", variant=ZERO123)
        images = images_to_uint8(net.decode(latents))
    return [np.ascontiguousarray(im) for im in images]


# --------------------------------------------------------------------------------------------------
# the 16 SyncDreamer views
# --------------------------------------------------------------------------------------------------
def _choice_generator(seed: int) -> torch.Generator:
    """The conditioning-view draws get their own CPU stream, decorrelated from the noise stream."""

    gen = torch.Generator(device="cpu")
    gen.manual_seed((int(seed) * 0x9E3779B97F4A7C15 + 0x3D1) % (1 << 64))
    return gen


def generate_views_zero123(
    prepared: Zero123Input | PreparedInput | str | os.PathLike | Image.Image,
    elevation_deg: float,
    settings: Zero123Settings | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    progress: Progress | None = None,
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    model: Zero123 | None = None,
    order: list[int] | None = None,
) -> ViewSet:
    """The 16 SyncDreamer target views (elevation 30, azimuth 22.5 n, radius 1.5) from Zero123, as a ViewSet.

    ``elevation_deg``: the input view's elevation (the input sits at azimuth 0, radius 1.5).
    ``settings.sampler``: ``independent`` (each view its own chain; ``settings.batch_view_num`` views
    per UNet call, which
    changes nothing but float round-off: the noise is drawn for all 16 views at once) or ``stochastic-conditioning`` (3DiM: views one after another in
    ``order``, default by increasing angle from the input; at every step the conditioning view is
    drawn from the input and the views finished so far). ``settings.condition_on``: how a finished view
    conditions later ones -- ``image`` (decode, quantise to uint8 as saved, re-encode: identical to
    conditioning on the saved PNG) or ``latent`` (its final latent / 0.18215 as concat latent, CLIP of
    the decoded image; cheaper, not an image round trip).

    Images are the demo's truncating uint8 quantisation, stored as float32 ``u8 / 255`` (so writing
    them back with rounding is lossless); provenance records the settings and, for stochastic
    conditioning, the generation order and every draw.
    """

    settings = (settings or Zero123Settings()).check()
    lo, hi = cam.ELEVATION_LIMITS_DEG
    if not np.isfinite(elevation_deg) or not lo <= float(elevation_deg) <= hi:
        raise UserError(f"the input elevation must be between {lo:g} and {hi:g} degrees, got {elevation_deg}")
    x_in = model_input(prepared, weights_dir=weights_dir)
    net = _model(model, weights, weights_dir, device, dtype)
    cameras = cam.target_cameras(size=MODEL_SIZE)
    tables = ddim_tables(zero123_schedule(), settings.steps, settings.eta, variant=ZERO123)
    gen = make_generator(settings.seed, net.device)
    provenance = _provenance(net, settings, tables)
    targets = _Targets(
        input_center=orbit_center(float(elevation_deg), 0.0, INPUT_RADIUS),
        centers=[c.center for c in cameras],
        latent_shape=(net.config.latent_channels, net.config.latent_size, net.config.latent_size),
    )
    with torch.inference_mode():
        enc = net.encode_view(x_in.to(net.device))
        if settings.sampler == "independent":
            views_u8 = _independent_views(net, enc, targets, tables, settings, gen, progress)
        else:
            views_u8, record = _stochastic_views(net, enc, targets, tables, settings, gen, order, progress)
            provenance.update(record)
    return ViewSet(
        images=(views_u8.astype(np.float32) / 255.0).astype(np.float32),
        cameras=cameras,
        alphas=None,
        input_elevation_deg=float(elevation_deg),
        seed=int(settings.seed),
        provenance=provenance,
    )


@dataclass(frozen=True)
class _Targets:
    """Where the input and the 16 targets sit, and the shape of one latent."""

    input_center: np.ndarray
    centers: list[np.ndarray]
    latent_shape: tuple[int, int, int]


def _provenance(net: Zero123, settings: Zero123Settings, tables) -> dict[str, Any]:
    return {
        "model": "zero123",
        "weights": getattr(net, "weights_path", None),
        "unet_weights": net.unet_weights,
        "sampler": settings.sampler,
        "steps": int(settings.steps),
        "ddim_steps": int(tables.steps),
        "cfg": float(settings.cfg),
        "eta": float(settings.eta),
        "seed": int(settings.seed),
        "input_radius": INPUT_RADIUS,
        "views_per_call": int(settings.batch_view_num),
    }


def _independent_views(
    net: Zero123, enc, targets: _Targets, tables, settings: Zero123Settings, gen, progress
) -> np.ndarray:
    """Each view its own DDIM chain, ``batch_view_num`` views per UNet call (the noise is drawn for
    all 16 at once, so the chunking changes nothing but float round-off)."""
    dev, n, batch_size, cfg = net.device, len(targets.centers), settings.batch_view_num, settings.cfg
    poses = np.stack([relative_pose(targets.input_center, c) for c in targets.centers])
    contexts = net.project(
        enc.clip_embed.expand(n, -1, -1), torch.from_numpy(poses).to(dev).reshape(n, 1, -1)
    )
    concat = enc.concat_latent.expand(n, -1, -1, -1)

    def eps_fn(x: torch.Tensor, t: int, index: int) -> torch.Tensor:
        chunks = range(0, n, batch_size)
        return torch.cat(
            [
                net.guided_eps(
                    x[i : i + batch_size], t, contexts[i : i + batch_size], concat[i : i + batch_size], cfg
                )
                for i in chunks
            ]
        )

    x_T = torch.randn((n, *targets.latent_shape), generator=gen, device=dev, dtype=torch.float32)
    latents = ddim_sample(eps_fn, x_T, tables, gen, progress, description="zero123 views", variant=ZERO123)
    return images_to_uint8(net.decode(latents, batch_size=batch_size))


def _stochastic_views(
    net: Zero123, enc, targets: _Targets, tables, settings: Zero123Settings, gen, order, progress
) -> tuple[np.ndarray, dict[str, Any]]:
    """3DiM's stochastic conditioning: the views one after another, each step conditioned on the
    input or a finished view; returns the uint8 views and what the provenance records of the run."""
    dev, condition_on = net.device, settings.condition_on
    decoded: dict[int, np.ndarray] = {}

    def finish(target: int, latent: torch.Tensor) -> ConditioningView:
        image = net.decode(latent)
        u8 = images_to_uint8(image)
        decoded[target] = u8[0]
        if condition_on == "image":  # exactly what re-reading the saved PNG would give
            image = torch.from_numpy(u8).to(dev).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0
            view = net.encode_view(image)
            clip_embed, concat_latent = view.clip_embed, view.concat_latent
        else:
            clip_embed = net.encode_clip(image.clamp(-1.0, 1.0))
            concat_latent = latent.float() / net.scale_factor
        return ConditioningView(target, targets.centers[target], clip_embed, concat_latent)

    input_view = ConditioningView(INPUT_VIEW, targets.input_center, enc.clip_embed, enc.concat_latent)
    result = sample_stochastic_conditioning(
        net,
        input_view,
        targets.centers,
        finish,
        tables,
        targets.latent_shape,
        settings.cfg,
        noise_generator=gen,
        choice_generator=_choice_generator(settings.seed),
        order=order,
        progress=progress,
    )
    for i in range(len(targets.centers)):
        if i not in decoded:
            decoded[i] = images_to_uint8(net.decode(result.latents[i : i + 1]))[0]
    record = {
        "condition_on": condition_on,
        "generation_order": list(result.order),
        "conditioning_draws": [list(d) for d in result.draws],
    }
    return np.stack([decoded[i] for i in range(len(targets.centers))]), record


def generate_view_sets_zero123(
    prepared: Zero123Input | PreparedInput,
    elevation_deg: float,
    settings: Zero123Settings,
    *,
    model: Zero123,
    progress: Progress | None = None,
) -> list[ViewSet]:
    """``settings.samples`` sets of the 16 target views (``sd3d generate --model zero123``): set ``i``
    is :func:`generate_views_zero123` with seed ``settings.seed + i``, so set 0 is the one-set run's."""
    return [
        generate_views_zero123(
            prepared, elevation_deg, replace(settings, seed=settings.seed + i), progress=progress, model=model
        )
        for i in range(settings.samples)
    ]
