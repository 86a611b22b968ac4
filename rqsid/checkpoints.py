"""Named points inside the long stages, where a test stops a real process at a known place (no sleeps).

With RQSID_CHECKPOINTS=<folder> in the environment, reaching point P writes <folder>/P.reached (holding
this pid); with P in RQSID_PAUSE_AT (comma-separated) as well, the process then waits there until
<folder>/P.go exists, so a test can SIGKILL it in the middle of that stage, or let it go on. Each point sits where the stage's
artifact is half-built (its staging folder filled, its manifest not yet written). Without
RQSID_CHECKPOINTS a checkpoint costs one environment lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# ready: an orchestration command has its imports and config, and has not yet checked its input, taken a
# lock or joined a server; catalog: a flow's catalog stored, its runs open; embed, fit, publish: an artifact's files written, its
# manifest not; current: an index version renamed in, `current` not moved yet; train: the generator
# trained, not evaluated; register: an MLflow model version created, not yet recorded in the generator's
# manifest.
POINTS = ("ready", "catalog", "embed", "fit", "publish", "current", "train", "register")
POLL_S = 0.05


def reach(point: str) -> None:
    folder = os.environ.get("RQSID_CHECKPOINTS")
    if not folder:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{point}.{os.getpid()}"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, folder / f"{point}.reached")
    if point in os.environ.get("RQSID_PAUSE_AT", "").split(","):
        while not (folder / f"{point}.go").exists():
            time.sleep(POLL_S)  # held here on purpose until the test lets go (or kills us)
