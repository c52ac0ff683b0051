"""Test hosts: network namespaces on a Linux bridge, each a small "machine" with its own sshd.

Each host is a network namespace with one veth (named eth0 inside) on a bridge,
and a process tree started under `unshare --pid --fork --mount-proc --uts`, so
it has its own hostname, process table, /run, /tmp and /dev/shm. Without that,
`ray stop` in one host stops the Ray processes of every host (they would share
the process table), and Ray's files under /tmp would collide. The Python
environment and this source tree stay visible when they live under /tmp. The init of each
host is started with `--kill-child`: killing the recorded `unshare` process
kills the host's PID 1 and, with it, everything that runs in the host.

Two options make the hosts more like separate machines, for measuring how something scales
with the number of nodes: `cpu_per_host` puts each host in its own cgroup with that many cores
(the same CPU for a node whether 1 or 16 hosts run), and `private_home` gives each host a
copy-on-write view of root's home (what a login shell writes there, a `pyenv rehash` lock file,
stays on its host, as it would on separate machines).

Needs root (network-admin and mount rights), iproute2, util-linux and Debian's
openssh-server (sshd, ssh-keygen).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nemodeploy.cluster.errors import ClusterError
from nemodeploy.paths import cache_dir

SSHD = "/usr/sbin/sshd"
DEFAULT_SUBNET = "10.213.0.0/24"
DEFAULT_BED = "ndt"
CPU_PERIOD_US = 20_000  # a short period: a host over its share waits at most this long to run again


@dataclass
class TestHost:
    """One host. `init_pid` is the host's PID 1 as the machine sees it (the target of nsenter)."""

    __test__ = False  # not a pytest test class

    name: str
    ip: str
    netns: str
    bridge_port: str
    mtu: int
    ssh_port: int
    key_path: str
    known_hosts_line: str
    unshare_pid: int = 0
    init_pid: int = 0


@dataclass
class TestBed:
    """A set of hosts on one bridge; saved as JSON so that `testhosts down` can find it later."""

    __test__ = False

    name: str
    subnet: str
    bridge: str
    bridge_ip: str
    workdir: str
    key_path: str
    known_hosts_path: str
    hosts: list[TestHost] = field(default_factory=list)
    cpu_cgroup: str = ""  # the folder of the hosts' cgroups (one per host) when they have a CPU share
    private_home: bool = False

    @property
    def known_hosts(self) -> str:
        return "".join(h.known_hosts_line for h in self.hosts)

    def unused_ip(self) -> str:
        """An address on the test subnet that no host has: a connection to it finds nobody."""
        return str(ipaddress.ip_network(self.subnet)[200])

    def topology_yaml(self, name: str = "testhosts", model: str = "nemotron-h-tiny") -> str:
        """A topology that brings these hosts up (CPU nodes, one NIC each)."""
        lines = [f"name: {name}", "description: test hosts in network namespaces", "nodes:"]
        for h in self.hosts:
            lines += [
                f"  - name: {h.name}",
                f"    address: {h.ip}",
                f"    ssh: {{user: root, port: {h.ssh_port}, key: {h.key_path}}}",
                "    accelerators: {kind: cpu, count: 1}",
                f"    nics: [{{name: eth0, mtu: {h.mtu}, speed_gbps: 10}}]",
            ]
        lines += ["model:", f"  id: {model}", ""]
        return "\n".join(lines)


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise ClusterError(f"test hosts: `{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done


def unavailable_reason() -> str | None:
    """Why test hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, bridges, mounts)"
    for tool in ("ip", "unshare", "nsenter", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"test hosts need `{tool}` (apt: iproute2, util-linux, openssh-client)"
    if not os.path.exists(SSHD):
        return f"test hosts need {SSHD} (apt: openssh-server)"
    probe = "ndprobe%d" % os.getpid()
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` is not permitted here (needs CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def _sshd_config(bed: TestBed, host: TestHost, hostdir: Path) -> str:
    # StrictModes no: the keys live under a world-writable parent; UsePAM no: no login session setup.
    path = f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return "\n".join(
        [
            f"ListenAddress {host.ip}",
            f"Port {host.ssh_port}",
            f"HostKey {hostdir}/ssh_host_ed25519_key",
            f"PidFile {hostdir}/sshd.pid",
            f"AuthorizedKeysFile {bed.workdir}/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            # The interpreter that runs these tests (and its `ray`) is the one a node would have installed.
            f"SetEnv PATH={path}",
            "",
        ]
    )


# PID 1 must reap orphans: `ray stop` waits for its processes to vanish, and zombies never do.
_REAPER = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


def machine_paths_in_tmp() -> list[str]:
    """Paths under the machine's /tmp that a host must still see: this Python environment and this
    source tree (a CI checkout may live in /tmp). Parents come before their children."""
    import nemodeploy

    needed = {sys.prefix, os.path.realpath(sys.prefix), str(Path(nemodeploy.__file__).resolve().parents[1])}
    return sorted(p for p in needed if p.startswith("/tmp/"))


def _init_script(bed: TestBed, host: TestHost, hostdir: Path) -> str:
    """The host's PID 1: private /run, /tmp, /dev/shm, home, hostname, sshd; then it reaps orphans forever.

    The machine's /tmp is kept at /run/machine-tmp so the Python environment and the source
    tree can be bound back into the private /tmp when they live there.
    """
    rebinds = "".join(
        f"mkdir -p {shlex.quote(p)} && mount --bind {shlex.quote('/run/machine-tmp' + p[len('/tmp'):])} {shlex.quote(p)} && "
        for p in machine_paths_in_tmp()
    )
    home = pwd.getpwuid(0).pw_dir  # the hosts' login user is root
    overlay = f"lowerdir={home},upperdir={hostdir}/home/upper,workdir={hostdir}/home/work"
    private_home = (f"mkdir -p {shlex.quote(str(hostdir))}/home/upper {shlex.quote(str(hostdir))}/home/work && "
                    f"mount -t overlay overlay -o {shlex.quote(overlay)} {shlex.quote(home)} && ") if bed.private_home else ""
    return (
        f"hostname {host.name} && "
        "mount -t tmpfs -o size=64m,mode=755 tmpfs /run && mkdir -p /run/sshd /run/machine-tmp && "
        "mount --bind /tmp /run/machine-tmp && "
        "mount -t tmpfs -o size=2g,mode=1777 tmpfs /tmp && "
        f"{rebinds}"
        "mount -t tmpfs -o size=1g,mode=1777 tmpfs /dev/shm && "
        f"{private_home}"
        f"{SSHD} -f {hostdir}/sshd_config -E {hostdir}/sshd.log && "
        f"exec {sys.executable} -c {shlex.quote(_REAPER)}"
    )


def host_argv(host: TestHost, argv: Sequence[str]) -> list[str]:
    """`argv` made to run inside `host` (its network, mounts, process table, hostname)."""
    return ["nsenter", "--target", str(host.init_pid), "--net", "--mount", "--pid", "--uts", "--ipc", "--", *argv]


def run_in_host(host: TestHost, argv: Sequence[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a command inside a host and wait for it (output captured as text unless told otherwise)."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(host_argv(host, argv), timeout=timeout, **kwargs)


def process_environ(host: TestHost, pattern: str) -> dict[str, str]:
    """The environment a process inside `host` really runs with (its /proc/<pid>/environ), the first that
    `pgrep -f pattern` finds there."""
    pid = run_in_host(host, ["pgrep", "-f", pattern]).stdout.split()[0]
    raw = run_in_host(host, ["cat", f"/proc/{pid}/environ"]).stdout
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _child_of(pid: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.02)
    raise ClusterError(f"test hosts: unshare (pid {pid}) started no init process")


def _wait_listening(host: TestHost, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = run_in_host(host, ["ss", "-ltnH", f"sport = :{host.ssh_port}"], timeout=5)
        if done.stdout.strip():
            return
        time.sleep(0.05)
    raise ClusterError(f"test host {host.name}: sshd is not listening on {host.ip}:{host.ssh_port}")


def start_sshd(bed: TestBed, host: TestHost) -> None:
    """(Re)start a host's sshd, e.g. after `stop_sshd`."""
    hostdir = Path(bed.workdir) / host.name
    run_in_host(host, [SSHD, "-f", str(hostdir / "sshd_config"), "-E", str(hostdir / "sshd.log")], check=True)
    _wait_listening(host)


def stop_sshd(bed: TestBed, host: TestHost) -> None:
    """Stop a host's sshd listener (its sessions and other processes keep running)."""
    pid = (Path(bed.workdir) / host.name / "sshd.pid").read_text().strip()
    run_in_host(host, ["kill", pid])
    deadline = time.monotonic() + 10
    while run_in_host(host, ["ss", "-ltnH", f"sport = :{host.ssh_port}"]).stdout.strip():
        if time.monotonic() > deadline:
            raise ClusterError(f"test host {host.name}: sshd did not stop")
        time.sleep(0.05)


def cut_from(host: TestHost, address: str, port: int, cut: bool = True) -> None:
    """A one-way partition: `host` can no longer open TCP connections to address:port (nftables in
    its namespace drops them); connections the other way still work. `cut=False` heals it."""
    table = f"ndcut{port}"
    if cut:
        rules = (f"add table inet {table}\nadd chain inet {table} out {{ type filter hook output priority 0 ; }}\n"
                 f"add rule inet {table} out ip daddr {address} tcp dport {port} drop\n")
        run_in_host(host, ["nft", "-f", "-"], input=rules, check=True)
    else:
        run_in_host(host, ["nft", "delete", "table", "inet", table], check=True)


def link_hosts(bed: TestBed, a: TestHost, b: TestHost, subnet: str, ifname: str = "eth1") -> tuple[str, str]:
    """A second network between two hosts: a veth pair named `ifname` in both, addresses .1 (a) and .2 (b)
    of `subnet`; returns those addresses. It goes with the hosts' namespaces when the bed is destroyed."""
    net = ipaddress.ip_network(subnet)
    addresses = (str(net[1]), str(net[2]))
    ends = [f"{bed.name}{a.name}x", f"{bed.name}{b.name}x"]
    _ip("link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
    for end, host, address in zip(ends, (a, b), addresses):
        _ip("link", "set", end, "netns", host.netns)
        _ip("link", "set", end, "name", ifname, netns=host.netns)
        _ip("addr", "add", f"{address}/{net.prefixlen}", "dev", ifname, netns=host.netns)
        _ip("link", "set", ifname, "up", netns=host.netns)
    return addresses


def route_via(host: TestHost, destination: str, ifname: str, source: str) -> None:
    """Make `host` reach `destination` over `ifname` from `source` (a host route, as on a multi-homed node)."""
    _ip("route", "add", f"{destination}/32", "dev", ifname, "src", source, netns=host.netns)


def set_link(host: TestHost, up: bool) -> None:
    """Take a host's link down (its bridge port) or bring it back: a cable pulled."""
    _ip("link", "set", host.bridge_port, "up" if up else "down")


def _add_host(bed: TestBed, index: int, name: str, mtu: int) -> TestHost:
    net = ipaddress.ip_network(bed.subnet)
    hostdir = Path(bed.workdir) / name
    hostdir.mkdir(parents=True)
    host_pub = _keygen(hostdir / "ssh_host_ed25519_key", f"{name}-host")
    host = TestHost(
        name=name,
        ip=str(net[index]),
        netns=f"{bed.name}-{name}",
        bridge_port=f"{bed.name}{index}b",
        mtu=mtu,
        ssh_port=22,
        key_path=bed.key_path,
        known_hosts_line="",
    )
    keytype, keydata = host_pub.split()[:2]
    host.known_hosts_line = f"{host.ip} {keytype} {keydata}\n"
    _ip("netns", "add", host.netns)
    _ip("link", "add", host.bridge_port, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0", "netns", host.netns)
    _ip("link", "set", host.bridge_port, "master", bed.bridge, "up")
    _ip("link", "set", "eth0", "mtu", str(mtu), netns=host.netns)
    _ip("addr", "add", f"{host.ip}/{net.prefixlen}", "dev", "eth0", netns=host.netns)
    _ip("link", "set", "eth0", "up", netns=host.netns)
    _ip("link", "set", "lo", "up", netns=host.netns)
    (hostdir / "sshd_config").write_text(_sshd_config(bed, host, hostdir))
    with open(hostdir / "init.log", "ab") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
             "--uts", "--propagation", "private", "sh", "-c", _init_script(bed, host, hostdir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    host.unshare_pid = proc.pid  # `ip netns exec` execs unshare (same pid); unshare's child is the host's PID 1
    host.init_pid = _child_of(proc.pid)
    return host


def create(
    count: int,
    mtu: int | Sequence[int] = 1500,
    subnet: str = DEFAULT_SUBNET,
    name: str = DEFAULT_BED,
    workdir: str | os.PathLike | None = None,
    cpu_per_host: float | None = None,
    private_home: bool = False,
) -> TestBed:
    """Create `count` hosts h1..hN. `mtu` is one value for every link or one per host (both veth ends);
    `cpu_per_host` caps each host at that many cores; `private_home`: see the module's docstring."""
    mtus = [mtu] * count if isinstance(mtu, int) else list(mtu)
    if len(mtus) != count:
        raise ClusterError(f"test hosts: {count} hosts but {len(mtus)} MTUs")
    if not 1 <= count <= 100:
        raise ClusterError("test hosts: between 1 and 100 hosts")
    if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", name):
        raise ClusterError(f"test hosts: name {name!r} must be 1-8 lowercase letters or digits (it prefixes link names)")
    bridge = f"{name}br"
    if _ip("link", "show", bridge, check=False).returncode == 0:
        raise ClusterError(f"test hosts {name!r} already exist (bridge {bridge}); run `nemodeploy testhosts down` first")
    net = ipaddress.ip_network(subnet)
    root = Path(workdir or f"/var/tmp/nemodeploy-testhosts/{name}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    bed = TestBed(
        name=name,
        subnet=str(net),
        bridge=bridge,
        bridge_ip=str(net[-2]),
        workdir=str(root),
        key_path=str(root / "id_ed25519"),
        known_hosts_path=str(root / "known_hosts"),
        private_home=private_home,
    )
    _save(bed)  # first, so that `down` can clean up a half-made bed
    try:
        if cpu_per_host is not None:
            bed.cpu_cgroup = str(_cpu_cgroups(bed, [f"h{i}" for i in range(1, count + 1)], cpu_per_host))
            _save(bed)
        user_pub = _keygen(root / "id_ed25519", "nemodeploy-testhosts")
        (root / "authorized_keys").write_text(user_pub + "\n")
        _ip("link", "add", bridge, "mtu", str(max(mtus)), "type", "bridge")
        _ip("addr", "add", f"{bed.bridge_ip}/{net.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index, host_mtu in enumerate(mtus, start=1):
            bed.hosts.append(_add_host(bed, index, f"h{index}", host_mtu))
            _save(bed)
        for host in bed.hosts:
            _wait_listening(host)
            if bed.cpu_cgroup:
                _join_cgroup(host, Path(bed.cpu_cgroup) / host.name)
        Path(bed.known_hosts_path).write_text(bed.known_hosts)
    except BaseException:
        destroy(bed)
        raise
    return bed


def _cpu_controller() -> tuple[Path, int] | None:
    """(mount point, version) of the machine's cgroup hierarchy with the cpu controller, or None."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            where, kind, options = line.split()[1:4]
            if kind == "cgroup" and "cpu" in options.split(","):
                return Path(where), 1
            if kind == "cgroup2":
                with contextlib.suppress(OSError):
                    if "cpu" in (Path(where) / "cgroup.controllers").read_text().split():
                        return Path(where), 2
    return None


def _cpu_cgroups(bed: TestBed, names: list[str], cores: float) -> Path:
    """A cgroup per host under one folder for the bed, each allowed `cores` cores (CFS bandwidth)."""
    quota = round(cores * CPU_PERIOD_US)
    if quota < 1000:  # the kernel's least quota is 1 ms
        raise ClusterError(f"test hosts: a CPU share under {1000 / CPU_PERIOD_US} of a core cannot be set")
    controller = _cpu_controller()
    if controller is None:
        raise ClusterError("test hosts: no cgroup hierarchy with the cpu controller is mounted; cannot share out the CPU")
    root, version = controller
    folder = root / f"nemodeploy-testhosts-{bed.name}"
    limits = ({"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": str(quota)} if version == 1
              else {"cpu.max": f"{quota} {CPU_PERIOD_US}"})
    try:
        folder.mkdir(exist_ok=True)
        if version == 2:  # each level enables the cpu controller for the level below it
            for parent in (root, folder):
                (parent / "cgroup.subtree_control").write_text("+cpu")
        for name in names:
            (folder / name).mkdir(exist_ok=True)
            for limit, value in limits.items():
                (folder / name / limit).write_text(value)
    except OSError as err:
        raise ClusterError(f"test hosts: cannot set a CPU share in {folder}: {err.strerror or err}") from None
    return folder


def _join_cgroup(host: TestHost, cgroup: Path) -> None:
    """Move every process of the host (its PID namespace) into its cgroup; what they start stays there.
    Done from outside: `ip netns exec` mounts a sysfs of its own, which hides the cgroup mounts inside."""
    namespace = os.readlink(f"/proc/{host.init_pid}/ns/pid")
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):  # gone meanwhile, or not a process
            if entry.name.isdigit() and os.readlink(entry / "ns/pid") == namespace:
                (cgroup / "cgroup.procs").write_text(entry.name)


def _remove_cgroups(folder: str) -> None:
    """Remove the hosts' cgroups once their processes are gone (the kernel frees them a moment later)."""
    path = Path(folder)
    if not path.is_dir():
        return
    for cgroup in [*(p for p in path.iterdir() if p.is_dir()), path]:
        deadline = time.monotonic() + 5
        while True:
            try:
                cgroup.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)


def _kill_host(host: TestHost) -> None:
    """SIGKILL the host's PID 1 (the kernel then kills its whole process table); unshare reaps it and exits."""
    for pid in (host.init_pid, host.unshare_pid):
        if pid and _is_ours(pid, host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(host.unshare_pid, 0)


def _running(pid: int) -> bool:
    """False once the process is gone or a zombie (a container's init may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_ours(pid: int, host: TestHost) -> bool:
    """Guards against a recorded pid that now belongs to someone else."""
    try:
        netns = os.readlink(f"/proc/{pid}/ns/net")
        ours = os.stat(f"/run/netns/{host.netns}").st_ino
    except OSError:
        return False
    return netns == f"net:[{ours}]"


def destroy(bed: TestBed) -> None:
    """Kill everything in every host; delete veths, bridge, namespaces, files; unmount /run/netns if unused."""
    for host in bed.hosts:
        _kill_host(host)
    for host in bed.hosts:
        _ip("link", "del", host.bridge_port, check=False)
        _ip("netns", "del", host.netns, check=False)
    # A host added to the bed's record only after its namespace existed is still found by name.
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(f"{bed.name}-h"):
            _ip("netns", "del", ns, check=False)
    _ip("link", "del", bed.bridge, check=False)
    if bed.cpu_cgroup:
        _remove_cgroups(bed.cpu_cgroup)
    # `ip netns add` bind-mounts /run/netns on itself (os.path.ismount cannot see a same-device bind).
    while not _ip("netns", "list", check=False).stdout.strip() and _is_mounted("/run/netns"):
        if subprocess.run(["umount", "/run/netns"], capture_output=True).returncode != 0:
            break
    shutil.rmtree(bed.workdir, ignore_errors=True)
    _record_path(bed.name).unlink(missing_ok=True)


def _is_mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == path for line in mounts)


def _record_path(name: str) -> Path:
    return cache_dir() / "testhosts" / f"{name}.json"


def _save(bed: TestBed) -> None:
    path = _record_path(bed.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(bed), indent=2))


def load(name: str = DEFAULT_BED) -> TestBed | None:
    """The recorded bed of that name, or None."""
    try:
        data = json.loads(_record_path(name).read_text())
    except FileNotFoundError:
        return None
    hosts = [TestHost(**h) for h in data.pop("hosts")]
    return TestBed(**data, hosts=hosts)


@contextlib.contextmanager
def test_hosts(count: int, **kwargs) -> Iterator[TestBed]:
    """Hosts for the duration of a `with` block; always torn down."""
    bed = create(count, **kwargs)
    try:
        yield bed
    finally:
        destroy(bed)


test_hosts.__test__ = False  # type: ignore[attr-defined]
