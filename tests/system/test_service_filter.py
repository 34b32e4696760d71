"""Service filters keep traffic out of the group VPN: real members, their ip rules, a capture on the WAN.

``test_dataplane``'s group lab with three members, each with the lab's
configuration plus one service filter on its WAN's output (the seed's
bypass shape)::

    term udp-5000  protocol udp, destination-port 5000   skip
    term lans      destination-address h1's and h2's LANs   service
    (no match: skip, Junos's implicit last term)

The group's policy covers every LAN to every LAN.  Captured on the WAN
router's link to gm1: h1 -> h2 UDP 5000 crosses in clear although the
group covers it (the skip term comes first), UDP 6000 and pings to h2
are ESP (serviced), and pings to h3 cross in clear (no term services
h3's LAN: implicit skip) while h3's answers, bound for h1's LAN, are ESP.
The skipped packets never reach gm1's workers (their clear counter does
not move): the member's ip rules route them.  Every wait is bounded.
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address

import dpkt
import pytest
from netns_lab import registered
from test_dataplane import group as group  # noqa: F401  (the fixture, reused)
from test_dataplane import ipv4_packets, stop
from test_dataplane import pytestmark  # noqa: F401  (root, tools, timeout)

from groupvpn.ops.lab_configs import SERVICE_SET
from groupvpn.wire.numbers import IpProtocol

from processes import PYTHON, wait_for  # noqa: E402  (on sys.path through test_dataplane)

FILTER = "set firewall family inet service-filter bypass term "
SEND = (  # argv: destination, port, count; a few datagrams, then exits
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(int(sys.argv[3])):\n"
    "    s.sendto(b'service filter probe', (sys.argv[1], int(sys.argv[2])))\n"
)


def filter_commands(lans: list[str]) -> str:
    lines = [
        f"{FILTER}udp-5000 from protocol udp",
        f"{FILTER}udp-5000 from destination-port 5000",
        f"{FILTER}udp-5000 then skip",
        *(f"{FILTER}lans from destination-address {lan}" for lan in lans),
        f"set interfaces wan unit 0 family inet service output service-set {SERVICE_SET} service-filter bypass",
    ]
    return "".join(f"{line}\n" for line in lines)


@pytest.mark.parametrize("group", [3], indirect=True)
def test_skipped_and_unmatched_traffic_crosses_in_clear_and_serviced_traffic_as_esp(group, tmp_path):
    h1, h2, h3 = (group.host(n) for n in (1, 2, 3))
    group.start_ks()
    group.start_members(filter_commands([str(group.lab.host_address(n).network) for n in (1, 2)]))
    for n in group.lab.numbers:
        wait_for(lambda n=n: registered(group.member(n)), timeout=20, what=f"gm{n} to register")
        running = lambda n=n: group.statistics(n)["data_plane"].startswith("running")  # noqa: E731
        wait_for(running, timeout=30, what=f"gm{n}'s data plane")
    wait_for(lambda: group.ping(1, h2), timeout=30, what="h1 to reach h2 through the group")
    wait_for(lambda: group.ping(1, h3), timeout=30, what="h1 to reach h3")
    before = group.settled(1)

    pcap = tmp_path / "gm1.pcap"
    capture = group.capture(group.lab.wan, "gm1", pcap)  # the WAN router's link to gm1
    assert group.ping(1, h2, count=3)
    assert group.ping(1, h3, count=2)
    for port in (5000, 6000):
        assert group.run(group.lab.host(1), PYTHON, "-c", SEND, h2, str(port), "2").returncode == 0
    time.sleep(0.5)  # the last replies cross the WAN link
    stop(capture)
    after = group.settled(1)

    hosts = {h1, h2, h3}
    packets = [dpkt.ip.IP(raw) for raw in ipv4_packets(pcap)]
    between_hosts = [p for p in packets if {str(IPv4Address(p.src)), str(IPv4Address(p.dst))} <= hosts]
    esp = [p for p in between_hosts if p.p == IpProtocol.ESP]
    clear = [p for p in between_hosts if p.p != IpProtocol.ESP]

    def flow(packet: dpkt.ip.IP) -> tuple[str, str]:
        return str(IPv4Address(packet.src)), str(IPv4Address(packet.dst))

    # In clear: the skipped UDP 5000 datagrams and the echo requests to h3, which no term services.
    udp_5000 = [p for p in clear if p.p == IpProtocol.UDP and p.data.dport == 5000]
    requests_to_h3 = [p for p in clear if p.p == IpProtocol.ICMP and p.data.type == dpkt.icmp.ICMP_ECHO]
    assert [flow(p) for p in udp_5000] == [(h1, h2)] * 2
    assert [flow(p) for p in requests_to_h3] == [(h1, h3)] * 2
    assert len(clear) == 4, [(flow(p), p.p) for p in clear]
    # ESP, with the hosts' addresses: everything h1 sends to h2's LAN but UDP 5000 (3 echo requests, 2 UDP
    # datagrams), and h3's echo replies (bound for h1's LAN, serviced by gm3's filter).
    assert sum(flow(p) == (h1, h2) for p in esp) == 5
    assert sum(flow(p) == (h3, h1) for p in esp) == 2
    assert not [p for p in esp if flow(p) == (h1, h3)]
    # The rules routed the skipped packets; gm1's workers encrypted the rest and passed nothing in clear.
    assert after["encrypted_packets"] - before["encrypted_packets"] == 5
    assert after["clear_packets"] == before["clear_packets"]
    assert after["service_filters"] == "output bypass (inet)"
