"""How the probe reaches a node: a local subprocess, or one command over the SSH layer (nemodeploy.cluster.ssh).

Either way the probe is ONE long-lived process per node (`Transport.open`), spoken to in JSON
lines: a request written to its stdin, one answer line read back within a time bound. Closing
the session closes its stdin, which ends the process and the port responder it runs. paramiko is
imported only for remote nodes, so `nemodeploy preflight local` needs nothing beyond the base
dependencies.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from typing import Protocol

from nemodeploy.topology.schema import Node


class TransportError(Exception):
    """The node could not be reached or the probe could not run; `str()` is one line."""


class Session(ABC):
    """A running probe: `request` sends one JSON line and returns the one JSON line it answers.
    Subclasses move the bytes: a local process's pipes, or an SSH channel."""

    def __init__(self, what: str):
        self.what = what
        self._buffer = b""

    def request(self, message: dict, timeout: float) -> dict:
        self._send((json.dumps(message) + "\n").encode())
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"{self.what} did not answer within {timeout:.0f} s")
            chunk = self._recv(left)
            if chunk == b"":
                tail = self._stderr().strip().splitlines()[-1:] or ["it exited without an answer"]
                raise TransportError(f"{self.what} failed: {tail[0]}")
            self._buffer += chunk or b""
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            raise TransportError(f"{self.what} printed no result: {line[-200:]!r}") from None

    @abstractmethod
    def _send(self, data: bytes) -> None: ...

    @abstractmethod
    def _recv(self, timeout: float) -> bytes | None:
        """Bytes read; None when nothing came within `timeout`; b"" at the end of the output."""

    @abstractmethod
    def _stderr(self) -> str: ...

    @abstractmethod
    def close(self) -> None: ...


class Transport(Protocol):
    python: str

    def open(self, argv: list[str], what: str) -> Session: ...

    def close(self) -> None: ...


class _Process(Session):
    def __init__(self, argv: list[str], what: str):
        super().__init__(what)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as err:
            raise TransportError(f"cannot run `{argv[0]}`: {err.strerror}") from None

    def _send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError:
            pass  # it exited: the read below reports why

    def _recv(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return os.read(self.proc.stdout.fileno(), 65536) if ready else None

    def _stderr(self) -> str:
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(1)  # a probe exits at once when its stdin closes
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


class Local:
    """This machine, with this interpreter."""

    python = sys.executable

    def open(self, argv: list[str], what: str) -> Session:
        return _Process(argv, what)

    def close(self) -> None:
        pass


# `auto`: the interpreter that will run the deployment there, the one of the node's `ray` script (as `up`
# finds it), else the first python3 on the PATH of a non-interactive SSH session. A `ray` that is a
# wrapper (a pyenv shim: `#!/usr/bin/env bash`) does not name its Python, so python3 it is.
AUTO_PYTHON = ('PY=$(sed -n "1s/^#!//p" "$(command -v ray)" 2>/dev/null); '
               'case "$PY" in *python*) ;; *) PY=python3 ;; esac; exec $PY')


class _Channel(Session):
    def __init__(self, channel, what: str):
        super().__init__(what)
        self.channel = channel

    def _send(self, data: bytes) -> None:
        try:
            self.channel.sendall(data)
        except OSError:
            pass  # closed: the read below reports why

    def _recv(self, timeout: float) -> bytes | None:
        self.channel.settimeout(timeout)
        try:
            return self.channel.recv(65536)
        except TimeoutError:  # socket.timeout
            return None

    def _stderr(self) -> str:
        self.channel.settimeout(5)
        err = b""
        try:
            while chunk := self.channel.recv_stderr(65536):
                err += chunk
        except TimeoutError:
            pass
        return err.decode(errors="replace")

    def close(self) -> None:
        try:
            self.channel.shutdown_write()  # EOF on the probe's stdin: it exits...
            self.channel.status_event.wait(5)  # ...and once sshd reports it, its ports are free for what starts next
        except OSError:
            pass
        self.channel.close()


class Remote:
    """A node over SSH; argv is quoted for the remote shell (nemodeploy.cluster.ssh.quote)."""

    def __init__(self, node: Node, index: int, python: str, known_hosts: str | None, accept_new_host_keys: bool):
        try:
            from nemodeploy.cluster import ssh
            from nemodeploy.cluster.errors import ClusterError
        except ImportError as err:
            raise TransportError(f"remote nodes need paramiko ({err.name} is missing): pip install 'nemodeploy[cluster]'") from None
        self._ssh, self.python = ssh, python
        target = ssh.Target(node.name, node.address, node.ssh.user, node.ssh.port, node.ssh.key, index)
        try:
            self.shell = ssh.connect(target, known_hosts, accept_new_host_keys)
        except ClusterError as err:
            raise TransportError(str(err)) from None

    def open(self, argv: list[str], what: str) -> Session:
        command = f"{AUTO_PYTHON} {self._ssh.quote(*argv[1:])}" if argv[0] == "auto" else self._ssh.quote(*argv)
        try:
            channel = self.shell.client.get_transport().open_session(timeout=self._ssh.CONNECT_TIMEOUT_S)
            channel.exec_command(command)
        except (OSError, AttributeError, self._ssh.paramiko.SSHException) as err:  # AttributeError: transport gone
            raise TransportError(f"SSH connection lost while starting {what}: {err}") from None
        return _Channel(channel, what)

    def close(self) -> None:
        self.shell.close()
