"""The Triton hash grid (recon/kernels/hash_grid.py) against the PyTorch HashGrid with the same table.

Two ways to run the kernels: on CUDA (also the standard preset's grid at a realistic batch; skipped
without a GPU), and on the CPU in Triton's interpreter (small grids, in a subprocess because
``TRITON_INTERPRET=1`` must be set before Triton is imported; skipped where Triton is not installed,
as in CI). The measurements are made by tests/support/triton_hash_grid_cases.py, which also derives
the bounds:

* features and Jacobian: both sides form the same corners and the same float32 weights (bit for bit:
  the same operations, fp fusion off in the kernels) and differ only in the order of an 8-term sum,
  so ``|kernel - torch| <= 2 gamma_8 sum_c |w_c| |v_c|`` (``gamma_9`` and the level's scale for the
  Jacobian), ``gamma_n = n 2^-24 / (1 - n 2^-24)``. In the interpreter the sums happen to run in
  PyTorch's order and the outputs are identical; on a GPU they may differ within the bound;
* table gradient, per row reached by K contributions: ``2 gamma_{K+3}`` times the sum of the
  contributions' absolute terms (inner products of length <= 4, then a sum in any order: PyTorch's
  ``index_add_`` or the kernel's atomic adds);
* end to end (an SDFNetwork forward and one backward of an sdf + feature + eikonal loss): both
  float32 runs against a float64 copy; the kernel's relative L2 error at most twice PyTorch's (two
  float32 evaluations of one expression in different summation orders have errors of one size)
  plus 2^-23 (two roundings of the result, so that a lucky exact PyTorch value cannot fail it).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from support.triton_hash_grid_cases import CUDA_CASES, INTERPRETER_CASES, end_to_end, measure
from support.triton_interpreter import run_interpreted

import recon.kernels as kernels
from recon.encoding import BACKENDS, KERNELS, HashGrid, HashGridConfig, make_encoding, resolve_backend
from recon.fields import FieldConfig
from recon.presets import PRESETS
from sd3d.core.errors import MissingDependencyError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "support" / "triton_hash_grid_cases.py"
CUDA = torch.cuda.is_available()
TRITON = importlib.util.find_spec("triton") is not None
NO_CUDA = "needs a CUDA device (the kernels' compiled path; the interpreter tests cover the CPU)"
NO_TRITON = "triton is not installed (CPU-only torch, as in CI): the interpreter checks need it"
SMALL = HashGridConfig(n_levels=4, log2_hashmap_size=8, base_resolution=4, max_resolution=32)


def check(result: dict) -> None:
    assert result["shapes_ok"] and result["inactive_zero"], result
    assert result["plain_equals_with_jacobian"], result  # forward() and forward_with_jacobian() agree
    for key in ("features", "jacobian", "grad_both", "grad_features", "grad_jacobian"):
        r = result[key]
        assert r["finite"] and r["violations"] == 0 and r["worst"] <= 1.0, (key, r)
    for key in ("grad_both", "grad_features", "grad_jacobian"):
        assert result[key]["nonzero"], (key, result[key])  # the comparison compared something


def check_end_to_end(result: dict) -> None:
    assert result["kernel"] == "triton"  # built through FieldConfig(encoding_backend="triton")
    q = result["quantities"]
    assert {"sdf", "feature", "grad", "d_encoding.table", "d_layers.0.weight"} <= set(q), sorted(q)
    for key, err in q.items():
        assert err["triton"] <= 2 * err["torch"] + 2**-23, (key, err)


# --------------------------------------------------------------------------------------------------
# CUDA: the compiled kernels
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("case", CUDA_CASES + INTERPRETER_CASES, ids=lambda c: c.name)
def test_kernel_on_cuda(case):
    if kernels.hash_grid_module() is None:
        pytest.skip(f"triton not importable: {kernels.unavailable_reason(torch.device('cuda'))}")
    check(measure(case, torch.device("cuda")))


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_sdf_network_end_to_end_on_cuda():
    if kernels.hash_grid_module() is None:
        pytest.skip(f"triton not importable: {kernels.unavailable_reason(torch.device('cuda'))}")
    check_end_to_end(end_to_end(torch.device("cuda")))


# --------------------------------------------------------------------------------------------------
# CPU: Triton's interpreter (a subprocess)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interpreted() -> dict:
    if not TRITON:
        pytest.skip(NO_TRITON)
    return run_interpreted(SCRIPT, *[case.name for case in INTERPRETER_CASES], "--e2e")


@pytest.mark.parametrize("case", INTERPRETER_CASES, ids=lambda c: c.name)
def test_kernel_in_the_interpreter(interpreted, case):
    check(interpreted[case.name])


def test_interpreter_cases_cover_both_level_kinds(interpreted):
    """Grids with dense and hashed levels, only hashed, only dense; F = 1, 2, 4, 8."""
    kinds = {
        (interpreted[c.name]["n_dense"] > 0, interpreted[c.name]["n_dense"] < c.levels)
        for c in INTERPRETER_CASES
    }
    assert kinds == {(True, True), (False, True), (True, False)}
    assert {c.features for c in INTERPRETER_CASES} == {1, 2, 4, 8}
    assert any(c.active < c.levels for c in INTERPRETER_CASES)
    assert all(c.n % c.block for c in INTERPRETER_CASES)  # a partial last block everywhere


def test_sdf_network_end_to_end_in_the_interpreter(interpreted):
    check_end_to_end(interpreted["e2e"])


# --------------------------------------------------------------------------------------------------
# the switch, on the CPU (no Triton needed)
# --------------------------------------------------------------------------------------------------
def test_pytorch_grid_stays_the_default():
    assert FieldConfig().encoding_backend == "torch"
    assert all(p.field.encoding_backend == "torch" for p in PRESETS.values())
    assert HashGrid(SMALL).kernel == "torch"
    assert make_encoding(SMALL, torch.device("cpu")).kernel == "torch"
    assert "triton" in BACKENDS and KERNELS == ("torch", "triton")


def test_unknown_kernel_or_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown hash-grid kernel"):
        HashGrid(SMALL, kernel="cuda")
    with pytest.raises(ValueError, match="unknown hash-grid backend"):
        make_encoding(SMALL, torch.device("cpu"), backend="fused")


def test_triton_on_cpu_without_the_interpreter_is_a_missing_dependency(monkeypatch):
    """Triton importable but not interpreting: a CPU device cannot run it, at build and at call."""
    monkeypatch.setattr(kernels, "_load_hash_grid", lambda: (types.SimpleNamespace(INTERPRETED=False), None))
    with pytest.raises(MissingDependencyError, match="runs on CUDA devices, not cpu.*TRITON_INTERPRET"):
        make_encoding(SMALL, torch.device("cpu"), backend="triton")
    grid = HashGrid(SMALL, kernel="triton")
    u = torch.rand(5, 3)
    with pytest.raises(MissingDependencyError, match="Triton hash grid is unavailable"):
        grid(u)
    with pytest.raises(MissingDependencyError, match="Triton hash grid is unavailable"):
        grid.forward_with_jacobian(u)
    needs_grad = torch.rand(5, 3, requires_grad=True)
    with pytest.raises(ValueError, match="does not differentiate"):
        grid.forward_with_jacobian(needs_grad)
    out = grid(needs_grad)  # positions that need a gradient take the differentiable reference, as before
    assert out.requires_grad and torch.equal(out, grid.reference_forward(needs_grad))


def test_auto_takes_the_fastest_grid_that_runs_on_the_device(monkeypatch):
    from recon import encoding

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [encoding.resolve_backend(b, cpu) for b in ("torch", "triton", "tcnn", "auto")] == [
        "torch",
        "triton",
        "tcnn",
        "torch",
    ]
    for tcnn, triton_reason, expected in [
        (True, None, "triton"),  # tinycudann only by name (never run on a GPU here)
        (False, None, "triton"),
        (False, "Triton is not installed", "torch"),
    ]:
        monkeypatch.setattr(encoding, "tcnn_available", lambda tcnn=tcnn: tcnn)
        monkeypatch.setattr(kernels, "unavailable_reason", lambda device, r=triton_reason: r)
        assert encoding.resolve_backend("auto", cuda) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid = make_encoding(SMALL, cpu, backend="auto")  # on CPU: the PyTorch grid, no warning
    assert grid.kernel == "torch"


def test_auto_takes_the_pytorch_grid_on_a_gpu_triton_cannot_compile_for(monkeypatch):
    """``--hash-grid auto`` is the default: on a GPU older than compute capability 7.0 (which Triton
    does not compile for; PyTorch's inductor draws the same line) it must pick the PyTorch grid, and
    ``triton`` asked for by name must say why it cannot run, rather than fail inside training."""
    if kernels.hash_grid_module() is None:
        pytest.skip(f"triton not importable: {kernels.unavailable_reason(torch.device('cpu'))}")
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    assert kernels.unavailable_reason(cuda) == (
        "Triton does not compile for this GPU (compute capability 6.1; it needs 7.0)"
    )
    assert resolve_backend("auto", cuda) == "torch"
    with pytest.raises(MissingDependencyError, match="compute capability 6.1"):
        kernels.require_hash_grid(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert kernels.unavailable_reason(cuda) is None and resolve_backend("auto", cuda) == "triton"


def test_hash_grid_setting_reaches_the_preset_and_the_command_line(run_cli, tmp_path):
    from recon.presets import HASH_GRIDS, ReconSettings
    from sd3d.core.errors import UserError

    assert HASH_GRIDS == BACKENDS
    cpu = torch.device("cpu")
    default = ReconSettings().preset(cpu).field.encoding_backend
    assert default == "auto" and resolve_backend(default, cpu) == "torch"  # Triton on CUDA, PyTorch here
    assert ReconSettings("standard", hash_grid="triton").preset(cpu).field.encoding_backend == "triton"
    with pytest.raises(UserError, match="unknown hash grid 'fused': choose from torch, triton, tcnn, auto"):
        ReconSettings(hash_grid="fused")
    views = REPO / "examples" / "spot"
    res = run_cli("reconstruct", views, "-o", tmp_path / "m.glb", "--device", "cpu", "--hash-grid", "tcnn")
    assert res.code == 2 and res.err.strip() == "error: the tcnn hash grid needs a CUDA device", res
    assert list(tmp_path.iterdir()) == []
    from cli.run import STAGE_OPTIONS, _settings  # sd3d run / batch hand it to ReconSettings too

    options = {p.name: p.default for p in STAGE_OPTIONS}
    assert _settings(**options).recon.hash_grid == "auto"
    assert _settings(**{**options, "hash_grid": "torch"}).recon.hash_grid == "torch"
    res = run_cli("run", views / "000.png", "-o", tmp_path / "out", "--hash-grid", "fused")
    assert res.code == 2 and "unknown hash grid 'fused'" in res.err and list(tmp_path.iterdir()) == []


def test_kernel_switch_keeps_parameters_and_buffers():
    torch_grid = HashGrid(SMALL, generator=torch.Generator().manual_seed(0))
    triton_grid = HashGrid(SMALL, generator=torch.Generator().manual_seed(0), kernel="triton")
    a, b = torch_grid.state_dict(), triton_grid.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recon_imports_and_reports_without_triton():
    """As on CI (no Triton): recon imports, the PyTorch grid works, the Triton backend says why not."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, recon.encoding as e, recon.fields, recon.train, recon.kernels as k\n"
        "from sd3d.core.errors import MissingDependencyError\n"
        "cfg = e.HashGridConfig(n_levels=2, log2_hashmap_size=6, base_resolution=2, max_resolution=4)\n"
        "assert k.hash_grid_module() is None\n"
        "print(k.unavailable_reason(torch.device('cuda')))\n"
        "assert e.make_encoding(cfg, torch.device('cpu'))(torch.rand(3, 3)).shape == (3, 4)\n"
        "try:\n"
        "    e.make_encoding(cfg, torch.device('cpu'), backend='triton')\n"
        "except MissingDependencyError as err:\n"
        "    print(err)\n"
    )
    # the repository first, then whatever the caller had (packages installed outside the venv)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    reason, error = res.stdout.strip().splitlines()
    assert reason.startswith("Triton is not installed")
    assert error.startswith("the Triton hash grid is unavailable: Triton is not installed")


# --------------------------------------------------------------------------------------------------
# host-side checks of the kernel module (need Triton importable, not a GPU)
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not TRITON, reason=NO_TRITON)
def test_encode_rejects_what_it_cannot_compute():
    from recon.kernels.hash_grid import encode

    grid = HashGrid(SMALL)
    bufs = (grid.scales, grid.mult, grid.rows, grid.offsets)
    u = torch.rand(4, 3)
    kw = {"n_dense": grid.n_dense, "active": 4, "with_jacobian": True}
    with pytest.raises(ValueError, match="input positions"):
        encode(grid.table, u.clone().requires_grad_(), *bufs, **kw)
    with pytest.raises(ValueError, match="float32"):
        encode(grid.table.detach().double(), u, *bufs, **kw)
    with pytest.raises(ValueError, match="power of two"):
        encode(torch.zeros(grid.table.shape[0], 3), u, *bufs, **kw)
    with pytest.raises(ValueError, match="active levels"):
        encode(grid.table, u, *bufs, **{**kw, "active": 5})


@pytest.mark.skipif(not TRITON, reason=NO_TRITON)
def test_kernels_compile_for_a_gpu_without_fused_multiply_adds():
    """The installed Triton compiles every kernel variant for sm_90 without a GPU (the interpreter
    is lax about types; the compiler is not), and the launches' ``enable_fp_fusion=False`` leaves no
    fma in the PTX: ``u * scale + 0.5`` must round twice, as PyTorch's, or cells flip at boundaries."""
    import re

    try:
        from triton import compile as triton_compile
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import ASTSource
    except ImportError as exc:  # internal API moved in another Triton version
        pytest.skip(f"Triton's ahead-of-time API is not where expected: {exc}")
    from recon.kernels import hash_grid

    int_ptrs = {"mult_ptr", "rows_ptr", "offset_ptr"}
    variants = [
        (hash_grid._forward_kernel, {"F": 2, "DENSE": dense, "WITH_JAC": True, "BLOCK": 128})
        for dense in (True, False)
    ] + [
        (
            hash_grid._backward_kernel,
            {"F": 2, "DENSE": dense, "HAS_GFEAT": True, "HAS_GJAC": True, "BLOCK": 128},
        )
        for dense in (True, False)
    ]
    for kernel, consts in variants:
        signature = {
            name: "constexpr"
            if name in consts
            else ("*i32" if name in int_ptrs else "*fp32")
            if name.endswith("_ptr")
            else "i32"
            for name in kernel.arg_names
        }
        for fusion in (False, True):
            compiled = triton_compile(
                ASTSource(kernel, signature, consts),
                target=GPUTarget("cuda", 90, 32),
                options={"enable_fp_fusion": fusion},
            )
            fmas = len(re.findall(r"\bfma\.rn\.f32", compiled.asm["ptx"]))
            assert (fmas > 0) == fusion, (kernel.__name__, consts, fusion, fmas)  # the option is what decides
