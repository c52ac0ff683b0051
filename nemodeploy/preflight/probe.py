"""What preflight runs ON a node: measures, never judges. Standard library only.

This file is shipped to each node as source text (`python3 -c <this file> <ttl>`), so a
node needs nothing but a Python 3 to be measured: not nemodeploy, not torch, not ray. The
controller judges what comes back (`nemodeploy.preflight.checks`).

ONE process per node, over ONE SSH command, answers the controller's requests: a JSON line in
(`{"mode": ..., "args": ...}`), a JSON line out. SSH sessions and interpreter start-ups are what
a node's measurement costs most (a login shell's rc files run on every SSH command), so a node
gets exactly one of each. Two modes:

- `facts`: the node's own facts (versions, limits, memory, disk, accelerator tools' raw output,
  routes and links; the slow ones at once), and a *responder* in this process listening on the
  ports the deployment will use, so peers can test them; `network_only` measures only what
  `up` needs (route, links, RDMA, responder);
- `net`: from this node to the peers the controller chose: TCP connects to each port (latency,
  reachability), a do-not-fragment UDP echo at the MTU both ends should carry, the clock offset
  to the head, a bounded TCP bandwidth sample to one peer.

The process, and with it the responder, ends when its stdin closes (the controller is done, or
its SSH connection is gone), and after `ttl` seconds whatever happens.
"""

import hashlib
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2  # <linux/in.h>; the socket module lacks them on some builds
UDP_IP_HEADERS = 28  # IPv4 20 + UDP 8: a datagram of MTU - 28 bytes fills one MTU-sized packet
VENDOR_TOOLS = ("nvidia_smi", "nvidia_topo", "rocm_smi", "amd_smi_ecc", "amd_smi_bad_pages", "amd_smi_topology")


def _run(argv, timeout=10.0):
    """stdout of a tool, or None when it is absent, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _json_tool(argv):
    out = _run(argv)
    try:
        return json.loads(out) if out else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------- facts


def _versions(names):
    """Installed distribution versions (None when absent), read from package metadata without importing."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)  # None for an empty or broken .dist-info
        except Exception:
            out[name] = None
    return out


def _nccl_libraries():
    """Every libnccl.so the node would load (pip's nvidia-nccl wheel, the system), by content hash."""
    candidates = []
    for base in sys.path:
        lib = os.path.join(base, "nvidia", "nccl", "lib")
        if os.path.isdir(lib):
            candidates += [os.path.join(lib, f) for f in sorted(os.listdir(lib)) if f.startswith("libnccl.so")]
    for line in (_run(["ldconfig", "-p"]) or "").splitlines():
        if "libnccl.so" in line and "=>" in line:
            candidates.append(line.split("=>")[1].strip())
    found, seen = [], set()
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        digest = hashlib.sha256()
        with open(real, "rb") as lib:
            for block in iter(lambda: lib.read(1 << 20), b""):
                digest.update(block)
        found.append({"path": real, "sha256": digest.hexdigest()})
    return found


def _limit(which):
    soft, _ = resource.getrlimit(which)
    return None if soft == resource.RLIM_INFINITY else soft  # None = unlimited


def _meminfo():
    out = {}
    with open("/proc/meminfo") as info:
        for line in info:
            key, value = line.split(":", 1)
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _existing_parent(path):
    path = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _read_sample(model_dir, max_bytes, max_seconds):
    """Read throughput of the largest checkpoint file, its cached pages dropped first (bounded in bytes and time)."""
    model_dir = os.path.expanduser(model_dir)
    files = []
    for root, _, names in os.walk(model_dir):
        files += [os.path.join(root, n) for n in names if n.endswith((".safetensors", ".bin", ".pt"))]
    if not files:
        return None
    path = max(files, key=os.path.getsize)
    done, start = 0, time.monotonic()
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while done < max_bytes and time.monotonic() - start < max_seconds:
            block = f.read(4 << 20)
            if not block:
                break
            done += len(block)
    return {"path": path, "bytes": done, "seconds": max(time.monotonic() - start, 1e-6)}


def _route(head):
    """The interface and source address this node uses to reach the head, as the kernel decides it."""
    routes = _json_tool(["ip", "-j", "route", "get", head]) or []
    if not routes:
        return None
    route = routes[0]
    dev, src = route.get("dev"), route.get("prefsrc")
    if dev == "lo":  # the head is this node: the interface that carries the address
        for link in _json_tool(["ip", "-j", "addr"]) or []:
            if any(a.get("local") == head for a in link.get("addr_info", [])) and link["ifname"] != "lo":
                dev, src = link["ifname"], head
    return {"dev": dev, "src": src}


def _links():
    return {link["ifname"]: link.get("mtu") for link in _json_tool(["ip", "-j", "link"]) or []}


def _rdma_sysfs(root="/sys/class/infiniband"):
    """RDMA devices: ports' state, link layer, netdev, RoCE versions of the GIDs (raw sysfs values)."""
    if not os.path.isdir(root):
        return []
    devices = []
    for dev in sorted(os.listdir(root)):
        ports = []
        for port in sorted(os.listdir(os.path.join(root, dev, "ports")), key=int):
            base = os.path.join(root, dev, "ports", port)

            def read(rel, base=base):
                try:
                    with open(os.path.join(base, rel)) as f:
                        return f.read().strip()
                except OSError:
                    return None

            gids = {}
            types_dir = os.path.join(base, "gid_attrs", "types")
            for index in sorted(os.listdir(types_dir), key=int) if os.path.isdir(types_dir) else []:
                kind, gid = read(f"gid_attrs/types/{index}"), read(f"gids/{index}")
                if kind and gid and gid != "0000:0000:0000:0000:0000:0000:0000:0000":
                    gids[index] = {"type": kind, "gid": gid, "netdev": read(f"gid_attrs/ndevs/{index}")}
            ports.append({"port": int(port), "state": read("state"), "link_layer": read("link_layer"),
                          "rate": read("rate"), "gids": gids})
        net_dir = os.path.join(root, dev, "device", "net")
        netdevs = sorted(os.listdir(net_dir)) if os.path.isdir(net_dir) else []
        devices.append({"name": dev, "netdevs": netdevs, "ports": ports})
    return devices


def _hostname():
    hostname = socket.gethostname()
    try:
        addresses = sorted({ai[4][0] for ai in socket.getaddrinfo(hostname, None, socket.AF_INET)})
    except OSError:
        addresses = []
    return hostname, addresses


def _network_facts(args):
    return {
        "route": _route(args["head"]),
        "links": _links(),
        "rdma": _rdma_sysfs(),
        "missing_commands": [c for c in args.get("commands", []) if shutil.which(c) is None],
    }


def _node_facts(args, pool):
    """Everything but the network; the slow parts (vendor tools, the read sample, NCCL hashes) run at once."""
    checkpoint = args["checkpoint_dir"]
    slow = {
        "nccl": pool.submit(_nccl_libraries),
        "read_sample": pool.submit(_read_sample, checkpoint, args.get("read_bytes", 256 << 20), args.get("read_seconds", 2.0)),
        "nvidia_smi": pool.submit(_run, ["nvidia-smi", "-q", "-x"], 30),
        "nvidia_topo": pool.submit(_run, ["nvidia-smi", "topo", "-m"], 30),
        "rocm_smi": pool.submit(_run, ["rocm-smi", "--showallinfo", "--json"], 30),
        # AMD RAS: uncorrectable error counts, bad pages pending retirement, xGMI link types (rocm-smi's
        # JSON has no RAS counters: its --showrasinfo prints no JSON)
        "amd_smi_ecc": pool.submit(_run, ["amd-smi", "metric", "--ecc", "--json"], 30),
        "amd_smi_bad_pages": pool.submit(_run, ["amd-smi", "bad-pages", "--json"], 30),
        "amd_smi_topology": pool.submit(_run, ["amd-smi", "topology"], 30),
    }
    disk_path = _existing_parent(checkpoint)
    disk = shutil.disk_usage(disk_path)
    hostname, addresses = _hostname()
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    return {
        "hostname": hostname,
        "hostname_addresses": addresses,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "packages": _versions(args.get("packages", [])),
        "shm_bytes": shm.f_frsize * shm.f_blocks if shm else None,
        "ulimits": {"memlock": _limit(resource.RLIMIT_MEMLOCK), "nofile": _limit(resource.RLIMIT_NOFILE),
                    "stack": _limit(resource.RLIMIT_STACK)},
        "memory": _meminfo(),
        "disk": {"path": disk_path, "free": disk.free, "total": disk.total},
        "nccl": slow["nccl"].result(),
        "read_sample": slow["read_sample"].result(),
        "tools": {name: slow[name].result() for name in VENDOR_TOOLS},
    }


def facts(args):
    with ThreadPoolExecutor(max_workers=3 + len(VENDOR_TOOLS)) as pool:  # network, NCCL hashes, read sample, each tool
        network = pool.submit(_network_facts, args)
        out = {} if args.get("network_only") else _node_facts(args, pool)
        out.update(network.result())
    out["responder"] = _start_responder(args.get("ports", {}))
    return out


# ------------------------------------------------------------------------------------ responder


def _serve_tcp(sock, sink):
    """Each connection gets this node's clock as 8 bytes; a sink also reads to EOF, then replies the count."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=_answer, args=(conn, sink), daemon=True).start()


def _answer(conn, sink):
    with conn:
        try:
            if not sink:
                conn.sendall(struct.pack("!d", time.time()))
                return
            total = 0
            while True:
                block = conn.recv(1 << 20)
                if not block:
                    break
                total += len(block)
            conn.sendall(struct.pack("!Q", total))
        except OSError:
            pass


def _serve_udp(sock):
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    while True:
        try:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)  # the same size back, also unfragmented: both directions are tested
        except OSError:
            continue


def _start_responder(ports):
    """Bind every port now (so busy ones are reported) and serve them from threads of this process."""
    bound, busy, sockets = {}, {}, []
    for name, port in sorted(ports.items()):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
            sock.listen(128)
        except OSError as err:
            busy[name] = err.strerror
            sock.close()
            continue
        bound[name] = sock.getsockname()[1]
        sockets.append((sock, False))
    sink = socket.socket()
    sink.bind(("0.0.0.0", 0))
    sink.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 0))
    sockets.append((sink, True))
    for sock, is_sink in sockets:
        threading.Thread(target=_serve_tcp, args=(sock, is_sink), daemon=True).start()
    threading.Thread(target=_serve_udp, args=(udp,), daemon=True).start()
    return {"ports": bound, "busy": busy, "sink": sink.getsockname()[1], "udp": udp.getsockname()[1]}


# ------------------------------------------------------------------------------------------ net


def _connect_ms(address, port, timeout, clock=True):
    """(connect time in ms, the peer's clock offset in s) or (None, error). Without `clock` (a port that
    another program serves, not the responder) only the connect is timed."""
    t0 = time.time()
    start = time.perf_counter()
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            elapsed = time.perf_counter() - start
            conn.settimeout(timeout)
            data = b""
            while clock and len(data) < 8:
                chunk = conn.recv(8 - len(data))
                if not chunk:
                    break
                data += chunk
            t1 = time.time()
    except OSError as err:
        return None, err.strerror or type(err).__name__
    offset = struct.unpack("!d", data)[0] - (t0 + t1) / 2 if len(data) == 8 else None
    return elapsed * 1000, offset


def _ports_of(peer, timeout, samples):
    out = {}
    for name, port in sorted(peer["ports"].items()):
        best, offset, error = None, None, None
        for _ in range(samples):
            ms, extra = _connect_ms(peer["address"], port, timeout, name not in peer.get("foreign", ()))
            if ms is None:
                error = extra
                break
            if best is None or ms < best:
                best, offset = ms, extra
        out[name] = {"port": port, "ms": best, "clock_offset_s": offset, "error": error}
    return out


def _df_echo(address, port, size, timeout, tries=3):
    """True when a `size`-byte datagram with do-not-fragment set goes to the peer and comes back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sock.settimeout(timeout)
        payload = os.urandom(size)
        for _ in range(tries):
            try:
                sock.sendto(payload, (address, port))
                data, _ = sock.recvfrom(65535)
                if data == payload:
                    return {"ok": True}
            except socket.timeout:
                continue
            except OSError as err:  # EMSGSIZE: this node's own route or link MTU is smaller
                return {"ok": False, "error": err.strerror}
    return {"ok": False, "error": "no echo (dropped on the path)"}


def _bandwidth(address, port, seconds):
    block = b"\0" * (1 << 20)
    sent, start = 0, time.perf_counter()
    try:
        with socket.create_connection((address, port), timeout=5) as conn:
            while time.perf_counter() - start < seconds:
                conn.sendall(block)
                sent += len(block)
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(10)
            received = struct.unpack("!Q", conn.recv(8))[0]
    except (OSError, struct.error) as err:
        return {"gbps": None, "error": str(err)}
    return {"gbps": received * 8 / (time.perf_counter() - start) / 1e9, "bytes": received}


def net(args):
    timeout = args.get("timeout", 1.0)
    peers = args["peers"]
    results = {}

    def probe(peer):
        results[peer["name"]] = {
            "ports": _ports_of(peer, timeout, args.get("samples", 3)),
            "df": _df_echo(peer["address"], peer["udp"], peer["mtu"] - UDP_IP_HEADERS, timeout),
        }

    threads = [threading.Thread(target=probe, args=(p,)) for p in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = {"peers": results, "bandwidth": None}
    target = args.get("bandwidth_to")
    if target:
        out["bandwidth"] = {"to": target["name"], **_bandwidth(target["address"], target["sink"], args.get("bandwidth_seconds", 0.5))}
    return out


def session(ttl):
    """Answer requests from stdin until it closes; an error is one line back, never a traceback."""
    threading.Thread(target=lambda: (time.sleep(ttl), os._exit(0)), daemon=True).start()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"mode": request["mode"], "result": {"facts": facts, "net": net}[request["mode"]](request["args"])}
        except Exception as err:  # reported to the controller as the node's failure
            answer = {"mode": request.get("mode"), "error": "%s: %s" % (type(err).__name__, err)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    session(float(sys.argv[1]))
