"""STAND-IN for a netem delay (this kernel has no sch_netem): a TUN device and this userspace forwarder.

Run inside one test host: `python delay_forwarder.py TUN DELAY_MS`. Packets the host sends to its
peers are steered into the TUN device (an nftables mark and a policy route, set up by
preflight_faults.userspace_delay); this process reads each packet, holds it DELAY_MS, and sends it
on, unchanged, through a raw socket whose mark takes the normal route out of eth0. Every packet
the host sends is delayed once, so every round trip to or from the host takes DELAY_MS longer:
a TCP connect, a UDP echo, a data stream. The route the kernel reports for the host's peers (`ip
route get`, unmarked) is unchanged, as under netem. Order is kept (one queue, one delay).
"""

from __future__ import annotations

import collections
import fcntl
import os
import select
import socket
import struct
import sys
import time

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
PASS_MARK = 1  # packets re-sent by this process carry it, so they are not steered into the TUN again


def main(tun: str, delay_s: float) -> None:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tun.encode(), IFF_TUN | IFF_NO_PI))
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP header included, as read
    out.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PASS_MARK)
    held: collections.deque[tuple[float, bytes]] = collections.deque()
    print("ready", flush=True)
    while True:
        wait = max(0.0, held[0][0] - time.monotonic()) if held else None
        if select.select([fd], [], [], wait)[0]:
            held.append((time.monotonic() + delay_s, os.read(fd, 65535)))
        while held and held[0][0] <= time.monotonic():
            packet = held.popleft()[1]
            if packet[0] >> 4 == 4:  # IPv4 only: the test network
                try:
                    out.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
                except OSError:
                    pass  # dropped, as a full queue would


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) / 1000)
