"""``sd3d batch --engine ray``: the per-image chain of ``sd3d run`` on a Ray cluster.

Ray places the work, moves the data and restarts what dies; this module only says what runs where:

* **GPU workers** (Ray actors, ``gpus_per_worker`` GPUs each, 0 on a CPU-only cluster) load the
  model once and keep it. They run the GPU steps only: generation (and the regeneration at an
  estimated elevation) and reconstruction (training plus the surface's SDF grid).
* **CPU steps** are Ray tasks placed on any free CPU of the cluster: preprocessing, elevation
  estimation, ranking of samples, and the export (UV unwrap, texture baking on a CPU copy of the
  field, mesh files, preview, ``report.json``).
* The driver moves each image from step to step when the step before it has finished
  (``ray.wait``) and gives a GPU step to a worker only then, with at most ``GPU_QUEUE_DEPTH`` calls
  queued per worker, so a worker's queue never holds a call that waits for a CPU step while
  other images' work is ready. Many images are in flight at once, so while one image's CPU steps
  run the GPUs work on others.

Results are written by the export task straight into the output folder (local/shared or an fsspec
URL, :mod:`sd3d.workflows.storage`), each image's folder appearing complete or not at all.

Faults. A worker process that dies (killed, its node lost, out of memory) is restarted by Ray and
its pending calls re-run (``max_restarts`` / ``max_task_retries``); a CPU task whose process dies is
re-run (``max_retries``). An exception raised by a step itself (corrupt file, no object found, a
bug) is the image's own failure: recorded in ``batch.json`` and never retried within the run. When Ray's retries are exhausted the driver starts the image
over, at most ``IMAGE_ATTEMPTS`` times, and replaces a worker that is gone for good. An image that
failed for its own reason is not retried by a later run either, unless its file changed.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorDiedError, RayError, RayTaskError

from sd3d.core.errors import UserError
from sd3d.core.io import to_uint8
from sd3d.core.progress import Progress, resolve
from sd3d.pipelines.syncdreamer import load_model, weights_path
from sd3d.workflows import run as runner
from sd3d.workflows.run import BatchItem, ElevationChoice, RunSettings, StageTimer
from sd3d.workflows.storage import ImageEntry, LocalFolder, RemoteFolder, open_folder

TASK_RETRIES = 2  # re-runs of a CPU task whose process died
ACTOR_RESTARTS = 2  # restarts of a GPU worker whose process died
ACTOR_TASK_RETRIES = 2  # re-runs of its pending calls after such a restart
IMAGE_ATTEMPTS = 3  # starts of one image when Ray's own retries were not enough
GPU_QUEUE_DEPTH = 2  # calls per GPU worker: one running, one ready to start
SAVE_EVERY_S = 2.0  # batch.json is rewritten at most this often while the batch runs
MTIME_SLACK_S = 1.0  # object stores keep modification times in whole seconds

Folder = LocalFolder | RemoteFolder


@dataclass(frozen=True)
class RayOptions:
    """Where to run and how wide: ``address`` None starts Ray on this machine (or uses the session
    the caller already opened), ``auto`` joins the local cluster, ``ray://host:10001`` a remote one.
    ``workers`` / ``gpus_per_worker`` None: one worker per GPU of the cluster (one CPU worker on a
    cluster without GPUs). ``max_in_flight`` None: four images per worker."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    max_in_flight: int | None = None


# --------------------------------------------------------------------------------------------------
# what crosses process boundaries
# --------------------------------------------------------------------------------------------------
def _pack(views: list) -> list:
    """View sets as uint8 (a quarter of the float32 bytes through the object store; lossless:
    generated views are uint8 divided by 255)."""

    return [replace(v, images=to_uint8(v.images)) for v in views]


def _unpack(views: list) -> list:
    return [replace(v, images=v.images.astype(np.float32) / 255.0) for v in views]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _classify(exc: BaseException) -> tuple[str, str]:
    """('input' | 'error' | 'system', one-line message) for an exception out of ``ray.get``."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, RayError):  # e.g. an argument lost with its node
            return _classify(cause)
        if isinstance(cause, UserError):
            return "input", _one_line(cause)
        return "error", f"{type(cause).__name__}: {_one_line(cause)}"
    return "system", f"{type(exc).__name__}: {_one_line(exc)}"


# --------------------------------------------------------------------------------------------------
# CPU steps
# --------------------------------------------------------------------------------------------------
@ray.remote(num_cpus=1, max_retries=TASK_RETRIES, num_returns=2)
def _preprocess(inputs: Folder, entry: ImageEntry, settings: RunSettings, weights_dir: str | None):
    start = time.perf_counter()
    with inputs.local_copy(entry) as path:
        prepared = runner.prepare_photo(path, settings, weights_dir)
    if isinstance(inputs, RemoteFolder):
        prepared = replace(prepared, source=None)  # the temporary copy means nothing elsewhere
    return prepared, {"seconds": time.perf_counter() - start}


@ray.remote(num_cpus=1, max_retries=TASK_RETRIES)
def _choose_elevation(prepared, views: list, settings: RunSettings) -> dict:
    start = time.perf_counter()
    choice = runner.choose_elevation(prepared, _unpack(views), settings)
    return {"choice": choice, "seconds": time.perf_counter() - start}


@ray.remote(num_cpus=1, max_retries=TASK_RETRIES)
def _rank(views: list) -> dict:
    start = time.perf_counter()
    chosen, scores = runner.rank_samples(_unpack(views))
    return {"chosen": chosen, "scores": scores, "seconds": time.perf_counter() - start}


@ray.remote(num_cpus=1, max_retries=TASK_RETRIES)
def _export(
    output: Folder,
    entry: ImageEntry,
    settings: RunSettings,
    prepared,
    views: list,
    recon: runner.Reconstruction,
    record: dict,
) -> dict:
    """Write the image's result folder (committed whole) from the CPU copy of its reconstruction."""
    stages = StageTimer(record["stage_seconds"])
    with output.staging(entry.out_name) as folder:
        report = runner.write_run_folder(
            folder,
            source=entry.location,
            settings=settings,
            prepared=prepared,
            views=_unpack(views),
            chosen=record["chosen"],
            sample_scores=record["scores"],
            elevation_record=record["elevation"],
            recon=recon,
            stages=stages,
            device="cpu",
            model_device=record["device"],
            peak_gpu_memory=lambda: record["peak"],
        )
    output.clean_stale(entry.out_name)
    return {"seconds": report["total_seconds"]}


# --------------------------------------------------------------------------------------------------
# GPU workers
# --------------------------------------------------------------------------------------------------
class GpuWorker:
    """Holds the model on its device and runs the GPU steps; the model is loaded on the first call
    (again after Ray restarts the process)."""

    def __init__(self, weights: str | None, weights_dir: str | None, settings: RunSettings) -> None:
        self.weights, self.weights_dir, self.settings = weights, weights_dir, settings
        self.model = self.dtype = None

    def _loaded(self):
        """The model, loaded on first use: this worker's process resolves the device and dtype
        names (on the machine that runs it), once."""
        if self.model is None:
            device, dtype = self.settings.device_and_dtype()
            self.model = load_model(self.weights, self.weights_dir, device, dtype=dtype)
            self.dtype = runner.run_dtype(self.model, self.settings)
        return self.model

    def load(self) -> dict:
        start = time.perf_counter()
        model = self._loaded()
        return {"device": str(model.device), "seconds": time.perf_counter() - start}

    def _meta(self, start: float) -> dict:

        device = self.model.device
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        return {"seconds": time.perf_counter() - start, "device": str(device), "peak": peak}

    def _reset_peak(self) -> None:

        if self.model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.model.device)

    @ray.method(num_returns=2)
    def generate(self, prepared, elevation_deg: float):
        model = self._loaded()
        self._reset_peak()
        start = time.perf_counter()
        views = runner.generate_at(model, prepared, self.settings, elevation_deg, self.dtype)
        return _pack(views), self._meta(start)

    @ray.method(num_returns=2)
    def reconstruct(self, views: list, chosen: int):
        model = self._loaded()
        self._reset_peak()
        start = time.perf_counter()
        recon = runner.reconstruct_views(_unpack(views)[chosen], self.settings, model.device)
        meta = self._meta(start)
        return recon.to_cpu(), meta


_RemoteGpuWorker = ray.remote(GpuWorker)


@dataclass
class _Worker:
    """A GPU worker as the driver sees it: ``ready`` once its model is loaded (work goes only to
    ready workers, so a worker the cluster cannot place yet holds no image back), ``queued`` calls."""

    handle: Any
    queued: int = 0
    ready: bool = False
    alive: bool = True


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------
@dataclass
class _Job:
    """One image in flight: the references to its intermediate results and what the driver knows."""

    entry: ImageEntry
    started: float
    attempts: int = 1
    prepared: Any = None
    views: Any = None
    recon: Any = None
    elevation: ElevationChoice | None = None
    chosen: int = 0
    scores: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    peak: int | None = None
    device: str = "cpu"

    def add_seconds(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + seconds, 3)


@dataclass
class _Pending:
    job: _Job | None
    stage: str
    worker: _Worker | None = None
    payload: Any = None


_GPU_PRIORITY = {"reconstruct": 0, "regenerate": 1, "generate": 2}  # finish started images first


class _Pipeline:
    """The driver's state: images waiting, images in flight (``jobs``), the references it waits on
    (``pending``: the small second result of each step), GPU steps ready to hand out, the workers."""

    def __init__(
        self,
        todo: list[ImageEntry],
        inputs: Folder,
        output: Folder,
        settings: RunSettings,
        *,
        weights: str | None,
        weights_dir: str | None,
        workers: int,
        gpus_per_worker: float,
        max_in_flight: int,
        on_item: Callable[[BatchItem], None],
        on_change: Callable[[], None],
    ) -> None:
        self.waiting = list(reversed(todo))  # popped from the end: input order
        self.inputs, self.output, self.settings = inputs, output, settings
        self.weights, self.weights_dir = weights, weights_dir
        self.gpus_per_worker = gpus_per_worker
        self.max_in_flight = max_in_flight
        self.on_item, self.on_change = on_item, on_change
        self.jobs: dict[str, _Job] = {}
        self.pending: dict[Any, _Pending] = {}
        self.gpu_ready: list[tuple[int, int, _Job, str]] = []
        self._order = itertools.count()
        self.workers: list[_Worker] = []
        self.replacements_left = workers
        for _ in range(workers):
            self._start_worker()

    # -- workers ------------------------------------------------------------------------------------
    def _start_worker(self) -> None:
        handle = _RemoteGpuWorker.options(
            num_cpus=1,
            num_gpus=self.gpus_per_worker,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_TASK_RETRIES,
        ).remote(self.weights, self.weights_dir, self.settings)
        worker = _Worker(handle)
        self.workers.append(worker)
        self.pending[handle.load.remote()] = _Pending(None, "load", worker)

    def _worker_gone(self, worker: _Worker) -> None:
        if not worker.alive:
            return
        worker.alive = False
        if self.replacements_left > 0:
            self.replacements_left -= 1
            self._start_worker()

    def shutdown(self) -> None:
        for ref, p in self.pending.items():
            if p.worker is None:
                ray.cancel(ref, force=True)
        for worker in self.workers:
            ray.kill(worker.handle, no_restart=True)

    # -- moving images along -------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self.jobs)

    def _admit(self) -> None:
        while self.waiting and len(self.jobs) < self.max_in_flight:
            entry = self.waiting.pop()
            job = _Job(entry, time.perf_counter())
            self.jobs[entry.name] = job
            self._start(job)

    def _start(self, job: _Job) -> None:
        prepared, meta = _preprocess.remote(self.inputs, job.entry, self.settings, self.weights_dir)
        self.pending[meta] = _Pending(job, "preprocess", payload=prepared)

    def _cpu(self, job: _Job, stage: str, ref) -> None:
        self.pending[ref] = _Pending(job, stage)

    def _gpu(self, job: _Job, stage: str) -> None:
        heapq.heappush(self.gpu_ready, (_GPU_PRIORITY[stage], next(self._order), job, stage))

    def _dispatch(self) -> None:
        while self.gpu_ready:
            free = [w for w in self.workers if w.alive and w.ready and w.queued < GPU_QUEUE_DEPTH]
            if not free:
                return
            worker = min(free, key=lambda w: w.queued)
            _, _, job, stage = heapq.heappop(self.gpu_ready)
            if stage == "reconstruct":
                payload, meta = worker.handle.reconstruct.remote(job.views, job.chosen)
            else:
                elevation = (
                    job.elevation.elevation_deg
                    if stage == "regenerate"
                    else runner.first_elevation(self.settings)
                )
                payload, meta = worker.handle.generate.remote(job.prepared, elevation)
            worker.queued += 1
            self.pending[meta] = _Pending(job, stage, worker, payload)

    def _after_views(self, job: _Job) -> None:
        if self.settings.generation.samples > 1:
            self._cpu(job, "rank", _rank.remote(job.views))
        else:
            self._gpu(job, "reconstruct")

    def _advance(self, p: _Pending, meta: dict) -> None:
        job, stage = p.job, p.stage
        assert job is not None
        if stage == "preprocess":
            job.prepared = p.payload
            job.add_seconds("preprocess", meta["seconds"])
            self._gpu(job, "generate")
        elif stage in ("generate", "regenerate"):
            job.views = p.payload
            self._gpu_done(job, "generate", meta)
            if stage == "generate" and self.settings.elevation_deg is None:
                self._cpu(job, "elevation", _choose_elevation.remote(job.prepared, job.views, self.settings))
            else:
                if job.elevation is None:
                    job.elevation = runner.choose_elevation(job.prepared, [], self.settings)
                self._after_views(job)
        elif stage == "elevation":
            job.elevation = meta["choice"]
            job.add_seconds("elevation", meta["seconds"])
            if job.elevation.regenerate:
                self._gpu(job, "regenerate")
            else:
                self._after_views(job)
        elif stage == "rank":
            job.chosen, job.scores = meta["chosen"], meta["scores"]
            job.add_seconds("rank_samples", meta["seconds"])
            self._gpu(job, "reconstruct")
        elif stage == "reconstruct":
            job.recon = p.payload
            self._gpu_done(job, "reconstruct", meta)
            record = {
                "stage_seconds": dict(job.seconds),
                "chosen": job.chosen,
                "scores": job.scores,
                "elevation": job.elevation.record,
                "device": job.device,
                "peak": job.peak,
            }
            ref = _export.remote(
                self.output, job.entry, self.settings, job.prepared, job.views, job.recon, record
            )
            self._cpu(job, "export", ref)
        elif stage == "export":
            self._finish(job, "done")

    def _gpu_done(self, job: _Job, stage: str, meta: dict) -> None:
        job.add_seconds(stage, meta["seconds"])
        job.device = meta["device"]
        if meta["peak"] is not None:
            job.peak = max(job.peak or 0, meta["peak"])

    def _finish(self, job: _Job, status: str, error: str | None = None, kind: str | None = None) -> None:
        self.jobs.pop(job.entry.name, None)
        self.on_item(
            BatchItem(
                job.entry.name,
                status,
                self.output.child(job.entry.out_name),
                round(time.perf_counter() - job.started, 2),
                error,
                kind,
                job.entry.mtime,
            )
        )

    def _failed(self, p: _Pending, exc: BaseException) -> None:
        kind, message = _classify(exc)
        if p.worker is not None and isinstance(exc, ActorDiedError):
            self._worker_gone(p.worker)
        if p.job is None:  # a worker's model load
            if kind == "input":
                raise exc.cause if isinstance(exc, RayTaskError) else exc  # weights missing: stop
            ray.kill(p.worker.handle, no_restart=True)  # it cannot work: replace it (bounded)
            self._worker_gone(p.worker)
            return
        job = p.job
        if kind == "system" and job.attempts < IMAGE_ATTEMPTS:
            job.attempts += 1
            fresh = _Job(job.entry, job.started, job.attempts)
            self.jobs[job.entry.name] = fresh
            self._start(fresh)
            return
        if kind == "system":
            message = f"gave up after {job.attempts} attempts: {message}"
        self._finish(job, "failed", message, kind)

    def _give_up(self) -> None:
        """Every worker died and no replacement is left: what needs one fails (the CPU steps that
        are running finish first, then fail here when they reach their next GPU step)."""
        message = "gave up: every GPU worker died"
        now = time.perf_counter()
        for _, _, job, _ in self.gpu_ready:
            self._finish(job, "failed", message, "system")
        self.gpu_ready.clear()
        while self.waiting:
            self._finish(_Job(self.waiting.pop(), now), "failed", message, "system")

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        while self.waiting or self.jobs:
            if not any(w.alive for w in self.workers):
                self._give_up()
            self._admit()
            self._dispatch()
            if not self.pending:
                if self.jobs or self.waiting:  # every image in flight waits for a step nobody runs
                    raise RuntimeError(f"batch driver stalled with {len(self.jobs)} images in flight")
                continue
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            for ref in ready:
                p = self.pending.pop(ref)
                if p.worker is not None and p.stage != "load":
                    p.worker.queued -= 1
                try:
                    meta = ray.get(ref)
                except RayError as exc:
                    self._failed(p, exc)
                    continue
                if p.stage == "load":
                    p.worker.ready = True
                else:
                    self._advance(p, meta)
            self.on_change()


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------
class _Session:
    """Connect to Ray unless the caller already did; disconnect only what we connected."""

    def __init__(self, address: str | None, log_to_driver: bool) -> None:
        self.address, self.log_to_driver = address, log_to_driver
        self.owned = False

    def __enter__(self) -> _Session:
        if ray.is_initialized():
            return self
        try:
            ray.init(address=self.address, log_to_driver=self.log_to_driver)
        except ConnectionError as exc:
            raise UserError(f"cannot connect to the Ray cluster at {self.address}: {_one_line(exc)}") from exc
        self.owned = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self.owned:
            ray.shutdown()


def _size(options: RayOptions) -> tuple[int, float]:
    """Workers and GPUs per worker for the connected cluster, refusing what cannot be placed."""
    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0.0)), float(resources.get("CPU", 0.0))
    per = options.gpus_per_worker
    if per is None:
        per = 1.0 if gpus >= 1.0 else 0.0
    if per < 0:
        raise UserError(f"--gpus-per-worker must be >= 0, got {per:g}")
    if per > gpus:
        raise UserError(
            f"the Ray cluster has {gpus:g} GPUs: --gpus-per-worker {per:g} cannot be placed "
            "(--gpus-per-worker 0 runs on CPUs)"
        )
    workers = options.workers
    if workers is None:
        workers = int(gpus // per) if per > 0 else 1
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if cpus < workers + 1:
        raise UserError(
            f"the Ray cluster has {cpus:g} CPUs: {workers} workers take one each and the CPU steps need "
            "at least one more (fewer --workers)"
        )
    return workers, per


def _previous_items(output: Folder) -> dict[str, BatchItem]:
    record = output.read_json("batch.json") or {}
    known = {f.name for f in BatchItem.__dataclass_fields__.values()}
    items = {}
    for raw in record.get("items", []):
        if isinstance(raw, dict) and {"image", "status", "out_dir"} <= raw.keys():
            items[raw["image"]] = BatchItem(**{k: v for k, v in raw.items() if k in known})
    return items


def _plan(images: list[ImageEntry], output: Folder) -> tuple[dict[str, BatchItem], list[ImageEntry]]:
    """What an earlier run settled (finished results newer than their image; unchanged images that
    failed for their own reason) and what is left to do."""
    previous = _previous_items(output)
    items: dict[str, BatchItem] = {}
    todo: list[ImageEntry] = []
    for entry in images:
        finished = output.marker_mtime(entry.out_name)
        old = previous.get(entry.name)
        if finished is not None and (entry.mtime is None or finished >= entry.mtime - MTIME_SLACK_S):
            items[entry.name] = BatchItem(
                entry.name, "skipped", output.child(entry.out_name), image_mtime=entry.mtime
            )
        elif (
            old is not None
            and old.status == "failed"
            and old.error_kind == "input"
            and entry.mtime is not None
            and old.image_mtime == entry.mtime
        ):
            items[entry.name] = old
        else:
            todo.append(entry)
    return items, todo


def _refuse_unwritable(
    todo: list[ImageEntry], output: Folder, settings: RunSettings, items: dict[str, BatchItem]
) -> list[ImageEntry]:
    """The images of ``todo`` whose result folder may be written; the others are recorded as failed."""
    planned = runner.run_output_names(settings)
    left = []
    for entry in todo:
        try:
            output.check_result(entry.out_name, planned)
        except UserError as exc:
            items[entry.name] = BatchItem(
                entry.name,
                "failed",
                output.child(entry.out_name),
                error=str(exc),
                error_kind="output",
                image_mtime=entry.mtime,
            )
        else:
            left.append(entry)
    return left


def run_batch_ray(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: RunSettings | None = None,
    options: RayOptions | None = None,
    *,
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> list[BatchItem]:
    """``sd3d run`` for every image of ``in_dir`` into ``out_dir/<name>/`` on a Ray cluster (the names
    of :func:`sd3d.workflows.run.batch_output_names`, as in the local engine).

    ``in_dir`` / ``out_dir``: local (shared by every node) folders or fsspec URLs. Resumable like
    the local batch: finished results newer than their image are skipped, and so is an unchanged
    image that failed for its own reason before. ``out_dir/batch.json`` lists every image's outcome
    (rewritten while the batch runs); on Ctrl-C it is written with the unfinished images marked
    'interrupted' and the workers are stopped. With nothing left to do, Ray is not started.
    A local ``out_dir`` follows the output-folder policy of the local engine (``overwrite``: see
    :func:`sd3d.core.io.check_output_dir`); an image whose result folder may not be written fails
    before any work (``error_kind`` 'output', checked again by the next run).
    """
    settings = (settings or RunSettings()).check()
    options = options or RayOptions()
    inputs, output = open_folder(in_dir), open_folder(out_dir, overwrite)
    images = inputs.list_images()
    if not images:
        raise UserError(f"no images (jpg, png, webp) in {in_dir}")
    names = runner.batch_output_names([e.name for e in images])
    images = [replace(e, folder=name) for e, name in zip(images, names, strict=True)]
    output.prepare_output()
    items, todo = _plan(images, output)
    todo = _refuse_unwritable(todo, output, settings, items)
    if todo and options.address is None and not ray.is_initialized():
        weights_path(weights, weights_dir)  # this machine runs the workers: fail before any work

    def save() -> None:
        ordered = [asdict(items[e.name]) for e in images if e.name in items]
        output.write_json("batch.json", {"input": str(in_dir), "engine": "ray", "items": ordered})

    progress = resolve(progress)
    with _Session(options.address, log_to_driver=progress.enabled) if todo else contextlib.nullcontext():
        size = _size(options) if todo else (0, 0.0)
        for entry in todo:  # what killed attempts of an earlier run left behind
            output.clean_stale(entry.out_name)
        try:
            with progress.task("batch (ray)", len(images)) as advance:
                advance(len(items), info="")
                if todo:
                    run = _Run(items, advance, save)
                    pipeline = _Pipeline(
                        todo,
                        inputs,
                        output,
                        settings,
                        weights=str(weights) if weights is not None else None,
                        weights_dir=str(weights_dir) if weights_dir is not None else None,
                        workers=size[0],
                        gpus_per_worker=size[1],
                        max_in_flight=max(1, options.max_in_flight or 4 * size[0]),
                        on_item=run.on_item,
                        on_change=lambda: run.on_change(pipeline.running),
                    )
                    try:
                        pipeline.run()
                    except KeyboardInterrupt:
                        for entry in todo:
                            if entry.name not in items:
                                items[entry.name] = BatchItem(
                                    entry.name,
                                    "interrupted",
                                    output.child(entry.out_name),
                                    image_mtime=entry.mtime,
                                )
                        raise
                    finally:
                        pipeline.shutdown()
        finally:
            save()
    return [items[e.name] for e in images]


class _Run:
    """The driver's reporting: the items so far, the progress line and throttled ``batch.json`` saves."""

    def __init__(self, items: dict[str, BatchItem], advance: Callable, save: Callable[[], None]) -> None:
        self.items, self.advance, self.save = items, advance, save
        self.started = time.perf_counter()
        self.saved = 0.0
        self.info = ""

    def on_item(self, item: BatchItem) -> None:
        self.items[item.image] = item
        self.advance(1)

    def on_change(self, running: int) -> None:
        done = sum(1 for i in self.items.values() if i.status == "done")
        failed = sum(1 for i in self.items.values() if i.status == "failed")
        rate = done / max(time.perf_counter() - self.started, 1e-9) * 3600.0
        info = f"{done} done, {failed} failed, {running} running, {rate:.0f} img/h"
        if info != self.info:
            self.info = info
            self.advance(0, info=info)
        if time.perf_counter() - self.saved > SAVE_EVERY_S:
            self.saved = time.perf_counter()
            self.save()
