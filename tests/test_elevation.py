"""Elevation estimation: the normalised comparison, the hull, a synthetic scene and the shared objects."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from recon.hull import hull_mesh, visual_hull
from recon.metrics import winding_numbers_grid
from recon.raster import render_silhouettes
from sd3d.core import cameras as cam
from sd3d.core.io import ViewSet
from sd3d.workflows import elevation as el

OBJECTS = ("spot", "bob", "duck", "banana")


def _disk_mask(size, cx, cy, rx, ry):
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0).astype(np.float32)


def test_normalised_frame_removes_scale_and_position():
    small = _disk_mask(256, 90, 100, 40, 25)
    big = _disk_mask(512, 300, 200, 120, 75)  # 3x larger, elsewhere
    a, b = el.normalized_frame(small), el.normalized_frame(big)
    assert el.silhouette_score(a, b) > 0.97
    # the frame keeps the aspect ratio: a taller ellipse of the same width does not match
    taller = el.normalized_frame(_disk_mask(256, 90, 100, 40, 35))
    assert el.silhouette_score(taller, a) < 0.9


def test_score_penalises_missed_input_more_than_hull_excess():
    target = el.normalized_frame(_disk_mask(256, 128, 128, 60, 40))
    larger = el.normalized_frame(_disk_mask(256, 128, 128, 60, 52))  # hull-like over-estimate
    smaller = el.normalized_frame(_disk_mask(256, 128, 128, 60, 28))  # misses part of the input
    assert el.silhouette_score(target, target) == 1.0
    assert el.silhouette_score(larger, target) > el.silhouette_score(smaller, target)


def _toy_object() -> trimesh.Trimesh:
    """An asymmetric object: a box with a tower on one side and a ball on the other."""
    parts = [
        trimesh.creation.box(extents=(0.5, 0.7, 0.25)),
        trimesh.creation.box(
            extents=(0.15, 0.15, 0.4), transform=trimesh.transformations.translation_matrix([0.1, 0.2, 0.3])
        ),
        trimesh.creation.icosphere(2, radius=0.15).apply_translation([-0.1, -0.25, 0.2]),
    ]
    return trimesh.util.concatenate(parts)


def test_visual_hull_contains_the_object_and_reproduces_the_views():
    obj = _toy_object()
    cams = cam.target_cameras(128)
    masks = render_silhouettes(obj.vertices, obj.faces, cams)
    occ = visual_hull(masks, cams, 64).numpy()
    inside = np.abs(winding_numbers_grid(obj.vertices, obj.faces, resolution=64, bound=0.6)) >= 0.5
    assert occ[inside].mean() > 0.99  # the hull contains the object (up to voxels on the surface)
    v, f = hull_mesh(occ)
    sil = render_silhouettes(v, f, cams[:1])[0]
    assert (np.minimum(sil, masks[0]).sum() / np.maximum(sil, masks[0]).sum()) > 0.95


@pytest.mark.parametrize("true_elevation", [-5.0, 12.0, 38.0])  # measured errors: 2.0, 4.4, 1.1 deg
def test_estimate_on_a_synthetic_object(true_elevation):
    obj = _toy_object()
    cams = cam.target_cameras(256)
    masks = render_silhouettes(obj.vertices, obj.faces, cams, supersample=2)
    views = ViewSet(images=np.ones((16, 256, 256, 3), np.float32), cameras=cams, alphas=masks)
    photo_camera = cam.orbit_camera(true_elevation, 0.0, 1.5, 256)
    photo = render_silhouettes(obj.vertices, obj.faces, [photo_camera], supersample=2)[0]
    est = el.estimate_elevation(photo, views)
    # a box-like object is weakly constrained by silhouettes between 5 and 15 deg: the bar is +-5
    assert abs(est.elevation_deg - true_elevation) <= 5.0, est.curve
    assert est.score == max(s for _, s in est.curve)


def _shared_cases(shared_dir):
    """The 16 cases of the bar: each shared object's GT views and its inputs at 0/15/30/45 deg."""
    from sd3d.core.io import read_views
    from sd3d.preprocess import prepare_input

    for name in OBJECTS:
        folder = shared_dir / "data" / "objects" / name / "views"
        views = read_views(folder)
        for true in (0, 15, 30, 45):
            prepared = prepare_input(folder / f"input-e{true}.png", crop_size=200, background="alpha")
            yield f"{name}/e{true}", true, prepared.rgba[..., 3] / 255.0, views


def test_gt_views_and_inputs_of_the_shared_objects(shared_dir):
    """The accuracy bar: within +-5 deg in >= 14 of the 16 cases."""
    errors = {
        case: el.estimate_elevation(mask, views).elevation_deg - true
        for case, true, mask, views in _shared_cases(shared_dir)
    }
    assert sum(abs(e) <= 5.0 for e in errors.values()) >= 14, errors


def _timed_estimate(mask, views) -> dict[str, float]:
    """One estimate's CPU cost for the calling thread: total, user and kernel seconds, page faults.

    Thread time, not wall clock: a wall-clock bound would measure whatever else the 2-core CI
    machine runs at the same moment (the parallel test worker), and the process's CPU time would
    also count background threads that earlier tests of the same worker left behind. torch runs
    single-threaded here, inline in this thread, so the thread's time is the estimate's."""
    import resource
    import time

    r0, t0 = resource.getrusage(resource.RUSAGE_THREAD), time.thread_time()
    el.estimate_elevation(mask, views)
    t1, r1 = time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD)
    return {
        "s": t1 - t0,
        "user_s": r1.ru_utime - r0.ru_utime,
        "kernel_s": r1.ru_stime - r0.ru_stime,
        "minor_faults": r1.ru_minflt - r0.ru_minflt,
        "major_faults": r1.ru_majflt - r0.ru_majflt,
    }


def test_each_estimate_of_the_shared_objects_takes_under_2_s_of_cpu(shared_dir):
    """The speed bar: each of the 16 estimates under 2 s of CPU (about 0.2 s on a quiet core).

    Timed as benchmarks time (``timeit`` keeps the minimum): the other test worker and the machine
    add noise to one timing but never make the estimate itself faster, so a case over the bar is
    timed again after pauses of 1, 2 and 4 s and the fastest of its timings counts. The bar itself is
    unchanged; a failure prints every timing with its kernel time and page faults.

    Thread time is the estimate's own cost only while torch runs single-threaded: with two intra-op
    threads on the 2-core CI machine, the calling thread spin-waits for a helper the other worker
    has descheduled, and CI read 3.8-6 s for estimates of 0.25 s (a test had imported rembg, whose
    numba pool moved torch to 2 threads; conftest now fails such a leak where it happens)."""
    import time

    import torch

    assert torch.get_num_threads() == 1, "the thread-time bar needs single-threaded torch (conftest sets it)"

    best, attempts = {}, {}
    for case, _true, mask, views in _shared_cases(shared_dir):
        runs = [_timed_estimate(mask, views)]
        for pause in (1.0, 2.0, 4.0):
            if min(r["s"] for r in runs) < 2.0:
                break
            time.sleep(pause)
            runs.append(_timed_estimate(mask, views))
        best[case] = min(r["s"] for r in runs)
        attempts[case] = runs
    slow = {case: attempts[case] for case, s in best.items() if s >= 2.0}
    assert not slow, f"over 2 s of CPU on every attempt: {slow}; best of each case: {best}"


def test_cli_prints_the_estimate_and_the_curve(shared_dir, run_cli):
    folder = shared_dir / "data" / "objects" / "duck" / "views"
    res = run_cli("-q", "elevation", folder / "input-e15.png", "--views", folder, "--json")
    assert res.code == 0, res
    out = json.loads(res.out)
    assert abs(out["elevation_deg"] - 15.0) <= 5.0
    assert len(out["curve"]) >= 17 and {"elevation_deg", "score"} <= set(out["curve"][0])
    res = run_cli("-q", "elevation", folder / "input-e15.png", "--views", folder)
    assert res.code == 0 and res.out.startswith("elevation: ") and res.out.strip().endswith(")")


def test_cli_user_errors_are_one_line(shared_dir, tmp_path, run_cli):
    photo = shared_dir / "data" / "objects" / "duck" / "views" / "input-e15.png"
    res = run_cli("elevation", photo, "--weights-dir", tmp_path / "none")  # no --views: needs the generator
    assert res.code == 2 and "sd3d weights download syncdreamer" in res.err
    assert len(res.err.strip().splitlines()) == 1
    res = run_cli("elevation", photo, "--views", tmp_path)
    assert res.code == 2 and "missing" in res.err
