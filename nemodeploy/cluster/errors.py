"""The one error type of cluster bring-up: a one-line message that names the node and the fix."""

from __future__ import annotations


class ClusterError(Exception):
    """Bring-up, teardown or inspection failed; `str()` is meant to be shown to the user as is."""

    def __init__(self, message: str, node: str | None = None):
        self.node = node
        super().__init__(f"node {node}: {message}" if node else message)
