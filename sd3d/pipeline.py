"""The Python API behind ``sd3d generate``: one prepared photo -> 16 synchronised views (SyncDreamer).

``generate_views`` runs the official inference (reference-syncdreamer.md §3.9, §4): the input latent
is a VAE posterior *sample*, ``x_T ~ N(0, I)`` for all 16 views, 50 DDIM steps (eta 1) with
classifier-free guidance 2.0, the spatial volume rebuilt from all noisy views at every step, and
the official output quantisation (clamp to [-1, 1], ``(x + 1) * 0.5 * 255``, truncation).

Randomness comes from one ``torch.Generator`` seeded with ``seed`` on the compute device, drawn in
a fixed order (posterior noise, ``x_T``, then one draw per DDIM step but the last), so the same
seed, settings and device give the same views. Several ``samples`` are generated as one batch.

``dtype`` ``bf16``/``fp16`` runs the denoising loop under autocast (GroupNorms, softmaxes and the
projection grids stay float32); the conditioning encoders and the VAE decoder always run in fp32.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sd3d import cameras as cam
from sd3d.errors import InputImageError, UserError, WeightsError
from sd3d.io import ViewSet
from sd3d.progress import Progress, resolve

if TYPE_CHECKING:
    import torch

    from sd3d.models.syncdreamer import SyncDreamer
    from sd3d.preprocess import PreparedInput

SAMPLERS = ("ddim", "dpmpp", "unipc")
DEFAULT_SEED = 6033  # the official generate.py default
WEIGHTS_NAME = "syncdreamer"
VIEW_CHOICES = (16, 8, 4, 2, 1)
# Device memory one target view of one sample needs inside a denoising step (UNet with CFG,
# frustum volumes, depth attention), with a margin: benchmarks/generate.py measured 14.3 GiB (fp32)
# and 2.9 GiB (bf16) above the 5.2 GiB of weights for 16 views on an H200.
_BYTES_PER_VIEW = {"fp32": 1.0e9, "half": 0.25e9}


@dataclass(frozen=True)
class GenerationSettings:
    """Every knob of a run, recorded in ``cameras.json`` so a views folder says how it was made."""

    elevation_deg: float = 30.0
    steps: int = 50
    cfg: float = 2.0
    eta: float = 1.0
    seed: int = DEFAULT_SEED
    samples: int = 1
    batch_view_num: int | None = None
    sampler: str = "ddim"

    def check(self) -> GenerationSettings:
        """Raise a one-line :class:`UserError` for impossible values (before any heavy work)."""
        if not math.isfinite(self.elevation_deg) or not -90.0 <= self.elevation_deg <= 90.0:
            raise UserError(f"--elevation must be between -90 and 90 degrees, got {self.elevation_deg}")
        if not 1 <= self.steps <= 500:
            raise UserError(f"--steps must be between 1 and 500, got {self.steps}")
        if self.sampler == "ddim":
            from sd3d.sampling.ddim import ddim_timesteps

            try:
                ddim_timesteps(self.steps)
            except ValueError as exc:
                raise UserError(f"--steps {self.steps} is not usable with DDIM: {exc}") from None
        if not math.isfinite(self.cfg) or self.cfg < 0:
            raise UserError(f"--cfg must be a finite number >= 0, got {self.cfg}")
        if not math.isfinite(self.eta) or self.eta < 0:
            raise UserError(f"--eta must be a finite number >= 0, got {self.eta}")
        if not 0 <= self.seed < 2**63:
            raise UserError(f"--seed must be between 0 and 2**63-1, got {self.seed}")
        if not 1 <= self.samples <= 64:
            raise UserError(f"--samples must be between 1 and 64, got {self.samples}")
        if self.batch_view_num is not None and not 1 <= self.batch_view_num <= cam.NUM_VIEWS:
            raise UserError(
                f"--batch-view-num must be between 1 and {cam.NUM_VIEWS}, got {self.batch_view_num}"
            )
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}: use {', '.join(SAMPLERS)}")
        return self


# --------------------------------------------------------------------------------------------------
# model and input
# --------------------------------------------------------------------------------------------------
def weights_path(
    weights: str | os.PathLike | None = None, weights_dir: str | os.PathLike | None = None
) -> Path:
    """The checkpoint to load: ``weights`` if given, else the registered file in the weights folder."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                f"weights file not found: {path} (get the official one with: sd3d weights download {WEIGHTS_NAME})"
            )
        return path
    from sd3d.weights import require

    return require(WEIGHTS_NAME, weights_dir)


def load_model(
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    config=None,
) -> SyncDreamer:
    """Find, validate and load the SyncDreamer checkpoint onto ``device`` (fp32 weights)."""
    from sd3d.device import resolve_device
    from sd3d.models.checkpoint import load_syncdreamer

    path = weights_path(weights, weights_dir)
    return load_syncdreamer(path, config, resolve_device(str(device)))


def as_prepared(
    image_or_prepared: Any, crop_size: int = 200, background: str = "auto", weights_dir=None
) -> PreparedInput:
    """A :class:`~sd3d.preprocess.PreparedInput` from a path, PIL image, (256,256,4) uint8 RGBA array
    (already recentred) or an existing ``PreparedInput``."""
    from sd3d.preprocess import PreparedInput, prepare_input, to_model_rgb

    if isinstance(image_or_prepared, PreparedInput):
        return image_or_prepared
    if isinstance(image_or_prepared, np.ndarray):
        rgba = image_or_prepared
        if rgba.shape != (256, 256, 4) or rgba.dtype != np.uint8:
            raise InputImageError(
                f"an input array must be a prepared (256, 256, 4) uint8 RGBA image, got {rgba.shape}"
            )
        rgba = np.ascontiguousarray(rgba)
        return PreparedInput(
            rgba=rgba,
            model_rgb=to_model_rgb(rgba),
            crop_box=(0, 0, 256, 256),
            background="alpha",
            source=None,
        )
    return prepare_input(
        image_or_prepared, crop_size=crop_size, background=background, weights_dir=weights_dir
    )


def default_batch_view_num(device: torch.device, dtype: torch.dtype, samples: int = 1) -> int:
    """16 on CPU; on CUDA the largest of 16/8/4/2/1 views per chunk that fits the free memory."""
    import torch

    if device.type != "cuda":
        return cam.NUM_VIEWS
    free, _ = torch.cuda.mem_get_info(device)
    per_view = _BYTES_PER_VIEW["fp32" if dtype == torch.float32 else "half"] * max(1, samples)
    for n in VIEW_CHOICES:
        if n * per_view <= 0.85 * free:
            return n
    return 1


# --------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------
def quantize_official(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in ~[-1, 1] -> (..., H, W, 3) uint8: clamp, ``(x + 1) * 0.5 * 255``, truncate."""
    import torch

    x = torch.clamp(images.float(), -1.0, 1.0)
    x = ((x + 1.0) * 0.5 * 255.0).movedim(-3, -1)
    return x.cpu().numpy().astype(np.uint8)


def generate_views(
    image_or_prepared: Any,
    *,
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    model: SyncDreamer | None = None,
    elevation_deg: float = 30.0,
    steps: int = 50,
    cfg: float = 2.0,
    eta: float = 1.0,
    seed: int = DEFAULT_SEED,
    samples: int = 1,
    batch_view_num: int | None = None,
    sampler: str = "ddim",
    device: str = "auto",
    dtype: str = "auto",
    crop_size: int = 200,
    background: str = "auto",
    progress: Progress | None = None,
) -> list[ViewSet]:
    """Generate ``samples`` sets of the 16 SyncDreamer views for one input image.

    ``image_or_prepared``: a path / PIL image (preprocessed with ``crop_size`` and ``background`` as
    ``sd3d preprocess`` does), an already recentred (256,256,4) uint8 RGBA array, or a
    ``PreparedInput``. ``model``: an already loaded model, used on its own device (``device`` then
    only matters for loading); else ``weights`` / ``weights_dir`` name the checkpoint.
    Returns one :class:`~sd3d.io.ViewSet` per sample (RGB on white, float32 in [0, 1] holding the
    officially quantised uint8 values / 255, the 16 target cameras).
    """
    settings = GenerationSettings(
        float(elevation_deg),
        int(steps),
        float(cfg),
        float(eta),
        int(seed),
        int(samples),
        batch_view_num,
        sampler,
    ).check()
    prepared = as_prepared(image_or_prepared, crop_size, background, weights_dir)
    if model is None:
        model = load_model(weights, weights_dir, device)
    return run_generation(model, prepared, settings, dtype=dtype, progress=progress)


def run_generation(
    model: SyncDreamer,
    prepared: PreparedInput,
    settings: GenerationSettings,
    dtype: str = "auto",
    progress: Progress | None = None,
) -> list[ViewSet]:
    """:func:`generate_views` with a loaded model and a prepared input (on the model's device)."""
    import torch

    from sd3d.device import make_generator, resolve_dtype
    from sd3d.sampling.ddim import ddim_sample, ddim_tables
    from sd3d.sampling.schedule import scaled_linear_schedule

    settings.check()
    device = model.device
    compute_dtype = resolve_dtype(dtype, device)
    B, N = settings.samples, model.config.view_num
    bvn = settings.batch_view_num or default_batch_view_num(device, compute_dtype, B)
    generator = make_generator(settings.seed, device)
    progress = resolve(progress)
    started = time.perf_counter()

    image = torch.from_numpy(np.array(prepared.model_rgb)).permute(2, 0, 1)[None].to(device)
    image = image.expand(B, -1, -1, -1).contiguous()
    cfg = model.config
    with torch.inference_mode():
        cond = model.condition(image, [settings.elevation_deg] * B, generator=generator)
        shape = (B, N, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        x_T = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

        def eps_fn(x: torch.Tensor, t: int, index: int) -> torch.Tensor:
            with torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
                return model.predict_eps(x, t, cond, settings.cfg, bvn).float()

        schedule = scaled_linear_schedule(cfg.num_timesteps, cfg.linear_start, cfg.linear_end)
        if settings.sampler == "ddim":
            tables = ddim_tables(schedule, settings.steps, settings.eta)
            latents = ddim_sample(eps_fn, x_T, tables, generator=generator, progress=progress)
        else:
            from sd3d.sampling.diffusers_samplers import diffusers_sample

            latents = diffusers_sample(
                settings.sampler, eps_fn, x_T, schedule, settings.steps, progress=progress
            )
        with progress.task("decoding", 1) as advance:
            decoded = model.decode_latents(latents.reshape(B * N, *shape[2:]).float())
            advance(1)
    views_u8 = quantize_official(decoded).reshape(B, N, cfg.image_size, cfg.image_size, 3)
    elapsed = time.perf_counter() - started

    cameras = cam.target_cameras(size=cfg.image_size)
    record = {
        "model": "syncdreamer",
        "settings": {
            **asdict(settings),
            "batch_view_num": bvn,
            "dtype": str(compute_dtype).replace("torch.", ""),
        },
        "device": str(device),
        "seconds": round(elapsed, 2),
        "input": str(prepared.source) if prepared.source is not None else None,
    }
    return [
        ViewSet(
            images=views_u8[b].astype(np.float32) / 255.0,
            cameras=cameras,
            alphas=None,
            input_elevation_deg=settings.elevation_deg,
            seed=settings.seed,
            provenance={**record, "sample": b},
        )
        for b in range(B)
    ]


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def check_output_folder(path: str | os.PathLike) -> Path:
    """Refuse an unusable output folder early, creating nothing (the write itself is atomic)."""
    from sd3d.errors import OutputPathError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"output path {path} exists and is not a folder")
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise OutputPathError(f"cannot write the output folder {path}: {ancestor} is not a writable folder")
    return path


def _views_u8(views: ViewSet) -> list[np.ndarray]:
    return [np.rint(v * 255.0).astype(np.uint8) for v in views.images]


def _write_one(folder: Path, views: ViewSet, input_rgba: np.ndarray | None) -> None:
    from PIL import Image

    from sd3d.io import write_views_into

    extra = {
        "input_elevation_deg": views.input_elevation_deg,
        "seed": views.seed,
        "sample": views.provenance.get("sample", 0),
        "generator": {k: v for k, v in views.provenance.items() if k != "sample"},
    }
    write_views_into(folder, _views_u8(views), views.cameras, extra)
    if input_rgba is not None:
        Image.fromarray(np.ascontiguousarray(input_rgba), "RGBA").save(folder / "input.png")


def write_generated(
    out_dir: str | os.PathLike, views: Sequence[ViewSet], input_rgba: np.ndarray | None
) -> Path:
    """Write the views folder atomically (the whole folder appears, or nothing).

    One sample: ``000.png .. 015.png``, ``grid.png``, ``cameras.json``, ``transforms.json``,
    ``input.png``. Several: one such folder per sample (``sample-0/``, ...) plus ``input.png`` and
    ``contact.png`` (one row of 16 views per sample) at the top.
    """
    from PIL import Image

    from sd3d.io import atomic_dir, contact_sheet

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if len(views) == 1:
            _write_one(tmp, views[0], input_rgba)
        else:
            for i, v in enumerate(views):
                sub = tmp / f"sample-{i}"
                sub.mkdir()
                _write_one(sub, v, input_rgba)
            sheet = contact_sheet([im for v in views for im in _views_u8(v)], columns=cam.NUM_VIEWS)
            Image.fromarray(sheet).save(tmp / "contact.png")
            if input_rgba is not None:
                Image.fromarray(np.ascontiguousarray(input_rgba), "RGBA").save(tmp / "input.png")
    return out_dir
