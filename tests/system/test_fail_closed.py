"""A member is fail-closed from its start, through data-plane restarts and after it exits.

``test_dataplane``'s group lab with two members; only gm1 and (later) the
key server run.  A probe in h1 sends a numbered UDP datagram to h2 every
10 ms, stamped with its send time, while tcpdump records the WAN router's
link to gm1.  Before gm1 starts the probes cross the WAN in clear (the lab
routes them; this shows the capture sees them).  From the moment gm1
serves its control socket none does: its steering drops them while its
data plane starts (the log says so), its workers drop them with no policy
(counted) until it registers, then they are ESP; a reload that restarts
the data plane, and gm1's exit, leave the steering dropping them.  A
member started with the service set removed from its configuration
removes what its predecessor left, and the probes cross in clear again.
The windows are real (each held probes), and every wait is bounded.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
from datetime import datetime
from pathlib import Path

import dpkt
import pytest
from netns_lab import registered
from test_dataplane import GroupLab, ipv4_packets, stop
from test_dataplane import group as group  # noqa: F401  (the fixture, reused)
from test_dataplane import pytestmark  # noqa: F401  (root, tools, timeout)

from groupvpn.wire.numbers import IpProtocol

from processes import PYTHON, Daemon, groupvpn, wait_for  # noqa: E402  (on sys.path through test_dataplane)

MARK = b"fail-closed probe"
PORT = 5001
PROBE = (  # numbered, time-stamped datagrams every 10 ms; stops by itself after argv[2] of them
    "import socket, struct, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for seq in range(int(sys.argv[2])):\n"
    f"    s.sendto({MARK!r} + struct.pack('!Id', seq, time.time()), (sys.argv[1], {PORT}))\n"
    "    time.sleep(0.01)\n"
)
DF_SET = "set security group-vpn member ipsec vpn lab df-bit set\n"


def clear_probes(pcap: Path) -> list[tuple[int, float]]:
    """(sequence number, send time) of each probe that crossed the WAN in clear."""
    found = []
    for packet in map(dpkt.ip.IP, ipv4_packets(pcap)):
        if packet.p == IpProtocol.UDP and packet.data.data.startswith(MARK):
            found.append(struct.unpack("!Id", packet.data.data[len(MARK) :]))
    return found


def esp_times(pcap: Path, source: str, destination: str) -> list[float]:
    """When each ESP packet from ``source`` to ``destination`` crossed the WAN (header-preserving)."""
    with open(pcap, "rb") as f:
        frames = [(t, dpkt.ethernet.Ethernet(frame)) for t, frame in dpkt.pcap.Reader(f)]
    return [
        t
        for t, frame in frames
        if isinstance(frame.data, dpkt.ip.IP)
        and frame.data.p == IpProtocol.ESP
        and (dpkt.utils.inet_to_str(frame.data.src), dpkt.utils.inet_to_str(frame.data.dst)) == (source, destination)
    ]


def logged(log: str, text: str) -> list[float]:
    """When each line of a daemon ``log`` containing ``text`` was written (its timestamp, local time)."""
    return [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() for line in log.splitlines() if text in line
    ]


def ip_in(namespace: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", namespace, *args], capture_output=True, text=True, timeout=10, check=True).stdout


def lan_received(namespace: str) -> int:
    """The packets a member's LAN interface received so far."""
    (link,) = json.loads(ip_in(namespace, "-j", "-s", "link", "show", "lan"))
    return int(link["stats64"]["rx"]["packets"])


def member(group: GroupLab, name: str, text: str) -> Daemon:
    """A member daemon in gm1's namespace configured by ``text``, started (its control socket answers)."""
    daemon = Daemon("member", name, group.directory, group.lab.gm(1), extra=("--dataplane-workers", "1"))
    group.daemons[name] = daemon.write(text).start()
    return daemon


@pytest.mark.parametrize("group", [2], indirect=True)
def test_no_probe_crosses_the_wan_in_clear_from_start_through_restart_to_after_exit(group: GroupLab, tmp_path):
    lab, pcap = group.lab, tmp_path / "wan.pcap"
    capture = group.capture(lab.wan, "gm1", pcap)
    probe = ["ip", "netns", "exec", lab.host(1), PYTHON, "-c", PROBE, group.host(2), "6000"]
    group.captures.append(subprocess.Popen(probe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # killed too
    wait_for(lambda: clear_probes(pcap), timeout=10, what="probes in clear before any member runs")

    # gm1 starts with no key server: from its control socket on, nothing of h1's crosses in clear.
    gm1 = member(group, "gm1", group.member_text(1))
    started = time.time()
    assert "lookup 7100 proto 71" in ip_in(lab.gm(1), "rule", "show")
    wait_for(lambda: group.statistics(1)["data_plane"].startswith("running"), timeout=20, what="gm1's data plane")
    counted = lambda: group.statistics(1)["drops"].get("no_policy", 0) >= 10  # noqa: E731
    wait_for(counted, timeout=10, what="gm1's workers to drop probes for want of a policy")

    # The key server comes up: gm1 registers and the probes cross as ESP.
    group.start_ks()
    wait_for(lambda: registered(gm1), timeout=20, what="gm1 to register")
    wait_for(lambda: group.statistics(1)["encrypted_packets"] >= 10, timeout=10, what="gm1 to encrypt probes")

    # A changed VPN restarts the data plane; the steering drops the probes meanwhile.
    gm1.write(group.member_text(1, DF_SET))
    reloaded = groupvpn("member", "reload", "--socket", str(gm1.socket))
    assert reloaded.returncode == 0, reloaded.stderr
    wait_for(lambda: gm1.log.count("vpn lab: data plane up") == 2, timeout=20, what="the data plane to restart")
    wait_for(lambda: registered(gm1), timeout=20, what="gm1 to register again")
    wait_for(lambda: group.statistics(1)["encrypted_packets"] >= 10, timeout=10, what="encryption after the restart")

    # gm1 exits: its steering stays, the tables hold only their blackholes, and probes keep arriving.
    assert gm1.stop() == 0
    table = ip_in(lab.gm(1), "route", "show", "table", "7100").split()
    assert "lookup 7100 proto 71" in ip_in(lab.gm(1), "rule", "show")
    assert table == "blackhole default proto 71 metric 4294967295".split(), table
    arrived = lan_received(lab.gm(1))
    wait_for(lambda: lan_received(lab.gm(1)) >= arrived + 20, timeout=5, what="probes to reach gm1 after its exit")

    # A member whose configuration no longer applies the service set removes what gm1 left.
    unprotected = "".join(line for line in group.member_text(1).splitlines(True) if " service " not in line)
    released = time.time()
    member(group, "gm1-unprotected", unprotected)
    assert "proto 71" not in ip_in(lab.gm(1), "rule", "show")
    again = lambda: any(at > released for _, at in clear_probes(pcap))  # noqa: E731
    wait_for(again, timeout=10, what="probes in clear again")
    stop(capture)

    clear = clear_probes(pcap)
    leaked = [(seq, at) for seq, at in clear if started <= at < released]
    assert not leaked, f"{len(leaked)} probes crossed in clear while gm1 or its steering ran, first {leaked[:3]}"
    assert any(at < started for _, at in clear)  # the capture saw them before gm1 ran
    log = gm1.log
    first_up, second_up = logged(log, "vpn lab: data plane up")
    (restart,) = logged(log, "data plane stopped (configuration changed)")
    (gone,) = logged(log, "data plane stopped (member stopping)")
    # The windows while no data plane ran held probes too (one every 10 ms): gm1 starting and restarting.
    assert first_up - started > 0.05 and second_up - restart > 0.05
    assert len(logged(log, "service-set traffic dropped")) == 3, log  # at start, restart and exit
    esp = esp_times(pcap, group.host(1), group.host(2))
    assert any(first_up < at < restart for at in esp) and any(second_up < at < gone for at in esp)
