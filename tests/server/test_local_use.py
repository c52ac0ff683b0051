"""Local use as a new user meets it, through the real `nemodeploy` command: a foreground `up local`
is seen by `status` and stopped by `down`; a taken port or a second `--detach` is one line before
anything says "serving"; `serve` on a folder without a checkpoint is one line; Ctrl-C ends open
streams with [DONE] and exits quietly."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from nemodeploy.net import free_port


@pytest.fixture
def cache(tmp_path, latent_dir, monkeypatch) -> Path:
    """A cache of its own (deployments), holding the tiny model already written."""
    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    (root / "models" / "nemotron-h-tiny").symlink_to(latent_dir)
    monkeypatch.setenv("NEMODEPLOY_CACHE", str(root))
    return root


def nemodeploy(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemodeploy.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


class Foreground:
    """A `nemodeploy` command left running, its stdout lines read as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "nemodeploy.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def wait_for(self, fragment: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, self.proc.stderr.read()
                continue
            if fragment in line:
                return line
        raise AssertionError(f"no {fragment!r} in {timeout} s")

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return code, self.proc.stderr.read()


def test_the_foreground_up_local_is_seen_by_status_and_stopped_by_down(cache):
    port = free_port()
    up = Foreground("up", "local", "--port", str(port))
    try:
        up.wait_for(f"serving nemotron-h-tiny at http://127.0.0.1:{port}/v1")
        [row] = json.loads(nemodeploy("status", "--json").stdout)
        assert (row["name"], row["pid"], row["running"], row["healthy"]) == ("local", up.proc.pid, True, True)
        assert "in the foreground" in nemodeploy("status").stdout
        down = nemodeploy("down")
        assert down.returncode == 0 and f"local: stopped (pid {up.proc.pid})" in down.stdout
        code, err = up.finish()
        assert code == 0 and "Traceback" not in err, err
        assert json.loads(nemodeploy("status", "--json").stdout) == []
    finally:
        if up.proc.poll() is None:
            up.proc.kill()


@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detach"])
def test_a_taken_port_is_one_line_before_serving(cache, detach):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = nemodeploy("up", "local", "--port", str(port), *(["--detach"] if detach else []))
    assert done.returncode == 1
    assert done.stderr.strip() == f"nemodeploy: cannot serve on 127.0.0.1:{port}: Address already in use; " \
                                  "another process listens there (--port picks another)"
    assert "serving" not in done.stdout
    assert json.loads(nemodeploy("status", "--json").stdout) == []  # no dead pid left behind


def test_a_second_detach_is_one_line(cache):
    port = free_port()
    first = nemodeploy("up", "local", "--port", str(port), "--detach")
    assert first.returncode == 0, first.stderr
    try:
        second = nemodeploy("up", "local", "--port", str(free_port()), "--detach")
        assert second.returncode == 1
        [line] = second.stderr.splitlines()
        assert line.startswith("nemodeploy: local: already running (pid ") and "`nemodeploy down local`" in line
    finally:
        assert nemodeploy("down").returncode == 0


def test_serve_on_a_folder_without_a_checkpoint_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "config.json").write_text("{}")
    for folder, reason in ((tmp_path / "missing", "no such directory"),
                           (tmp_path / "empty", "not a Hugging Face checkpoint (config.json: No such file or directory)"),
                           (tmp_path, "no *.safetensors weights")):
        done = nemodeploy("serve", "--model", str(folder))
        assert done.returncode == 2
        assert done.stderr.strip() == f"nemodeploy: {folder}: {reason}"


def test_ctrl_c_ends_open_streams_with_done_and_exits_quietly(latent_dir):
    port = free_port()
    server = Foreground("serve", "--model", str(latent_dir), "--port", str(port), "--max-model-len", "4096")
    try:
        server.wait_for("serving")
        body = {"model": "nemotron-h-tiny", "prompt": "Hello", "max_tokens": 3000, "ignore_eos": True,
                "stream": True}
        events = []
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                if len(events) == 3:
                    os.kill(server.proc.pid, signal.SIGINT)
        code, err = server.finish()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "abort"
    assert len(events) < 3000
    assert code == 0
    assert "Traceback" not in err and "CancelledError" not in err and "Aborted" not in err, err
