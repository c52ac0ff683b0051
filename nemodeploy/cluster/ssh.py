"""SSH to the nodes with paramiko: host keys checked, commands with timeouts, file fetches.

Every failure becomes a `ClusterError` that names the node and says what to do.
Host keys are checked against a known_hosts file (default ~/.ssh/known_hosts):
an unknown key is rejected unless `accept_new_host_keys` (then it is appended),
a changed key is always rejected (paramiko's BadHostKeyException).

Remote commands are argv lists, joined with shlex.join: a value (a path, a node
name) never becomes shell code. Where a command needs the shell (redirections,
`$!`), `sh(script, *values)` runs a constant script that reads the values as
"$1", "$2"... Secrets never go into a command, whose text every user of the node
can read in /proc/<pid>/cmdline: `put_secret` writes them over SFTP to a 0600 file.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shlex
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from nemodeploy.cluster.errors import ClusterError

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
KNOWN_HOSTS_ENV = "NEMODEPLOY_KNOWN_HOSTS"  # overrides the default (test hosts come with their own file)
CONNECT_TIMEOUT_S = 8.0

Command = Sequence[str] | str  # an argv (joined with shlex.join), or a shell line made only of quoted parts


def sh(script: str, *values: str) -> list[str]:
    """The argv that runs a constant shell `script` with `values` as its "$1", "$2"...: values stay data."""
    return ["sh", "-c", script, "sh", *values]


@dataclass(frozen=True)
class Target:
    """Where and how to log in to one node; `index` is the node's place in the topology (for messages)."""

    name: str
    address: str
    user: str = "root"
    port: int = 22
    key: str | None = None
    index: int = 0

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str

    def tail(self, lines: int = 5) -> str:
        text = (self.err.strip() or self.out.strip()).splitlines()
        return " | ".join(text[-lines:])


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown host keys: reject with the fix, or (when accepted) remember and append them."""

    def __init__(self, target: Target, known_hosts: Path, accept_new: bool):
        self.target, self.known_hosts, self.accept_new = target, known_hosts, accept_new

    def missing_host_key(self, client, hostname, key):
        if not self.accept_new:
            raise ClusterError(
                f"unknown SSH host key for {self.target.known_hosts_name} (not in {self.known_hosts}); "
                f"run with --accept-new-host-keys, or add it: ssh-keyscan -p {self.target.port} "
                f"{self.target.address} >> {self.known_hosts}",
                self.target.name,
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with self.known_hosts.open("a") as out:
            out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class Shell:
    """An open SSH connection to one node."""

    def __init__(self, target: Target, client: paramiko.SSHClient):
        self.target, self.client = target, client

    def run(self, command: Command, timeout: float = 60.0) -> Result:
        """Run a command; one that has not finished after `timeout` seconds is a ClusterError."""
        if not isinstance(command, str):
            command = shlex.join(command)
        out, err = bytearray(), bytearray()
        try:
            channel = self.client.get_transport().open_session(timeout=CONNECT_TIMEOUT_S)
            channel.exec_command(command)
            deadline = time.monotonic() + timeout
            while True:
                while channel.recv_ready():
                    out += channel.recv(65536)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    channel.close()
                    raise ClusterError(
                        f"`{_short(command)}` did not finish within {timeout:.0f} s; check the node's load and logs",
                        self.target.name,
                    )
                time.sleep(0.02)
            rc = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, AttributeError) as error:  # AttributeError: transport gone
            raise ClusterError(f"SSH connection lost while running `{_short(command)}`: {error}", self.target.name) from None
        return Result(rc, out.decode(errors="replace"), err.decode(errors="replace"))

    def check(self, command: Command, timeout: float = 60.0, what: str | None = None) -> Result:
        """`run`, and a non-zero exit is a ClusterError with the output's last lines."""
        result = self.run(command, timeout)
        if result.rc != 0:
            text = command if isinstance(command, str) else shlex.join(command)
            raise ClusterError(f"{what or '`' + _short(text) + '`'} failed (exit {result.rc}): {result.tail()}", self.target.name)
        return result

    def put_secret(self, path: str, secret: str) -> None:
        """Write `secret` to `path` on the node, readable by the login user only (folder 0700, file 0600).

        The file is made 0600 before the secret is written to it; a folder that another user
        owns is refused (chmod fails), so no one else can have a handle on the file.
        """
        folder = posixpath.dirname(path)
        self.check(["mkdir", "-p", "-m", "700", "--", folder], what=f"creating {folder}")
        self.check(["chmod", "700", "--", folder], what=f"making {folder} private")
        try:
            sftp = self.client.open_sftp()
        except (paramiko.SSHException, OSError) as err:
            raise ClusterError(f"SFTP is not available ({err}); enable the sftp subsystem in sshd_config", self.target.name) from None
        try:
            with sftp.open(path, "w") as out:
                out.chmod(0o600)
                out.write(secret.encode())
        except OSError as err:
            raise ClusterError(f"cannot write {path}: {err}", self.target.name) from None
        finally:
            sftp.close()

    def fetch_tree(self, remote_dir: str, local_dir: Path) -> list[Path]:
        """Copy the regular files under a remote directory (following symlinks); returns the local paths."""
        copied: list[Path] = []
        try:
            sftp = self.client.open_sftp()
        except (paramiko.SSHException, OSError) as err:
            raise ClusterError(f"SFTP is not available ({err}); enable the sftp subsystem in sshd_config", self.target.name) from None
        try:
            self._fetch_into(sftp, remote_dir.rstrip("/"), local_dir, copied)
        except FileNotFoundError:
            raise ClusterError(f"no such directory on the node: {remote_dir}", self.target.name) from None
        except OSError as err:
            raise ClusterError(f"cannot copy {remote_dir}: {err}", self.target.name) from None
        finally:
            sftp.close()
        return copied

    def _fetch_into(self, sftp: paramiko.SFTPClient, remote: str, local: Path, copied: list[Path]) -> None:
        local.mkdir(parents=True, exist_ok=True)
        for entry in sftp.listdir_attr(remote):
            path = f"{remote}/{entry.filename}"
            mode = sftp.stat(path).st_mode or 0
            if stat.S_ISDIR(mode):
                self._fetch_into(sftp, path, local / entry.filename, copied)
            elif stat.S_ISREG(mode):
                sftp.get(path, str(local / entry.filename))
                copied.append(local / entry.filename)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "Shell":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short(command: str, limit: int = 60) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."


def connect(
    target: Target,
    known_hosts: str | Path | None = None,
    accept_new_host_keys: bool = False,
    timeout: float = CONNECT_TIMEOUT_S,
) -> Shell:
    """Log in to a node, or raise a ClusterError that says why and what to do."""
    hosts_file = Path(known_hosts or os.environ.get(KNOWN_HOSTS_ENV) or DEFAULT_KNOWN_HOSTS).expanduser()
    client = paramiko.SSHClient()
    if hosts_file.exists():
        try:
            client.load_host_keys(str(hosts_file))
        except (OSError, paramiko.SSHException) as err:
            raise ClusterError(f"cannot read known_hosts {hosts_file}: {err}", target.name) from None
    client.set_missing_host_key_policy(_HostKeyPolicy(target, hosts_file, accept_new_host_keys))
    where = f"{target.address}:{target.port}"
    key = str(Path(target.key).expanduser()) if target.key else None
    try:
        client.connect(
            target.address,
            port=target.port,
            username=target.user,
            key_filename=key,
            look_for_keys=key is None,
            allow_agent=key is None,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except ClusterError:
        client.close()
        raise
    except paramiko.BadHostKeyException as err:
        client.close()
        raise ClusterError(
            f"SSH host key for {target.known_hosts_name} CHANGED (got {err.key.get_name()}, {hosts_file} has another); "
            f"if the node was reinstalled, remove the old key: ssh-keygen -R '{target.known_hosts_name}' -f {hosts_file}",
            target.name,
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        tried = f"key {key}" if key else "the SSH agent and ~/.ssh default keys"
        raise ClusterError(
            f"SSH login as {target.user}@{where} refused with {tried}; "
            f"set nodes[{target.index}].ssh.key to a key in the node's authorized_keys",
            target.name,
        ) from None
    except paramiko.ssh_exception.NoValidConnectionsError as err:
        client.close()
        codes = {getattr(e, "errno", None) for e in err.errors.values()}
        raise _connection_error(target, codes.pop() if len(codes) == 1 else None, str(err)) from None
    except (socket.timeout, TimeoutError):
        client.close()
        raise _connection_error(target, errno.ETIMEDOUT, "timed out") from None
    except OSError as err:
        client.close()
        raise _connection_error(target, err.errno, err.strerror or str(err)) from None
    except (paramiko.SSHException, EOFError) as err:
        client.close()
        raise ClusterError(f"SSH to {where} failed: {err or type(err).__name__}; is an SSH server on that port?", target.name) from None
    return Shell(target, client)


def _connection_error(target: Target, code: int | None, detail: str) -> ClusterError:
    where = f"{target.address}:{target.port}"
    if code == errno.ECONNREFUSED:
        return ClusterError(
            f"connection to {where} refused; is sshd running on the node, and is nodes[{target.index}].ssh.port right?",
            target.name,
        )
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, None):
        return ClusterError(
            f"cannot reach {where} ({detail}); check nodes[{target.index}].address and the route to it",
            target.name,
        )
    return ClusterError(f"cannot connect to {where}: {detail}", target.name)


def quote(*argv: str) -> str:
    return shlex.join(argv)
