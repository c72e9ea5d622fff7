"""``sd3d`` with one extra registry entry, for CLI tests that must run in a fresh process.

huggingface_hub reads ``HF_HOME``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` when it is imported, so the
tests that check those variables run the command in a new interpreter; the registry patch a test
would do in-process is carried by ``SD3D_TEST_WEIGHTS_ENTRY`` (a JSON object of WeightsEntry fields,
``hub`` as an object of HubFile fields). Usage: ``python -m tests.support.extra_weights ARGS...``.
"""

from __future__ import annotations

import json
import os
import sys
from types import MappingProxyType

from sd3d.weights import registry


def install() -> None:
    """Add the entry described by ``SD3D_TEST_WEIGHTS_ENTRY`` to the registry (no-op when unset)."""
    spec = os.environ.get("SD3D_TEST_WEIGHTS_ENTRY")
    if not spec:
        return
    fields = json.loads(spec)
    hub = fields.pop("hub", None)
    entry = registry.WeightsEntry(**fields, hub=registry.HubFile(**hub) if hub else None)
    registry.REGISTRY = MappingProxyType({**registry.REGISTRY, entry.name: entry})


if __name__ == "__main__":
    install()
    from cli.app import main

    sys.exit(main(sys.argv[1:]))
