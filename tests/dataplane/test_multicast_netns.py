"""IPv4 multicast from host A's LAN to a group host B joined, through both members' real data planes (issue 6).

The kernel forwards no multicast without multicast routing, so the WAN
router of this lab carries it by a ``tc`` mirror from member A's link to
member B's (the fixture's business: a real WAN's multicast routing is the
operator's).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from ipaddress import ip_network

import dpkt
import pytest
from dataplane_packets import GCM128, keys_for
from member_pair import HOST_A, HOST_B, LAN_A, SPI, MemberPair, description, policy, running
from netns_traffic import capture, eventually, settled

from groupvpn.dataplane.channel import PolicyState
from groupvpn.dataplane.esp_path import SaConfig
from groupvpn.dataplane.manager import Dataplane
from groupvpn.dataplane.spd import Rule, Selector
from groupvpn.runtime.netns import socket_in

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "tc", "tcpdump")),
        reason="needs root, iproute2 (ip, tc) and tcpdump",
    ),
]

GROUP = "239.1.1.1"
UNCOVERED_GROUP = "233.252.0.1"  # MCAST-TEST-NET (RFC 6676): no rule covers it
GROUP_SPI = SPI + 0x10
PORT = 7000
DATAGRAMS = 20


def tc(namespace: str, *args: str) -> str:
    return subprocess.run(["tc", "-n", namespace, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def lab() -> Iterator[MemberPair]:
    pair = MemberPair.unique()
    try:
        pair.build()
        tc(pair.wan, "qdisc", "add", "dev", "gm1", "clsact")
        multicast = ("protocol", "ip", "u32", "match", "ip", "dst", "224.0.0.0/4")
        mirror = ("action", "mirred", "egress", "mirror", "dev", "gm2")
        tc(pair.wan, "filter", "add", "dev", "gm1", "ingress", *multicast, *mirror)
        yield pair
    finally:
        pair.remove()


def group_policy() -> PolicyState:
    """The pair's policy plus LAN A -> 239.0.0.0/8 under its own SA."""
    base = policy(GCM128, keys_for(GCM128))
    to_group = Selector(LAN_A, ip_network("239.0.0.0/8"))
    sa = SaConfig(GROUP_SPI, GCM128, keys_for(GCM128), selectors=(to_group,))
    encrypting = {**base.encrypting, "a-group": GROUP_SPI}
    return PolicyState(1, (*base.rules, Rule("a-group", to_group)), (*base.sas, sa), encrypting)


@pytest.fixture
def members(lab: MemberPair) -> Iterator[tuple[Dataplane, Dataplane]]:
    with running(lab, description(lab), group_policy()) as pair:
        yield pair


def listener(lab: MemberPair, group: str) -> socket.socket:
    """Host B's socket on ``group``, joined on its LAN interface."""
    sock = socket_in(lab.host_b, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((group, PORT))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(HOST_B))
    return sock


def send(lab: MemberPair, group: str, ttl: int, count: int = DATAGRAMS) -> None:
    with socket_in(lab.host_a, socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind((HOST_A, PORT))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(HOST_A))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        for n in range(count):
            sender.sendto(f"datagram {n}".encode(), (group, PORT))


def received(sock: socket.socket, timeout: float) -> list[tuple[bytes, tuple[str, int]]]:
    sock.settimeout(timeout)
    got = []
    try:
        while True:
            got.append(sock.recvfrom(100))
    except TimeoutError:
        return got


def to(packets: list, group: str) -> list:
    return [p for p in packets if p.dst == socket.inet_aton(group)]


def test_group_multicast_crosses_as_esp_to_the_group_address_and_reaches_the_joined_host(lab, members) -> None:
    member_a, member_b = members
    with listener(lab, GROUP) as joined, capture(lab) as wan:
        send(lab, GROUP, ttl=8)
        got = received(joined, 2.0)
    assert got == [(f"datagram {n}".encode(), (HOST_A, PORT)) for n in range(DATAGRAMS)]
    crossing = to(wan, GROUP)
    assert len(crossing) == DATAGRAMS
    for packet in crossing:
        assert (packet.p, packet.src, packet.ttl) == (dpkt.ip.IP_PROTO_ESP, socket.inet_aton(HOST_A), 8)
        assert int.from_bytes(bytes(packet.data)[:4], "big") == GROUP_SPI
    counts_a, counts_b = settled(member_a, member_b)
    assert counts_a["encrypted_packets"] == counts_b["decrypted_packets"] == DATAGRAMS
    assert counts_a["drops"] == counts_b["drops"] == {}


def test_multicast_no_rule_covers_is_dropped_and_ttl_1_stays_on_the_lan(lab, members) -> None:
    member_a, _ = members
    with listener(lab, UNCOVERED_GROUP) as uncovered, listener(lab, GROUP) as joined, capture(lab) as wan:
        send(lab, UNCOVERED_GROUP, ttl=8, count=5)
        send(lab, GROUP, ttl=1, count=5)
        assert received(uncovered, 1.0) == received(joined, 0.2) == []
    assert to(wan, UNCOVERED_GROUP) == to(wan, GROUP) == []
    counts = eventually(member_a, lambda c: c["drops"].get("no_policy", 0) >= 5)
    assert counts["outbound_packets"] == 5
    assert counts["drops"] == {"no_policy": 5}


def test_stop_removes_the_filters_and_start_adopts_leftovers(lab) -> None:
    dataplane = Dataplane(lab.member_a, description(lab), workers=1)
    dataplane.update(group_policy())
    dataplane.start()
    try:
        installed = tc(lab.member_a, "filter", "show", "dev", "lan", "ingress")
        assert dataplane.multicast is not None
        dataplane.multicast.connect()  # again, as a successor finding them
        assert tc(lab.member_a, "filter", "show", "dev", "lan", "ingress") == installed
        assert "Egress Redirect to device gvpn0o" in installed
        assert "Egress Redirect to device gvpn0i" in tc(lab.member_a, "filter", "show", "dev", "wan", "ingress")
    finally:
        dataplane.stop()
    for device in ("lan", "wan"):
        assert "clsact" not in tc(lab.member_a, "qdisc", "show", "dev", device)
