"""Summarise a `make batch` output folder: which images finished, which failed (exit 1 if any failed)."""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: str, inp: str) -> int:
    out_dir, in_dir = Path(out), Path(inp)
    exts = {".jpg", ".jpeg", ".png", ".webp"}
    images = sorted(p for p in in_dir.iterdir() if p.suffix.lower() in exts) if in_dir.is_dir() else []
    ok, failed, missing = [], [], []
    for img in images:
        if (out_dir / "logs" / f"{img.stem}.failed").exists():
            failed.append(img.name)
        elif (out_dir / img.stem / "report.json").exists():
            ok.append(img.name)
        else:
            missing.append(img.name)
    print(
        f"batch summary: {len(ok)} ok, {len(failed)} failed, {len(missing)} not run, of {len(images)} images"
    )
    for name in failed:
        print(f"  FAILED  {name}  (log: {out_dir / 'logs' / (Path(name).stem + '.log')})")
    for name in missing:
        print(f"  NOT RUN {name}")
    return 0 if not failed and not missing else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
