"""Options that several commands share, defined once so that they read the same in every command.

Use them as parameter types: ``def build(set_: Overrides = None, address: RayAddress = None)``. A repeatable
option left out arrives as ``None``.
"""

from __future__ import annotations

from typing import Annotated

import typer

Overrides = Annotated[list[str] | None, typer.Option(
    "--set", metavar="FIELD=VALUE",
    help="Override one config field; repeat it for more, e.g. `--set optim.lr=3e-4 --set run.workers=4`. The "
         "value is read as YAML: `3e-4` is a number, `[256, 512]` a list, `null` nothing; a number picks a list "
         "item (`sources.0.uri=s3://bucket/photos/`).")]

RayAddress = Annotated[str | None, typer.Option(
    "--address", metavar="ADDRESS",
    help="Ray cluster address (default: $RAY_ADDRESS, else a private local Ray).")]

JobsAddress = Annotated[str | None, typer.Option(
    "--address", metavar="URL", envvar="RAY_API_SERVER_ADDRESS",
    help="The cluster's Ray dashboard (Jobs API) URL, e.g. http://127.0.0.1:8265 (the other commands' --address "
         "is the Ray client address, ray://…).")]
