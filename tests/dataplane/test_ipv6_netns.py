"""IPv6 between two hosts through two members' real data planes, header-preserved (issue 6).

The ``MemberPair`` lab built dual stack (2001:2::/48 next to
198.18.0.0/15); both members run a ``Dataplane`` that steers IPv4 and IPv6,
with one policy holding an SA for each family's LANs (``SPI`` and
``SPI6``).  Captures on the WAN router's link to member A show what
crosses the WAN; tshark, given the SA's keys, decrypts it independently.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address
from pathlib import Path

import dpkt
import pytest
from dataplane_packets import GCM128, keys_for
from member_pair import HOST6_A, HOST6_B, HOST_A, HOST_B, SPI, SPI6, MemberPair, description, ip, policy, running
from netns_traffic import TIMEOUT, between_hosts, capture, eventually, ping, settled, tcp_round_trip, udp_socket
from tshark import read_fields, requires_tshark

from groupvpn.dataplane.manager import Dataplane
from groupvpn.dataplane.namespace import in_namespace
from groupvpn.dataplane.steering import SteeringError
from groupvpn.ops.export import UAT_OPTION, esp_sa_row

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "ping", "tcpdump")),
        reason="needs root, iproute2, ping and tcpdump",
    ),
]

WAN_MTU = 1500  # the veths' and the data plane's
IPV6_HEADER, UDP_HEADER = 40, 8
EF = 46 << 2  # traffic class with DSCP Expedited Forwarding, ECN not-ECT
HOPS = 37  # an unusual hop limit for the pings, to recognise it outside
ICMPV6_PACKET_TOO_BIG = 2
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE = 23, 3  # linux/in6.h: send at the interface MTU, not the path MTU


@pytest.fixture(scope="module")
def lab() -> Iterator[MemberPair]:
    pair = MemberPair.unique()
    try:
        pair.build(ipv6=True)
        yield pair
    finally:
        pair.remove()


@pytest.fixture
def members(lab: MemberPair) -> Iterator[tuple[Dataplane, Dataplane]]:
    with running(lab, description(lab, (4, 6)), policy(GCM128, keys_for(GCM128), families=(4, 6))) as pair:
        yield pair


def spi(packet: dpkt.ip6.IP6) -> int:
    return packet.extension_hdrs[dpkt.ip.IP_PROTO_ESP].spi


def test_ipv6_hosts_talk_through_esp_with_their_own_addresses_traffic_class_and_hop_limit(
    lab: MemberPair, members
) -> None:
    member_a, member_b = members
    payload = os.urandom(300_000)
    with capture(lab, 6) as wan:
        assert ping(lab.host_a, HOST6_B, 3, "-Q", str(EF), "-t", str(HOPS))
        assert tcp_round_trip(lab, payload, HOST6_A, HOST6_B) == hashlib.sha256(payload).digest()
        a_counts, b_counts = settled(member_a, member_b)

    crossing = between_hosts(wan, HOST6_A, HOST6_B)
    assert crossing and all(p.nxt == dpkt.ip.IP_PROTO_ESP for p in crossing), "cleartext between the hosts on the WAN"
    assert {spi(p) for p in crossing} == {SPI6}
    from_a = [p for p in crossing if p.src == ip_address(HOST6_A).packed]
    assert 0 < len(from_a) < len(crossing), "ESP in one direction only"
    both_ways = a_counts["encrypted_packets"] + b_counts["encrypted_packets"]
    assert both_ways >= 2 * 3 + len(payload) // WAN_MTU  # pings, TCP segments at the least
    # Member A forwards the ping once into its TUN (hop limit - 1), the outer header copies the
    # rest, and member A forwards the ESP packet once more onto the WAN: HOPS - 2 outside.
    pings, tcp = [p for p in from_a if p.fc == EF], [p for p in from_a if p.fc != EF]
    assert len(pings) >= 3 and {p.hlim for p in pings} == {HOPS - 2}
    assert {(p.fc, p.hlim) for p in tcp} == {(0, 64 - 2)}  # the kernel's defaults
    assert max(IPV6_HEADER + p.plen for p in crossing) <= WAN_MTU

    for counts in (a_counts, b_counts):
        assert counts["workers_running"] == 2 and counts["policy_version"] == 1
        assert counts["encrypted_packets"] > 0 and counts["write_errors"] == 0
    # TCP's first full-size segments met the path MTU; nothing else was dropped (nor did the
    # kernel send anything of its own, such as MLD reports, into the TUNs)
    assert set(a_counts["drops"]) <= {"fragmentation_needed"} and b_counts["drops"] == {}
    encrypted, decrypted = a_counts["encrypted_packets"], b_counts["decrypted_packets"]
    assert encrypted >= len(from_a) and encrypted >= decrypted >= encrypted - 2  # see test_worker_netns


@requires_tshark
def test_tshark_decrypts_the_wan_capture_into_the_hosts_own_packets(lab: MemberPair, members, tmp_path: Path) -> None:
    pcap = tmp_path / "wan.pcap"
    with capture(lab, 6, save=pcap):
        assert ping(lab.host_a, HOST6_B, 2, "-Q", str(EF), "-t", str(HOPS))
        with udp_socket(lab.host_a, HOST6_A, 0) as a, udp_socket(lab.host_b, HOST6_B, 7006) as b:
            a.sendto(b"udp over ipv6", (HOST6_B, 7006))
            assert b.recvfrom(100)[0] == b"udp over ipv6"
    keys = keys_for(GCM128)
    prefs = ["esp.enable_encryption_decode:TRUE", "esp.enable_authentication_check:TRUE"]
    prefs.append(UAT_OPTION + esp_sa_row("IPv6", SPI6, GCM128, keys))
    fields = ["esp.spi", "esp.icv_good", "ipv6.src", "ipv6.dst", "ipv6.tclass", "ipv6.hlim", "ipv6.flow"]
    frames = [f for f in read_fields(pcap, [*fields, "icmpv6.type", "udp.payload"], prefs=prefs) if f.values("esp.spi")]

    # The ESP packets' outer header and the decrypted inner one: the same addresses, traffic
    # class and flow label; the hop limit one lower outside (member A forwarded it once more).
    requests = [f for f in frames if f.ints("icmpv6.type") == (128,)]
    replies = [f for f in frames if f.ints("icmpv6.type") == (129,)]
    (datagram,) = [f for f in frames if f.values("udp.payload")]
    assert len(requests) == len(replies) == 2
    for frame in frames:
        assert frame.ints("esp.spi") == (SPI6,) and frame.ints("esp.icv_good") == (1,), frame.number
        # Many senders share the group SA, each with its own sequence numbers (digest §9.1):
        # tshark, expecting one sender per SPI, warns about repeats; nothing else may be wrong.
        assert not frame.malformed and all(e.message.startswith("Wrong Sequence Number") for e in frame.expert)
        outer_flow, inner_flow = frame.ints("ipv6.flow")
        assert outer_flow == inner_flow
    assert any(frame.ints("ipv6.flow")[0] for frame in frames)  # the kernel labels flows (auto_flowlabels)
    for frame in requests:
        assert frame.values("ipv6.src") == (HOST6_A,) * 2 and frame.values("ipv6.dst") == (HOST6_B,) * 2
        assert frame.ints("ipv6.tclass") == (EF, EF) and frame.ints("ipv6.hlim") == (HOPS - 2, HOPS - 1)
    for frame in replies:
        assert frame.values("ipv6.src") == (HOST6_B,) * 2 and frame.values("ipv6.dst") == (HOST6_A,) * 2
        outer, inner = frame.ints("ipv6.hlim")
        assert outer == inner - 2  # member B, then the WAN router, forwarded it after encryption
    assert datagram.hexes("udp.payload") == (b"udp over ipv6",)


def packet_too_big(icmp: socket.socket) -> tuple[str, int, bytes]:
    """The next ICMPv6 Packet Too Big on the raw socket ``icmp``: its source, MTU and quoted packet."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        message, sender = icmp.recvfrom(2048)  # other ICMPv6 (neighbour discovery) is skipped
        if message[0] == ICMPV6_PACKET_TOO_BIG:
            (mtu,) = struct.unpack_from("!I", message, 4)
            return sender[0], mtu, message[8:]
    raise AssertionError(f"no Packet Too Big within {TIMEOUT} s")


def test_too_big_for_the_wan_gets_packet_too_big_from_member_a_and_tcp_finds_the_path_mtu(
    lab: MemberPair, members
) -> None:
    member_a, _ = members
    ip("-n", lab.host_a, "-6", "route", "flush", "cache")
    icmp = in_namespace(lab.host_a, lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
    with icmp, udp_socket(lab.host_a, HOST6_A, 0) as a, udp_socket(lab.host_b, HOST6_B, 7007) as b:
        icmp.settimeout(TIMEOUT)
        a.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DONTFRAG, 1)
        a.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)

        def send(size: int) -> bytes:
            """A datagram making an IPv6 packet of ``size`` octets, unfragmented whatever the path MTU."""
            data = os.urandom(size - IPV6_HEADER - UDP_HEADER)
            a.sendto(data, (HOST6_B, 7007))
            return data

        quoted = send(WAN_MTU)
        source, mtu, invoking = packet_too_big(icmp)
        assert source == lab.member_a_lan6 and 1280 <= mtu < WAN_MTU
        assert invoking[24:40] == ip_address(HOST6_B).packed and quoted[:16] in invoking
        fits = send(mtu)  # the largest packet that crosses ...
        assert b.recv(WAN_MTU) == fits
        send(mtu + 1)  # ... and one octet more does not
        assert packet_too_big(icmp)[:2] == (source, mtu)
    counts = eventually(member_a, lambda c: c["drops"].get("fragmentation_needed", 0) >= 2)
    assert counts["drops"]["fragmentation_needed"] == 2

    ip("-n", lab.host_a, "-6", "route", "flush", "cache")
    payload = os.urandom(200_000)
    assert tcp_round_trip(lab, payload, HOST6_A, HOST6_B) == hashlib.sha256(payload).digest()
    assert f" mtu {mtu} " in ip("-n", lab.host_a, "-6", "route", "get", HOST6_B)
    assert member_a.counters(wait=TIMEOUT)["drops"]["fragmentation_needed"] > 2


def test_ipv4_and_ipv6_cross_at_the_same_time_each_under_its_own_sa(lab: MemberPair, members) -> None:
    member_a, member_b = members
    payloads = {4: os.urandom(200_000), 6: os.urandom(200_000)}
    hosts = {4: (HOST_A, HOST_B), 6: (HOST6_A, HOST6_B)}

    def traffic(family: int) -> bool:
        source, destination = hosts[family]
        digest = tcp_round_trip(lab, payloads[family], source, destination)
        return ping(lab.host_a, destination, 3) and digest == hashlib.sha256(payloads[family]).digest()

    with capture(lab, 4) as wan4, capture(lab, 6) as wan6:
        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(traffic, (4, 6))) == [True, True]
        a_counts, b_counts = settled(member_a, member_b)

    crossing4, crossing6 = between_hosts(wan4, *hosts[4]), between_hosts(wan6, *hosts[6])
    assert crossing4 and {(p.p, p.data.spi) for p in crossing4} == {(dpkt.ip.IP_PROTO_ESP, SPI)}
    assert crossing6 and {(p.nxt, spi(p)) for p in crossing6} == {(dpkt.ip.IP_PROTO_ESP, SPI6)}
    for counts in (a_counts, b_counts):
        assert counts["encrypted_packets"] > 0 and counts["write_errors"] == 0


def test_a_member_forwarding_ipv6_only_on_its_interfaces_is_refused(lab: MemberPair) -> None:
    """The kernel forwards IPv6 by the namespace's ``all`` setting alone: the steering would lead nowhere."""

    def sysctl(*settings: str) -> None:
        for setting in settings:
            ip("netns", "exec", lab.member_a, "sysctl", "-qw", f"net.ipv6.conf.{setting}")

    sysctl("all.forwarding=0", "lan.forwarding=1", "wan.forwarding=1")  # "all" first: it sets every interface
    try:
        with pytest.raises(SteeringError, match=r"^the namespace does not forward IPv6 "):
            Dataplane(lab.member_a, description(lab, (4, 6)), workers=1).start()
    finally:
        sysctl("all.forwarding=1")
