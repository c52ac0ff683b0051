"""The cluster's two secrets, the Ray token and the engine's API key: made once, kept 0600, never in argv.

Here they live in <cache>/clusters/<topology>.secrets/ (folder 0700, files 0600). `up` copies
the Ray token to REMOTE_DIR on every node and the API key to the head over SFTP
(`Shell.put_secret`); Ray reads its token from the file RAY_AUTH_TOKEN_PATH names,
the engine its key from the file NEMODEPLOY_API_KEY_FILE names. A command line is
readable by every user of a machine (/proc/<pid>/cmdline), a 0600 file is not.

The Ray token belongs to one bring-up: `down` forgets it and the next `up` makes a
new one. The API key outlives `down`: clients keep working across a restart, and
`up --api-key` replaces it while no engine serves.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from nemodeploy.paths import cache_dir

RAY_TOKEN = "ray_token"
API_KEY = "api_key"
# On every node. Beside Ray's temp root (RaySettings.temp_root), private to the SSH user.
REMOTE_DIR = "/tmp/ndray/secrets"


def remote_path(name: str) -> str:
    return f"{REMOTE_DIR}/{name}"


def local_dir(topology: str) -> Path:
    return cache_dir() / "clusters" / f"{topology}.secrets"


def read(topology: str, name: str) -> str | None:
    try:
        return (local_dir(topology) / name).read_text().strip() or None
    except FileNotFoundError:
        return None


def write_private(path: Path, value: str) -> Path:
    """Store `value` at `path` with mode 0600, its folder 0700 (both so from the start, never wider)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value)
    tmp.replace(path)
    return path


def write(topology: str, name: str, value: str) -> Path:
    return write_private(local_dir(topology) / name, value)


def generate() -> str:
    return secrets.token_urlsafe(32)


def ray_token(topology: str) -> str:
    """The cluster's Ray token: the stored one, or a new one (stored) for a new cluster."""
    token = read(topology, RAY_TOKEN)
    if token is None:
        token = generate()
        write(topology, RAY_TOKEN, token)
    return token


def forget_ray_token(topology: str) -> None:
    (local_dir(topology) / RAY_TOKEN).unlink(missing_ok=True)


def matches(given: str, stored: str) -> bool:
    return secrets.compare_digest(given.encode(), stored.encode())


def engine_api_key(topology: str, given: str | None) -> tuple[str, bool]:
    """The key the engine serves with: `given` (then stored), else the stored one, else a new one.

    Returns (key, generated); a generated key is to be shown to the user once.
    """
    if given:
        write(topology, API_KEY, given)
        return given, False
    stored = read(topology, API_KEY)
    if stored:
        return stored, False
    key = generate()
    write(topology, API_KEY, key)
    return key, True
