"""``crewflow serve --demo``: seed the demo workspace at start-up and say how to log in."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from crewflow.domain.errors import Conflict

if TYPE_CHECKING:
    from crewflow.bootstrap import ApiContainer

__all__ = ["DEMO_FLOW_FILE", "seed_demo_workspace"]

DEMO_FLOW_FILE = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


async def seed_demo_workspace(container: ApiContainer) -> None:
    import yaml

    from crewflow.application.demo import DEMO_EMAIL, seed_demo

    document = yaml.safe_load(DEMO_FLOW_FILE.read_text(encoding="utf-8"))
    secret_file = Path(container.settings.data_dir) / "demo-password"
    try:
        seed = await seed_demo(container.provisioner, container.uow_factory, container.hasher, container.clock,
                               document)
    except Conflict:  # another server worker seeded it at the same moment
        return
    if seed.password is not None:
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(seed.password)
    password = secret_file.read_text().strip() if secret_file.exists() else "(set when the demo was created)"
    print(f"crewflow demo workspace: log in as {DEMO_EMAIL} / {password} — flow '{seed.flow_id}' runs offline",
          file=sys.stderr)
