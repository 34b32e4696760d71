"""The data plane's packets as the WAN sees them: `groupvpn ks` and `groupvpn member` daemons in the lab.

The unit tests in ``tests/dataplane`` check each behaviour on bytes; here
the same behaviours are checked on real interfaces between real daemons
(``test_dataplane``'s group lab: h``n`` -- gm``n`` -- WAN router -- ks),
with tcpdump on the WAN router and tshark reading the outer headers:

* the outer header carries the inner DSCP, and its DF bit follows each
  member's ``df-bit`` (clear, set, copy);
* a 1500-byte ping with DF clear crosses pre-fragmented (inner fragments,
  each in its own unfragmented ESP packet); with DF set its sender gets
  ICMP fragmentation-needed naming the largest inner packet that fits;
* ESP the router fragments on a link with a lower MTU is reassembled;
* an ESP packet replayed on the WAN after the group's anti-replay window
  is dropped and counted; with ``no-anti-replay`` it is delivered again.

Every wait is bounded; the fixture tears everything down, also after a
failure.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from netns_lab import registered
from test_dataplane import WINDOW, GroupLab, ks_conf, stop
from test_dataplane import group as group  # noqa: F401  (the fixture, reused)
from test_dataplane import ipv4_packets, pytestmark  # noqa: F401  (root, tools, timeout)

from groupvpn.wire.esp import TIMESTAMP_SHIM_SIZE
from groupvpn.wire.numbers import IpProtocol

from processes import PYTHON, Daemon, wait_for  # noqa: E402  (on sys.path through test_dataplane)
from tshark import Frame, read_fields  # noqa: E402

DF_BIT = "set security group-vpn member ipsec vpn lab df-bit {}\n"
# The group's suite, AES-256-CBC with HMAC-SHA-256-128 (RFC 4303 §2, RFC 3602, RFC 4868): SPI and
# sequence number, the IV, the ICV; the plaintext is padded to the cipher block and ends in pad
# length and next header.
ESP_HEADER, IV, ICV, BLOCK, TRAILER = 8, 16, 16, 16, 2
IPV4_HEADER = 20
INJECT = (  # an IPv4 packet sent as it is (IP_HDRINCL), routed by its destination
    "import socket, sys; raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW); "
    "raw.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], 0))"
)


def start(group: GroupLab, window: str = f"anti-replay-time-window {WINDOW};", members: dict[int, str] = {}) -> None:
    """The key server with the group's anti-replay ``window`` statement, then every member with its
    ``members`` set commands; returns once each h``n`` reaches the next host through the group."""
    text = ks_conf(group.lab, group.directory / "ks.db").replace(f"anti-replay-time-window {WINDOW};", window)
    group.daemons["ks"] = Daemon("ks", "ks", group.directory, group.lab.ks).write(text).start()
    for n in group.lab.numbers:
        member = Daemon("member", f"gm{n}", group.directory, group.lab.gm(n), extra=("--dataplane-workers", "1"))
        group.daemons[f"gm{n}"] = member.write(group.member_text(n, members.get(n, ""))).launch()
    for n in group.lab.numbers:
        group.member(n).ready()
        wait_for(lambda n=n: registered(group.member(n)), timeout=20, what=f"gm{n} to register")
    for n in group.lab.numbers:
        running = lambda n=n: group.statistics(n)["data_plane"].startswith("running")  # noqa: E731
        wait_for(running, timeout=30, what=f"gm{n}'s data plane")
    # A member drops the group's traffic until its data plane runs with its policy: wait for encryption.
    for n in group.lab.numbers:
        destination = group.host(n % len(group.lab.numbers) + 1)
        through = lambda n=n, d=destination: group.ping(n, d) and group.statistics(n)["encrypted_packets"]  # noqa: E731
        wait_for(through, timeout=30, what=f"h{n} to reach {destination} through the group")


def ping(group: GroupLab, source: int, destination: int, *options: str) -> subprocess.CompletedProcess[str]:
    command = ("ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", *options, group.host(destination))
    return group.run(group.lab.host(source), *command)


def esp(frames: list[Frame], source: str, destination: str) -> list[Frame]:
    """The ESP frames (or outer fragments) from ``source`` to ``destination``."""
    wanted = ((str(IpProtocol.ESP.value),), (source,), (destination,))
    return [f for f in frames if (f.values("ip.proto")[:1], f.values("ip.src"), f.values("ip.dst")) == wanted]


def outer(frame: Frame) -> tuple[int, int]:
    """(DSCP, DF) of a frame's outer header."""
    return frame.ints("ip.dsfield.dscp")[0], frame.ints("ip.flags.df")[0]


def drain(captures: list[subprocess.Popen[bytes]]) -> None:
    """Stop ``captures`` once they hold what crossed: tcpdump gets packets in blocks the kernel hands
    over at least every second, and a block not yet handed over when it stops is lost."""
    time.sleep(1.5)
    for capture in captures:
        stop(capture)


OUTER = ["ip.src", "ip.dst", "ip.proto", "ip.dsfield.dscp", "ip.flags.df", "ip.flags.mf", "ip.frag_offset", "ip.len"]


@pytest.mark.parametrize("group", [3], indirect=True)
def test_outer_header_keeps_the_dscp_and_sets_df_per_member(group, tmp_path):
    start(group, members={1: DF_BIT.format("clear"), 2: DF_BIT.format("set"), 3: DF_BIT.format("copy")})
    pcaps = {n: tmp_path / f"wan-gm{n}.pcap" for n in group.lab.numbers}
    captures = [group.capture(group.lab.wan, f"gm{n}", pcap) for n, pcap in pcaps.items()]
    # DSCP 46 (EF) with DF set through gm1 (clear); DF clear through gm2 (set); gm3 (copy) gets DSCP 8
    # with DF set and DSCP 16 with DF clear.
    assert ping(group, 1, 2, "-Q", "0xb8", "-M", "do").returncode == 0
    assert ping(group, 2, 3, "-M", "dont").returncode == 0
    assert ping(group, 3, 1, "-Q", "0x20", "-M", "do").returncode == 0
    assert ping(group, 3, 1, "-Q", "0x40", "-M", "dont").returncode == 0
    drain(captures)
    frames = {n: read_fields(pcap, OUTER) for n, pcap in pcaps.items()}
    seen = {n: [outer(f) for f in esp(frames[n], group.host(n), group.host(n % 3 + 1))] for n in pcaps}
    assert seen == {1: [(46, 0)] * 2, 2: [(0, 1)] * 2, 3: [(8, 1)] * 2 + [(16, 0)] * 2}, seen


@pytest.mark.parametrize("group", [2], indirect=True)
def test_fragmentation_before_and_after_encryption(group, tmp_path):
    # The router's link to gm2 (both ends) carries at most 1000 bytes: ESP from gm1 is fragmented there.
    for namespace, interface in ((group.lab.wan, "gm2"), (group.lab.gm(2), "wan")):
        command = ["ip", "-n", namespace, "link", "set", interface, "mtu", "1000"]
        subprocess.run(command, check=True, timeout=10)
    start(group)
    wan1, wan2, lan1 = tmp_path / "wan-gm1.pcap", tmp_path / "wan-gm2.pcap", tmp_path / "h1.pcap"
    captures = [
        group.capture(group.lab.wan, "gm1", wan1),
        group.capture(group.lab.wan, "gm2", wan2),
        group.capture(group.lab.host(1), "eth0", lan1),
    ]
    big = ping(group, 1, 2, "-M", "dont", "-s", "1472")  # a 1500-byte packet, DF clear
    assert big.returncode == 0, big.stdout
    refused = ping(group, 1, 2, "-M", "do", "-s", "1472")  # DF set: too big for gm1's ESP
    assert refused.returncode != 0
    medium = ping(group, 1, 2, "-M", "dont", "-s", "1200")  # fits gm1's ESP, not the router's link to gm2
    assert medium.returncode == 0, medium.stdout
    drain(captures)

    largest = (1500 - IPV4_HEADER - ESP_HEADER - IV - ICV) // BLOCK * BLOCK - TRAILER - TIMESTAMP_SHIM_SIZE
    # gm1 -> router: pre-fragmented 1500-byte requests are two whole ESP packets each; no outer fragments.
    from_h1 = esp(read_fields(wan1, OUTER), group.host(1), group.host(2))
    assert all(f.ints("ip.flags.mf") == (0,) and f.ints("ip.frag_offset") == (0,) for f in from_h1)
    assert all(f.ints("ip.len")[0] <= 1500 for f in from_h1)
    assert len(from_h1) == 2 * 2 + 2, [f.fields for f in from_h1]  # the refused pings never left gm1
    # h1 was told the largest inner packet that fits, by gm1's LAN address, quoting its own request.
    errors = []
    for packet in ipv4_packets(lan1):
        if packet[9] == IpProtocol.ICMP and packet[20:22] == bytes((3, 4)):
            errors.append((packet[12:16], int.from_bytes(packet[26:28], "big")))
    gm1_lan = group.lab.member_lan(1).ip.packed
    assert errors and all(error == (gm1_lan, largest) for error in errors), (errors, largest)
    assert f"mtu = {largest}" in refused.stdout, refused.stdout
    # router -> gm2: ESP too big for the link arrives in outer fragments, which gm2 reassembles (the pings
    # above were answered): the 1200-byte requests' and the first piece of each 1500-byte request's.
    # gm2's own replies are pre-fragmented to fit its 1000-byte link.
    on_link_to_gm2 = read_fields(wan2, OUTER)
    to_gm2 = esp(on_link_to_gm2, group.host(1), group.host(2))
    first = [f for f in to_gm2 if f.ints("ip.flags.mf") == (1,) and f.ints("ip.frag_offset") == (0,)]
    last = [f for f in to_gm2 if f.ints("ip.flags.mf") == (0,) and f.ints("ip.frag_offset") != (0,)]
    assert (len(first), len(last)) == (2 + 2, 2 + 2), [f.fields for f in to_gm2]
    assert all(f.ints("ip.len")[0] <= 1000 for f in to_gm2)
    from_h2 = esp(on_link_to_gm2, group.host(2), group.host(1))
    assert from_h2 and all(f.ints("ip.flags.mf") == (0,) and f.ints("ip.len")[0] <= 1000 for f in from_h2)


def replay(group: GroupLab, tmp_path: Path, wait: float) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Capture h1's next echo request to h2 as ESP on the WAN, replay it from the router ``wait`` s later;
    returns the echo requests h2 received after the replay, and gm2's statistics after and before it."""
    wan_pcap, lan_pcap = tmp_path / "wan.pcap", tmp_path / "h2.pcap"
    wan = group.capture(group.lab.wan, "gm1", wan_pcap)
    assert ping(group, 1, 2, "-c", "1").returncode == 0
    drain([wan])
    h1 = group.lab.host_address(1).ip.packed
    (request,) = [p for p in ipv4_packets(wan_pcap) if p[9] == IpProtocol.ESP and p[12:16] == h1]
    time.sleep(wait)
    before = group.settled(2)
    lan = group.capture(group.lab.host(2), "eth0", lan_pcap)
    injected = group.run(group.lab.wan, PYTHON, "-c", INJECT, request.hex(), group.host(2))
    assert injected.returncode == 0, injected.stderr
    after = group.settled(2)
    drain([lan])
    echoes = [p for p in ipv4_packets(lan_pcap) if p[9] == IpProtocol.ICMP and p[20] == 8]
    return len(echoes), after, before


@pytest.mark.parametrize("group", [2], indirect=True)
def test_replay_after_the_window_is_dropped_and_counted(group, tmp_path):
    start(group, window="anti-replay-time-window 1;")
    echoes, after, before = replay(group, tmp_path, wait=2.5)
    assert (echoes, after["decrypted_packets"] - before["decrypted_packets"]) == (0, 0)
    drops = {reason: count - before["drops"].get(reason, 0) for reason, count in after["drops"].items()}
    assert {reason: n for reason, n in drops.items() if n} == {"replay_window": 1}, drops


@pytest.mark.parametrize("group", [2], indirect=True)
def test_replay_without_anti_replay_is_delivered_again(group, tmp_path):
    start(group, window="no-anti-replay;")
    echoes, after, before = replay(group, tmp_path, wait=2.5)
    assert (echoes, after["decrypted_packets"] - before["decrypted_packets"]) == (1, 1)
    assert after["drops"] == before["drops"]
