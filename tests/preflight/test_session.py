"""The probe is ONE process per node, spoken to in JSON lines; its responder lives exactly as long as it does."""

from __future__ import annotations

import socket
import sys

import pytest

from nemodeploy.preflight.runner import PROBE_SOURCE, _answer
from nemodeploy.preflight.transport import Local, TransportError


def _probe(ttl: float = 30):
    return Local().open([sys.executable, "-c", PROBE_SOURCE, str(ttl)], "the preflight probe")


def test_one_process_answers_facts_then_net_and_its_responder_ends_with_it():
    session = _probe()
    facts = _answer(session.request({"mode": "facts", "args": {"head": "127.0.0.1", "network_only": True,
                                                               "ports": {"ephemeral": 0}}}, 30))
    assert facts["route"]["dev"] == "lo" and "python" not in facts  # network only: no versions, disk, tools
    port = facts["responder"]["ports"]["ephemeral"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        assert len(conn.recv(8)) == 8  # the responder's clock
    peer = {"name": "self", "address": "127.0.0.1", "ports": facts["responder"]["ports"], "udp": facts["responder"]["udp"],
            "sink": facts["responder"]["sink"], "mtu": 1500}
    net = _answer(session.request({"mode": "net", "args": {"peers": [peer], "bandwidth_to": peer,
                                                           "bandwidth_seconds": 0.05}}, 30))
    assert net["peers"]["self"]["ports"]["ephemeral"]["ms"] is not None and net["peers"]["self"]["df"]["ok"]
    assert net["bandwidth"]["gbps"] > 0
    process = session.proc
    session.close()
    assert process.returncode is not None  # stdin closed: the probe exited...
    with pytest.raises(OSError):  # ...and nothing listens on its ports any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_an_error_inside_the_probe_is_one_line_and_the_session_goes_on():
    session = _probe()
    try:
        with pytest.raises(TransportError, match=r"^the preflight probe failed \(net\): KeyError: 'peers'$"):
            _answer(session.request({"mode": "net", "args": {}}, 30))
        assert _answer(session.request({"mode": "net", "args": {"peers": []}}, 30))["peers"] == {}
    finally:
        session.close()


def test_a_probe_that_cannot_run_says_why_in_one_line():
    session = Local().open([sys.executable, "-c", "import sys; sys.exit('no python3 here')"], "the preflight probe")
    with pytest.raises(TransportError, match=r"^the preflight probe failed: no python3 here$"):
        session.request({"mode": "facts", "args": {}}, 30)
    session.close()


def test_a_probe_that_hangs_is_bounded():
    session = Local().open([sys.executable, "-c", "import time; time.sleep(30)"], "the preflight probe")
    with pytest.raises(TransportError, match=r"did not answer within 1 s"):
        session.request({"mode": "facts", "args": {}}, 1)
    session.close()
