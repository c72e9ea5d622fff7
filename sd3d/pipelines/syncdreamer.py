"""The Python API behind ``sd3d generate``: one prepared photo -> 16 synchronised views (SyncDreamer).

``generate_views`` runs the official inference (reference-syncdreamer.md §3.9, §4): the input latent
is a VAE posterior *sample*, ``x_T ~ N(0, I)`` for all 16 views, 50 DDIM steps (eta 1) with
classifier-free guidance 2.0, the spatial volume rebuilt from all noisy views at every step, and
the official output quantisation (clamp to [-1, 1], ``(x + 1) * 0.5 * 255``, truncation).

Randomness comes from one ``torch.Generator`` seeded with ``seed`` on the compute device, drawn in
a fixed order (posterior noise, ``x_T``, then one draw per DDIM step but the last), so the same
seed, settings and device give the same views. Several ``samples`` are generated as one batch.
A caller may pass its own ``x_T`` (to compare with another implementation from the same start): it
replaces the seed's draw, which is still made, so the posterior and per-step noise stay the seed's.

Precision and speed (issue 7; numbers in benchmarks/generate.py's table):

* ``dtype`` ``auto`` is bf16 on CUDA and fp32 on CPU. :func:`load_model` stores the weights in that
  dtype (norm layers keep float32); a half-precision run executes everything -- conditioning,
  denoising, decoding -- under autocast, with GroupNorm, softmax, the projection grids, the
  guidance combination and the DDIM update in float32. ``fp32`` is the exact (parity) path.
* On CUDA each denoising step is replayed from a CUDA graph (:mod:`sd3d.sampling.cuda_graph`):
  bit-identical to eager execution, captured once per generation for about one step's host time.
* ``use_compile=True`` (``sd3d generate --compile``) also ``torch.compile``s the per-step networks
  (1.45 s instead of 2.47 s per generation on an H100), but the first generation of a process pays
  the compilation: 67 s with cold caches, ~8 s once the on-disk inductor cache is warm. That pays
  off only for many images per process, so it is not the default.
* ``batch_view_num`` and the decoder batch are chosen from free device memory; the conditioning
  encoders are parked in host memory when the device is short of it
  (:mod:`sd3d.models.inference`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from sd3d import DEFAULT_SEED
from sd3d.core import cameras as cam
from sd3d.core import defaults
from sd3d.core.device import make_generator, resolve_device, resolve_dtype
from sd3d.core.errors import InputImageError, UserError, WeightsError
from sd3d.core.io import VIEW_FILES, ViewSet, atomic_dir, check_output_dir, contact_sheet, write_views_into
from sd3d.core.progress import Progress, resolve
from sd3d.core.triton_precompile import KernelWarmUp
from sd3d.models.configs import SyncDreamerConfig
from sd3d.models.inference import (
    HALF_DTYPES,
    cast_weights_,
    choose_batch_view_num,
    choose_decode_batch,
    compile_step_modules_,
    prepare_for_inference,
)
from sd3d.models.norm_warmup import start_norm_kernel_warmup
from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
from sd3d.preprocess import PreparedInput, prepare_input, to_model_rgb
from sd3d.sampling.cuda_graph import GraphedEps
from sd3d.sampling.ddim import ddim_timesteps, nearest_usable_steps
from sd3d.sampling.samplers import SAMPLERS, make_sampler
from sd3d.sampling.schedule import scaled_linear_schedule
from sd3d.weights import require

if TYPE_CHECKING:
    import torch

    from sd3d.models.syncdreamer import SyncDreamer
    from sd3d.preprocess import PreparedInput

DDIM_DISCRETIZATIONS = ("uniform", "quad")  # the official SyncDDIMSampler's ddim_discretize choices
MAX_STEPS = 500
WEIGHTS_NAME = "syncdreamer"


@dataclass(frozen=True)
class GenerationSettings:
    """Every knob of a run, recorded in ``cameras.json`` so a views folder says how it was made."""

    elevation_deg: float = defaults.INPUT_ELEVATION_DEG
    steps: int = defaults.SYNCDREAMER_STEPS
    cfg: float = defaults.SYNCDREAMER_CFG
    eta: float = defaults.DDIM_ETA
    seed: int = DEFAULT_SEED
    samples: int = 1
    batch_view_num: int | None = None
    sampler: str = "ddim"
    ddim_discretize: str = "uniform"

    def check(self) -> GenerationSettings:
        """Raise a one-line :class:`UserError` for impossible values (before any heavy work)."""
        lo, hi = cam.ELEVATION_LIMITS_DEG
        if not math.isfinite(self.elevation_deg) or not lo <= self.elevation_deg <= hi:
            raise UserError(
                f"--elevation must be between {lo:g} and {hi:g} degrees, got {self.elevation_deg}"
            )
        if not 1 <= self.steps <= MAX_STEPS:
            raise UserError(f"--steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if self.ddim_discretize not in DDIM_DISCRETIZATIONS:
            raise UserError(
                f"unknown DDIM discretization {self.ddim_discretize!r}: use {' or '.join(DDIM_DISCRETIZATIONS)}"
            )
        if self.sampler == "ddim":
            try:
                ddim_timesteps(self.steps, discretize=self.ddim_discretize)
            except ValueError as exc:
                near = " or ".join(str(s) for s in nearest_usable_steps(self.steps, MAX_STEPS))
                raise UserError(
                    f"--steps {self.steps} is not usable with DDIM: {exc}; use {near}, or "
                    "--ddim-discretize quad (any step count)"
                ) from None
        elif self.ddim_discretize != "uniform":
            raise UserError(
                f"--ddim-discretize {self.ddim_discretize} is a DDIM option; the {self.sampler} sampler "
                "chooses its own timesteps"
            )
        if not math.isfinite(self.cfg) or self.cfg < 0:
            raise UserError(f"--cfg must be a finite number >= 0, got {self.cfg}")
        if not math.isfinite(self.eta) or self.eta < 0:
            raise UserError(f"--eta must be a finite number >= 0, got {self.eta}")
        first, last = defaults.SEED_RANGE
        if not first <= self.seed <= last:
            raise UserError(f"--seed must be between {first} and {last}, got {self.seed}")
        if not 1 <= self.samples <= 64:
            raise UserError(f"--samples must be between 1 and 64, got {self.samples}")
        if self.batch_view_num is not None:
            check_batch_view_num(self.batch_view_num)
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

    return require(WEIGHTS_NAME, weights_dir)


def load_model(
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    config=None,
    dtype: str | torch.dtype = "auto",
    offload: bool | None = None,
    compile_workers=None,
) -> SyncDreamer:
    """Find, validate and load the SyncDreamer checkpoint onto ``device``, ready for inference.

    On CUDA the weights are stored in the dtype ``dtype`` resolves to (``auto``: bf16; norm layers
    stay float32), read tensor by tensor, so no float32 copy of the model is ever made on the GPU.
    On CPU they stay float32 (a ``bf16`` run there uses autocast). ``offload``: keep the conditioning
    encoders in host memory between inputs (``None``: only when the GPU is short of memory).
    ``compile_workers``: the kernel warm-up's workers, if the command started them before it imported
    PyTorch (:mod:`sd3d.models.warm_start`); they get the warm-up's work or are closed (the command
    closes them too when it ends, whatever happened before).
    """

    path = weights_path(weights, weights_dir)
    dev = device if not isinstance(device, str) else resolve_device(device)
    dt = dtype if not isinstance(dtype, str) else resolve_dtype(dtype, dev)
    weight_dtype = dt if dev.type == "cuda" else torch.float32
    # started while the checkpoint loads, for the official model unless another config is named
    warmup = start_kernel_warmup(config or SyncDreamerConfig(), dev, weight_dtype, pool=compile_workers)
    model = load_syncdreamer(path, config, dev, weight_dtype)
    model = prepare_for_inference(model, weight_dtype, offload)
    model.kernel_warmup = warmup
    return model


def start_kernel_warmup(
    config: SyncDreamerConfig,
    device: torch.device,
    dtype: torch.dtype,
    *,
    processes: bool = True,
    pool=None,
) -> KernelWarmUp | None:
    """A machine's first process compiles the GroupNorm kernels (seconds): start that for a default
    generation (the views per chunk and images per decoder call that :func:`sample_views` will pick)
    in the background (:func:`sd3d.models.norm_warmup.start_norm_kernel_warmup`, in worker processes
    unless ``processes`` is False; None off CUDA or where an earlier process did it). Set the result
    as the model's ``kernel_warmup``."""
    return start_norm_kernel_warmup(
        config,
        device,
        dtype,
        batch_view_num=default_batch_view_num(device, dtype),
        decode_batch=choose_decode_batch(device, dtype, cam.NUM_VIEWS),
        processes=processes,
        pool=pool,
    )


def wait_for_kernel_warmup(model: SyncDreamer, progress: Progress) -> dict | None:
    """Wait for the GroupNorm kernels :func:`load_model` started compiling (once per model; a progress
    line while it still runs); what it did, or None when there was none."""
    warmup, model.kernel_warmup = model.kernel_warmup, None
    if warmup is None:
        return None
    t0 = time.perf_counter()
    if warmup.running:
        with progress.task("compiling GPU kernels (a machine's first run)", 1) as advance:
            result = warmup.wait()
            advance(1)
    else:
        result = warmup.wait()
    return {
        "variants": result.get("variants", 0),
        "failed": len(result.get("failed", ())) + ("error" in result),
        **{k: result[k] for k in ("workers", "launchers_failed") if k in result},
        "seconds": result.get("seconds"),
        "waited_s": round(time.perf_counter() - t0, 3),
    }


def as_prepared(
    image_or_prepared: Any,
    crop_size: int = defaults.CROP_SIZE,
    background: str = "auto",
    weights_dir=None,
    max_pixels: int | None = None,
) -> PreparedInput:
    """A :class:`~sd3d.preprocess.PreparedInput` from a path, PIL image, (256,256,4) uint8 RGBA array
    (already recentred) or an existing ``PreparedInput``. ``max_pixels``: the input size limit."""

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
        image_or_prepared,
        crop_size=crop_size,
        background=background,
        max_pixels=max_pixels,
        weights_dir=weights_dir,
    )


def default_batch_view_num(device: torch.device, dtype: torch.dtype, samples: int = 1) -> int:
    """16 on CPU; on CUDA the largest of 16/8/4/2/1 views per chunk that fits the free memory."""

    return choose_batch_view_num(device, dtype, samples, cam.NUM_VIEWS)


def compute_dtype_for(model: SyncDreamer, dtype: str | torch.dtype = "auto") -> torch.dtype:
    """The dtype a run computes in: ``auto`` follows half-precision weights, else ``resolve_dtype``.

    An fp32 run on a model whose weights were loaded in half precision upcasts them in place (with
    a warning: the values keep their half-precision rounding); load with ``dtype='fp32'`` instead.
    """

    device, weights = model.device, model.weight_dtype
    if isinstance(dtype, torch.dtype):
        compute = dtype
    elif (dtype or "auto").strip().lower() == "auto" and weights in HALF_DTYPES:
        return weights
    else:
        compute = resolve_dtype(dtype, device)
    if compute == torch.float32 and weights != torch.float32:
        warnings.warn(
            f"the model's weights were loaded as {str(weights).replace('torch.', '')}; an fp32 run uses "
            "them upcast (not the checkpoint's exact values): load the model with dtype='fp32'",
            stacklevel=3,
        )
        cast_weights_(model, torch.float32)
    return compute


def check_batch_view_num(n: int) -> int:
    """``n`` if it is a usable number of views per network call (1..16), else a one-line UserError;
    Zero123's ``--batch-view-num`` goes through the same check."""
    if not 1 <= n <= cam.NUM_VIEWS:
        raise UserError(f"--batch-view-num must be between 1 and {cam.NUM_VIEWS}, got {n}")
    return n


# --------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------
def quantize_official(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in ~[-1, 1] -> (..., H, W, 3) uint8: clamp, ``(x + 1) * 0.5 * 255``, truncate."""

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
    max_pixels: int | None = None,
    progress: Progress | None = None,
    ddim_discretize: str = "uniform",
    x_T: torch.Tensor | np.ndarray | None = None,
) -> list[ViewSet]:
    """Generate ``samples`` sets of the 16 SyncDreamer views for one input image.

    ``image_or_prepared``: a path / PIL image (preprocessed with ``crop_size`` and ``background`` as
    ``sd3d preprocess`` does; ``max_pixels`` is its size limit), an already recentred (256,256,4) uint8 RGBA array, or a
    ``PreparedInput``. ``model``: an already loaded model, used on its own device (``device`` then
    only matters for loading); else ``weights`` / ``weights_dir`` name the checkpoint.
    ``ddim_discretize``: the DDIM timesteps, ``uniform`` (official default) or ``quad``.
    ``x_T``: the initial latent noise, shape ``(samples, 16, 4, 32, 32)``, any floating dtype (used
    as float32); it replaces the seed's draw (see the module docstring).
    Returns one :class:`~sd3d.core.io.ViewSet` per sample (RGB on white, float32 in [0, 1] holding the
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
        ddim_discretize,
    ).check()
    if x_T is not None:  # before any loading: a wrong x_T is one error line, early
        check_initial_noise(x_T, initial_noise_shape(settings.samples, getattr(model, "config", None)))
    prepared = as_prepared(image_or_prepared, crop_size, background, weights_dir, max_pixels)
    if model is None:
        model = load_model(weights, weights_dir, device, dtype=dtype)
    return run_generation(model, prepared, settings, dtype=dtype, progress=progress, x_T=x_T)


def initial_noise_shape(samples: int, config=None) -> tuple[int, int, int, int, int]:
    """``(samples, views, latent channels, latent size, latent size)`` of ``x_T`` for ``config``
    (default: the official one)."""

    cfg = SyncDreamerConfig() if config is None else config
    return (samples, cfg.view_num, cfg.latent_channels, cfg.latent_size, cfg.latent_size)


def check_initial_noise(x_T: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """``x_T`` as a float32 CPU-or-device tensor, or one :class:`UserError` line if it cannot be one.

    Accepts a torch tensor or numpy array of ``shape`` with a floating dtype and finite values.
    """

    if isinstance(x_T, np.ndarray):
        if x_T.dtype.kind != "f":
            raise UserError(f"x_T must hold floating-point values, got a numpy {x_T.dtype} array")
        x_T = torch.from_numpy(np.ascontiguousarray(x_T))
    if not isinstance(x_T, torch.Tensor):
        raise UserError(f"x_T must be a torch tensor or numpy array, got {type(x_T).__name__}")
    if not x_T.is_floating_point():
        raise UserError(f"x_T must hold floating-point values, got {str(x_T.dtype).removeprefix('torch.')}")
    if tuple(x_T.shape) != tuple(shape):
        raise UserError(
            f"x_T must have shape {tuple(shape)} (samples, views, latent channels, latent size, latent "
            f"size), got {tuple(x_T.shape)}"
        )
    if not bool(torch.isfinite(x_T).all()):
        raise UserError("x_T holds NaN or infinite values")
    return x_T.detach().to(torch.float32)


@dataclass(frozen=True)
class Generation:
    """What one run made, before it becomes :class:`~sd3d.core.io.ViewSet` objects.

    ``latents``: (B, N, 4, h, w) float32 final latents on the model's device (the benchmark compares
    them across precisions); ``views_u8``: (B, N, H, W, 3) officially quantised views; ``record``:
    the provenance written to ``cameras.json``.
    """

    latents: torch.Tensor
    views_u8: np.ndarray
    record: dict[str, Any]


def run_generation(
    model: SyncDreamer,
    prepared: PreparedInput,
    settings: GenerationSettings,
    dtype: str = "auto",
    progress: Progress | None = None,
    *,
    cuda_graph: bool | None = None,
    use_compile: bool = False,
    x_T: torch.Tensor | np.ndarray | None = None,
) -> list[ViewSet]:
    """:func:`generate_views` with a loaded model and a prepared input (on the model's device)."""
    result = sample_views(
        model, prepared, settings, dtype, progress, cuda_graph=cuda_graph, use_compile=use_compile, x_T=x_T
    )
    cameras = cam.target_cameras(size=model.config.image_size)
    return [
        ViewSet(
            images=result.views_u8[b].astype(np.float32) / 255.0,
            cameras=cameras,
            alphas=None,
            input_elevation_deg=settings.elevation_deg,
            seed=settings.seed,
            provenance={**result.record, "sample": b},
        )
        for b in range(result.views_u8.shape[0])
    ]


def sample_views(
    model: SyncDreamer,
    prepared: PreparedInput,
    settings: GenerationSettings,
    dtype: str | torch.dtype = "auto",
    progress: Progress | None = None,
    *,
    cuda_graph: bool | None = None,
    use_compile: bool = False,
    x_T: torch.Tensor | np.ndarray | None = None,
) -> Generation:
    """Conditioning, the sampling loop and decoding; ``cuda_graph`` (None: on CUDA) replays the steps
    from a CUDA graph; ``use_compile`` compiles the per-step networks first (once per model);
    ``x_T`` (checked by :func:`check_initial_noise`) replaces the seed's initial noise."""

    settings.check()
    device = model.device
    B, N = settings.samples, model.config.view_num
    given_x_T = None if x_T is None else check_initial_noise(x_T, initial_noise_shape(B, model.config))
    compute_dtype = compute_dtype_for(model, dtype)
    bvn = settings.batch_view_num or default_batch_view_num(device, compute_dtype, B)
    use_graph = device.type == "cuda" and cuda_graph is not False
    if use_compile:
        compile_step_modules_(model)
    generator = make_generator(settings.seed, device)
    progress = resolve(progress)
    started = time.perf_counter()
    warmup = wait_for_kernel_warmup(model, progress)

    image = torch.from_numpy(np.array(prepared.model_rgb)).permute(2, 0, 1)[None].to(device)
    image = image.expand(B, -1, -1, -1).contiguous()
    cfg = model.config
    half = compute_dtype != torch.float32
    with torch.inference_mode(), torch.autocast(device.type, dtype=compute_dtype, enabled=half):
        cond = model.condition(image, [settings.elevation_deg] * B, generator=generator)
        shape = (B, N, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        x_T = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        if given_x_T is not None:  # drawn anyway: the per-step noise stays the seed's
            x_T = given_x_T.to(device)

        def step(x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
            return model.predict_eps(x, t, cond, settings.cfg, bvn).float()

        eps_fn = _graphed(step, device) if use_graph else (lambda x, t, index: step(x, t))
        schedule = scaled_linear_schedule(cfg.num_timesteps, cfg.linear_start, cfg.linear_end)
        sampler = make_sampler(
            settings.sampler, schedule, settings.steps, eta=settings.eta, discretize=settings.ddim_discretize
        )
        latents = sampler(eps_fn, x_T, generator=generator, progress=progress)
        use_graph = use_graph and not getattr(eps_fn, "failed", False)  # a failed capture ran eagerly
        del eps_fn  # frees a CUDA graph and its memory pool before decoding
        # The decoder is ~10 TFLOP for 16 views: half precision on CUDA. On CPU autocast buys it
        # nothing, and float32 keeps its output stable (the synthetic test weights amplify bf16
        # round-off in the decoder, not in the denoiser).
        decoder_dtype = model.first_stage_model.post_quant_conv.weight.dtype
        half_decode = half and (device.type == "cuda" or decoder_dtype != torch.float32)
        with (
            progress.task("decoding", 1) as advance,
            torch.autocast(device.type, dtype=compute_dtype, enabled=half_decode),
        ):
            flat = latents.reshape(B * N, *shape[2:]).float()
            decode_dtype = compute_dtype if half_decode else torch.float32
            decoded = model.decode_latents(flat, choose_decode_batch(device, decode_dtype, B * N))
            advance(1)
    views_u8 = quantize_official(decoded).reshape(B, N, cfg.image_size, cfg.image_size, 3)
    elapsed = time.perf_counter() - started
    record = {
        "model": "syncdreamer",
        "settings": {
            **asdict(settings),
            "batch_view_num": bvn,
            "dtype": str(compute_dtype).replace("torch.", ""),
        },
        "device": str(device),
        "cuda_graph": use_graph,
        "compiled": model.step_modules_compiled,
        **({"kernel_warmup": warmup} if warmup else {}),
        "x_T": "seed" if given_x_T is None else "given",
        "seconds": round(elapsed, 2),
        "input": str(prepared.source) if prepared.source is not None else None,
        "background": prepared.background,
        "background_note": prepared.background_note,
    }
    return Generation(latents=latents, views_u8=views_u8, record=record)


def _graphed(step, device):

    return GraphedEps(step, device)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def check_output_folder(
    path: str | os.PathLike, overwrite: bool = False, planned: Sequence[str] = ()
) -> Path:
    """Refuse an unusable output folder early, creating nothing (see :func:`sd3d.core.io.check_output_dir`:
    a non-empty folder sd3d did not write needs ``overwrite``, and none of its files is replaced)."""

    return check_output_dir(path, overwrite=overwrite, planned=planned)


def generated_names(samples: int) -> list[str]:
    """The entries :func:`write_generated` puts in a views folder for ``samples`` view sets."""

    if samples == 1:
        return [*VIEW_FILES, "grid.png", "cameras.json", "transforms.json", "input.png"]
    return [*(f"sample-{i}" for i in range(samples)), "contact.png", "input.png"]


def _views_u8(views: ViewSet) -> list[np.ndarray]:
    return [np.rint(v * 255.0).astype(np.uint8) for v in views.images]


def _write_one(folder: Path, views: ViewSet, input_rgba: np.ndarray | None) -> None:

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
    out_dir: str | os.PathLike,
    views: Sequence[ViewSet],
    input_rgba: np.ndarray | None,
    chosen: int | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the views folder atomically (the whole folder appears, or nothing), under the output
    folder policy of :func:`sd3d.core.io.atomic_dir` (``overwrite``: see :func:`check_output_folder`).

    One sample: ``000.png .. 015.png``, ``grid.png``, ``cameras.json``, ``transforms.json``,
    ``input.png``. Several: one such folder per sample (``sample-0/``, ...) plus ``input.png`` and
    ``contact.png`` (one row of 16 views per sample) at the top. With ``chosen`` (the sample
    ``sd3d run`` kept), that sample is written at the top instead of in its own sub-folder, so
    the folder is a views folder ``sd3d reconstruct`` reads as is; ``cameras.json`` records which
    sample it is, and the others stay beside it as ``sample-<i>/``.
    """

    out_dir = Path(out_dir)
    if chosen is not None and not 0 <= chosen < len(views):
        raise ValueError(f"chosen sample {chosen} is not one of the {len(views)} samples")
    with atomic_dir(out_dir, overwrite=overwrite, command="generate") as tmp:
        if len(views) == 1:
            _write_one(tmp, views[0], input_rgba)
        else:
            for i, v in enumerate(views):
                if i == chosen:
                    _write_one(tmp, v, input_rgba)
                    continue
                sub = tmp / f"sample-{i}"
                sub.mkdir()
                _write_one(sub, v, input_rgba)
            sheet = contact_sheet([im for v in views for im in _views_u8(v)], columns=cam.NUM_VIEWS)
            Image.fromarray(sheet).save(tmp / "contact.png")
            if input_rgba is not None:
                Image.fromarray(np.ascontiguousarray(input_rgba), "RGBA").save(tmp / "input.png")
    return out_dir
