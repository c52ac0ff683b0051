"""Where nemodeploy keeps what outlives a command: models it writes, deployments, cluster state."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$NEMODEPLOY_CACHE, else $XDG_CACHE_HOME/nemodeploy, else ~/.cache/nemodeploy."""
    if os.environ.get("NEMODEPLOY_CACHE"):
        return Path(os.environ["NEMODEPLOY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nemodeploy"
