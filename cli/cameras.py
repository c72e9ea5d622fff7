"""``sd3d cameras``: write ``transforms.json`` (nerfstudio / instant-ngp) for a views folder."""

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("cameras", help="Write transforms.json (nerfstudio / instant-ngp) for a views folder.")(
        cameras
    )


def cameras(
    views: Annotated[Path, typer.Argument(help="Views folder (000.png ... 015.png [+ cameras.json]).")],
) -> None:
    from cli.common import echo
    from sd3d.core.io import write_transforms_json

    echo(str(write_transforms_json(views)))
