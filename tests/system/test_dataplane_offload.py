"""TCP through two members whose receiving data plane joins segments into GSO writes (``--dataplane-offload on``).

The lab and the daemons are ``test_dataplane``'s.  A few megabytes over
TCP from h1 to h2 arrive intact, cross the WAN only as ESP between the
hosts' own addresses, and gm2 writes them to its TUN joined
(``dataplane.offload``), so h2 receives far fewer packets than gm2
decrypted, while the counters still count inner packets.  Offload is off
by default; this test asks for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from ipaddress import IPv4Address

import dpkt
import pytest
from netns_lab import registered
from test_dataplane import GroupLab, ipv4_packets, stop
from test_dataplane import group as group  # noqa: F401  (the fixture, reused)
from test_dataplane import pytestmark  # noqa: F401  (root, tools, timeout)

from groupvpn.runtime.netns import socket_in
from groupvpn.wire.numbers import IpProtocol

from processes import wait_for  # noqa: E402  (on sys.path through test_dataplane)


def received_packets(group: GroupLab, n: int) -> int:
    (link,) = json.loads(group.run(group.lab.host(n), "ip", "-s", "-j", "link", "show", "eth0").stdout)
    return int(link["stats64"]["rx"]["packets"])


def send_over_tcp(group: GroupLab, payload: bytes, timeout: float = 60) -> bytes:
    """``payload`` from h1 to h2 over TCP; the SHA-256 of what h2 received."""
    listener = socket_in(group.lab.host(2), socket.AF_INET, socket.SOCK_STREAM)
    client = socket_in(group.lab.host(1), socket.AF_INET, socket.SOCK_STREAM)
    digest = hashlib.sha256()
    with listener, client:
        listener.bind((group.host(2), 0))
        listener.listen(1)
        listener.settimeout(timeout)

        def serve() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(timeout)
                while chunk := connection.recv(1 << 20):
                    digest.update(chunk)

        server = threading.Thread(target=serve)
        server.start()
        client.settimeout(timeout)
        client.connect(listener.getsockname())
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        server.join(timeout)
        assert not server.is_alive(), "h2 did not see the end of the stream in time"
    return digest.digest()


@pytest.mark.parametrize("group", [2], indirect=True)
def test_a_tcp_transfer_arrives_intact_and_the_receiving_member_writes_it_joined(group, tmp_path):
    group.start_ks()
    group.start_members(options=("--dataplane-workers", "1", "--dataplane-offload", "on"))
    for n in group.lab.numbers:
        wait_for(lambda n=n: registered(group.member(n)), timeout=20, what=f"gm{n} to register")
    wait_for(lambda: group.ping(1, group.host(2)), timeout=30, what="h1 to reach h2")
    wan_pcap = tmp_path / "wan.pcap"
    wan = group.capture(group.lab.wan, "gm1", wan_pcap)
    before = group.settled(2), received_packets(group, 2)
    payload = os.urandom(4 << 20)
    assert send_over_tcp(group, payload) == hashlib.sha256(payload).digest()
    after = group.settled(2), received_packets(group, 2)
    stop(wan)

    hosts = {IPv4Address(group.host(n)).packed for n in (1, 2)}
    crossing = [dpkt.ip.IP(p) for p in ipv4_packets(wan_pcap)]
    crossing = [p for p in crossing if {p.src, p.dst} == hosts]
    # Only ESP crosses; how much is the members' counters' business (tcpdump can miss packets under load).
    assert crossing and all(p.p == IpProtocol.ESP for p in crossing)
    decrypted = after[0]["decrypted_packets"] - before[0]["decrypted_packets"]
    received = after[1] - before[1]
    assert decrypted >= len(payload) // 1500  # counted per inner packet, not per write
    assert received * 2 < decrypted, f"h2 received {received} packets for {decrypted} decrypted: hardly joined"
    assert after[0]["drops"] == before[0]["drops"]
