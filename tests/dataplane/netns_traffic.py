"""Traffic between the hosts of a ``MemberPair`` and what the WAN sees of it, IPv4 or IPv6; every wait bounded."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import dpkt
from member_pair import DENIED_PORT, HOST_A, HOST_B, MemberPair

from groupvpn.dataplane.manager import Dataplane
from groupvpn.runtime.netns import socket_in

TIMEOUT = 10.0
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
IpPacket = dpkt.ip.IP | dpkt.ip6.IP6


def family_of(address: str) -> int:
    return FAMILIES[ip_address(address).version]


@contextmanager
def capture(lab: MemberPair, family: int = 4, save: Path | None = None) -> Iterator[list[IpPacket]]:
    """IPv4 (or IPv6) packets on the WAN link of member A while the block runs (filled in when it ends).

    At the end a marker datagram is sent over the link and tcpdump is only
    stopped once the marker is in its file, so nothing sent before is lost
    however far behind a busy machine left tcpdump.  ``save``: where the
    capture file is kept (marker included), for tshark.
    """
    packets: list[IpPacket] = []
    marker = os.urandom(16)
    member_a = lab.member_a_wan if family == 4 else lab.member_a_wan6
    with tempfile.TemporaryDirectory() as directory:
        path = save or Path(directory) / "wan.pcap"
        options = ("-n", "-U", "--immediate-mode", "-B", "8192", "-w", str(path), "ip" if family == 4 else "ip6")
        tcpdump = subprocess.Popen(
            ["ip", "netns", "exec", lab.wan, "tcpdump", "-i", lab.wan_to_a, *options], stderr=subprocess.PIPE, text=True
        )
        try:
            assert tcpdump.stderr is not None
            assert "listening on" in tcpdump.stderr.readline(), "tcpdump did not start"
            yield packets
            with socket_in(lab.wan, FAMILIES[family], socket.SOCK_DGRAM) as probe:
                probe.sendto(marker, (member_a, DENIED_PORT))
            deadline = time.monotonic() + TIMEOUT
            while marker not in path.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            tcpdump.terminate()
            tcpdump.wait(TIMEOUT)
        with path.open("rb") as pcap:
            frames = [frame for _, frame in dpkt.pcap.Reader(pcap) if marker not in frame]
        packets.extend(dpkt.ethernet.Ethernet(frame).data for frame in frames)


def ping(namespace: str, address: str, count: int = 3, *options: str) -> bool:
    """Whether every one of ``count`` echo requests was answered (within ``count`` + 2 seconds);
    ``options`` go to ping as they are."""
    command = ("ping", "-c", str(count), "-w", str(count + 2), "-i", "0.2", "-n", *options, address)
    done = subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True, timeout=TIMEOUT + count)
    return done.returncode == 0


def udp_socket(namespace: str, address: str, port: int) -> socket.socket:
    sock = socket_in(namespace, family_of(address), socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.settimeout(TIMEOUT)
    return sock


def tcp_round_trip(lab: MemberPair, payload: bytes, source: str = HOST_A, destination: str = HOST_B) -> bytes:
    """Send ``payload`` from host A's ``source`` to host B's ``destination`` over TCP; the SHA-256 host B
    computed of what it received."""
    listener = socket_in(lab.host_b, family_of(destination), socket.SOCK_STREAM)
    client = socket_in(lab.host_a, family_of(source), socket.SOCK_STREAM)
    with listener, client:
        listener.bind((destination, 0))
        listener.listen(1)
        listener.settimeout(TIMEOUT)

        def serve() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(TIMEOUT)
                digest = hashlib.sha256()
                while chunk := connection.recv(65536):
                    digest.update(chunk)
                connection.sendall(digest.digest())

        server = threading.Thread(target=serve)
        server.start()
        client.settimeout(TIMEOUT)
        client.bind((source, 0))
        client.connect(listener.getsockname())
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(64):
            answer += chunk
        server.join(TIMEOUT)
        return answer


def between_hosts(packets: list[IpPacket], a: str = HOST_A, b: str = HOST_B) -> list[IpPacket]:
    hosts = {ip_address(a).packed, ip_address(b).packed}
    return [p for p in packets if {p.src, p.dst} == hosts]


def settled(a: Dataplane, b: Dataplane) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both members' counters once everything each one encrypted has been decrypted by the other."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        counts = a.counters(wait=TIMEOUT), b.counters(wait=TIMEOUT)
        in_step = all(x["encrypted_packets"] == y["decrypted_packets"] for x, y in (counts, counts[::-1]))
        if in_step or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def eventually(dataplane: Dataplane, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The data plane's counters once ``done`` holds for them (packets may still be queued for a worker)."""
    deadline = time.monotonic() + TIMEOUT
    while not done(counts := dataplane.counters(wait=TIMEOUT)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return counts
