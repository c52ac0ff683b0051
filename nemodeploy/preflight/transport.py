"""How the probe reaches a node: a local subprocess, or a command over the SSH layer (nemodeploy.cluster.ssh).

Both run an argv and return (rc, stdout, stderr). paramiko is imported only for remote nodes,
so `nemodeploy preflight local` needs nothing beyond the base dependencies.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Protocol

from nemodeploy.topology.schema import Node


class TransportError(Exception):
    """The node could not be reached or the command could not run; `str()` is one line."""


class Transport(Protocol):
    python: str

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]: ...

    def close(self) -> None: ...


class Local:
    """This machine, with this interpreter."""

    python = sys.executable

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TransportError(f"`{argv[0]}` did not finish within {timeout:.0f} s") from None
        return done.returncode, done.stdout, done.stderr

    def close(self) -> None:
        pass


# `auto`: the interpreter that will run the deployment there, the one of the node's `ray` script (as `up`
# finds it), else the first python3 on the PATH of a non-interactive SSH session. A `ray` that is a
# wrapper (a pyenv shim: `#!/usr/bin/env bash`) does not name its Python, so python3 it is.
AUTO_PYTHON = ('PY=$(sed -n "1s/^#!//p" "$(command -v ray)" 2>/dev/null); '
               'case "$PY" in *python*) ;; *) PY=python3 ;; esac; $PY')


class Remote:
    """A node over SSH; argv is quoted for the remote shell (nemodeploy.cluster.ssh.quote)."""

    def __init__(self, node: Node, index: int, python: str, known_hosts: str | None, accept_new_host_keys: bool):
        try:
            from nemodeploy.cluster import ssh
            from nemodeploy.cluster.errors import ClusterError
        except ImportError as err:
            raise TransportError(f"remote nodes need paramiko ({err.name} is missing): pip install 'nemodeploy[cluster]'") from None
        self._ssh, self._error, self.python = ssh, ClusterError, python
        target = ssh.Target(node.name, node.address, node.ssh.user, node.ssh.port, node.ssh.key, index)
        try:
            self.shell = ssh.connect(target, known_hosts, accept_new_host_keys)
        except ClusterError as err:
            raise TransportError(str(err)) from None

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        try:
            command = f"{AUTO_PYTHON} {self._ssh.quote(*argv[1:])}" if argv[0] == "auto" else self._ssh.quote(*argv)
            result = self.shell.run(command, timeout=timeout)
        except self._error as err:
            raise TransportError(str(err)) from None
        return result.rc, result.out, result.err

    def close(self) -> None:
        self.shell.close()
