"""`make batch` helper: the plan (which output folder each image gets) and the final summary.

    python scripts/batch_summary.py --plan IN      # one "IMAGE|NAME" line per image, for scripts/batch.mk
    python scripts/batch_summary.py OUT IN         # summary; exit 1 if any image failed or did not run

Both use ``sd3d.workflows.run``'s image list and folder names (``sd3d batch`` uses them too), so distinct
images never share an output folder (``a.jpg`` and ``a.png`` get ``a.jpg/`` and ``a.png/``) and the
summary reads the very folders and logs the rules wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable from a clone before/without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))


def plan(inp: str) -> list[tuple[Path, str]]:
    """(image, output folder name) for every image of ``inp``, in order; empty if it is no folder."""
    from sd3d.workflows.run import batch_output_names, list_images

    in_dir = Path(inp)
    if not in_dir.is_dir():
        return []
    images = list_images(in_dir)
    return list(zip(images, batch_output_names(images), strict=True))


def summary(out: str, inp: str) -> int:
    out_dir = Path(out)
    entries = plan(inp)
    ok, failed, missing = [], [], []
    for img, name in entries:
        report = out_dir / name / "report.json"
        if (out_dir / "logs" / f"{name}.failed").exists():
            failed.append((img.name, name))
        elif report.exists() and report.stat().st_mtime >= img.stat().st_mtime:
            ok.append((img.name, name))
        else:
            missing.append((img.name, name))
    print(
        f"batch summary: {len(ok)} ok, {len(failed)} failed, {len(missing)} not run, of {len(entries)} images"
    )
    for image, name in failed:
        print(f"  FAILED  {image}  (log: {out_dir / 'logs' / (name + '.log')})")
    for image, _ in missing:
        print(f"  NOT RUN {image}")
    return 0 if not failed and not missing else 1


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--plan":
        for img, name in plan(argv[1]):
            print(f"{img}|{name}")
        return 0
    if len(argv) == 2:
        return summary(argv[0], argv[1])
    print("usage:\n" + "\n".join(__doc__.strip().splitlines()[2:4]), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
