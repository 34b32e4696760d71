"""The member data plane end to end: `groupvpn ks` and three `groupvpn member` daemons in `groupvpn lab`'s topology.

::

    h1 198.19.1.2 -- lan|gm1|wan 198.18.1.2 --+
    h2 198.19.2.2 -- lan|gm2|wan 198.18.2.2 --+-- WAN router -- ks 198.18.0.2
    h3 198.19.3.2 -- lan|gm3|wan 198.18.3.2 --+

``ops.lab`` builds the namespaces (names unique to the run, everything in
198.18.0.0/15, no route out).  The key server's group protects LAN to LAN
(198.19.0.0/16 both ways, AES-256-CBC with HMAC-SHA-256-128, a 5-s
anti-replay window) except UDP discard (port 9, a deny entry).  Each
member runs inside its namespace with its service set on ``wan`` (the
lab's configuration), so ``lan`` is steered into its data plane.

Hosts ping each other across the group; a capture on the WAN router,
decoded by tshark with the keys `groupvpn export wireshark-keys` prints,
shows ESP between the hosts' own addresses with good ICVs and, behind the
timestamp shim, the packet h1 sent (one hop older); UDP discard crosses
in clear; traffic no rule covers is dropped and counted.  With no key
server answering, members pass their fail-open rules' traffic in clear
(and only that) until keys arrive; a member's data plane stops with its
WAN interface and comes back with it.  Every wait is bounded; teardown
stops the daemons and captures and deletes the namespaces, also after a
failure.  With 30-s TEKs pushed at half-life, a stream of pings crosses
several rekeys, starting once both members' data planes carry ESP: every
echo ping did not count is traced hop by hop (``echo_ledger``), and none
may be lost to a member's data plane (rollover) or to nothing counted;
only queue drops counted where it vanished make a loss load.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import dpkt
import pytest
from echo_ledger import (
    Cause,
    Drops,
    Hop,
    attribute,
    backlog_drops,
    lan_echoes,
    link_drops,
    member_events,
    ping_counted,
    report,
    wan_echoes,
)
from netns_lab import registered, server_head

from groupvpn.config.junos import parse, render_set
from groupvpn.config.schema import MEMBER
from groupvpn.ops.lab import LAB_NET, Lab
from groupvpn.ops.export import member_rows
from groupvpn.ops.lab_configs import member_config
from groupvpn.ops.netlab import build, destroy
from groupvpn.wire.esp import TIMESTAMP_SHIM_SIZE, decode_timestamp_shim, ntp_timestamp, timestamp_delta
from groupvpn.wire.ip import checksum_valid
from groupvpn.wire.numbers import IpProtocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gm"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from processes import PYTHON, Daemon, groupvpn, wait_for  # noqa: E402
from tshark import read_fields  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.tshark,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TUN devices)"),
    pytest.mark.skipif(
        None in (shutil.which("ip"), shutil.which("tcpdump"), shutil.which("tshark")),
        reason="needs iproute2, tcpdump and tshark (`make test` installs them)",
    ),
    pytest.mark.timeout(300),
]

PSK = "data-plane-lab-members-key"
WINDOW = 5
DISCARD = 9
DECRYPT = ["esp.enable_encryption_decode:TRUE", "esp.enable_authentication_check:TRUE"]


def ks_conf(lab: Lab, state_file: Path, lifetime: int = 3600, timing: str = "") -> str:
    """Group 1 for the lab's members; ``timing``: extra group statements (rekey percentage, ATD, DTD)."""
    members = [str(lab.member_wan(n).ip) for n in lab.numbers]
    return server_head(str(lab.ks_address.ip), state_file, PSK, members) + f"""\
            ipsec {{
                proposal aes256-sha256 {{
                    authentication-algorithm hmac-sha-256-128;
                    encryption-algorithm aes-256-cbc;
                    lifetime-seconds {lifetime};
                }}
            }}
            group lab {{
                group-id 1;
                ike-gateway gms;
                anti-replay-time-window {WINDOW};{timing}
                ipsec-sa lans {{
                    proposal aes256-sha256;
                    match-policy lans {{ source 198.19.0.0/16; destination 198.19.0.0/16; }}
                    match-policy discard {{
                        source 198.19.0.0/16;
                        destination 198.19.0.0/16;
                        protocol udp;
                        destination-port {DISCARD};
                        action deny;
                    }}
                }}
            }}
        }}
    }}
}}
"""


@dataclass
class GroupLab:
    lab: Lab
    directory: Path
    daemons: dict[str, Daemon] = field(default_factory=dict)
    captures: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_ks(self, lifetime: int = 3600, timing: str = "") -> None:
        text = ks_conf(self.lab, self.directory / "ks.db", lifetime, timing)
        self.daemons["ks"] = Daemon("ks", "ks", self.directory, self.lab.ks).write(text).start()

    def member_text(self, n: int, extra: str = "") -> str:
        """The lab's configuration of gm``n`` in set form, plus the set commands ``extra``."""
        lab = self.lab
        return render_set(parse(member_config(lab.ks_address.ip, lab.member_wan(n), "wan", PSK), MEMBER)) + extra

    def start_members(self, extra: str = "", options: tuple[str, ...] = ("--dataplane-workers", "1")) -> None:
        """Every member with the lab's configuration plus ``extra``, with command-line ``options``."""
        for n in self.lab.numbers:
            member = Daemon("member", f"gm{n}", self.directory, self.lab.gm(n), extra=options)
            self.daemons[f"gm{n}"] = member.write(self.member_text(n, extra)).launch()
        for n in self.lab.numbers:
            self.member(n).ready()

    def member(self, n: int) -> Daemon:
        return self.daemons[f"gm{n}"]

    def host(self, n: int) -> str:
        return str(self.lab.host_address(n).ip)

    def run(self, namespace: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        command = ("ip", "netns", "exec", namespace, *command)
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def ping(self, source: int, destination: str, count: int = 1) -> bool:
        command = ("ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", destination)
        return self.run(self.lab.host(source), *command).returncode == 0

    def capture(self, namespace: str, interface: str, path: Path) -> subprocess.Popen[bytes]:
        """tcpdump writing every packet as it arrives (-U, --immediate-mode: none is left behind when it is
        stopped); returns when the file has its header (capturing)."""
        command = ["ip", "netns", "exec", namespace, "tcpdump", "-i", interface, "-n", "-U", "--immediate-mode"]
        command += ["-w", str(path)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.captures.append(process)
        wait_for(lambda: path.exists() and path.stat().st_size >= 24, timeout=10, what=f"tcpdump on {interface}")
        return process

    def statistics(self, n: int) -> dict[str, Any]:
        (record,) = self.member(n).records("ipsec-statistics")
        return dict(record)

    def settled(self, n: int) -> dict[str, Any]:
        """gm``n``'s statistics once they have not changed for 2.5 s (workers report every second)."""
        return self.all_settled((n,))[n]

    def all_settled(self, numbers: Iterable[int], quiet: float = 2.5) -> dict[int, dict[str, Any]]:
        """The statistics of gm``numbers``, by number, once none has changed for ``quiet`` s."""
        last: list[Any] = [None, time.monotonic()]

        def unchanged() -> dict[int, dict[str, Any]] | None:
            now = {n: self.statistics(n) for n in numbers}
            if now != last[0]:
                last[:] = [now, time.monotonic()]
            return now if time.monotonic() - last[1] >= quiet else None

        return wait_for(unchanged, timeout=20, what="the members' counters to settle")

    def carrying_esp(self) -> dict[int, dict[str, Any]] | None:
        """Every member's statistics once each data plane has sent and opened the group's ESP (else None).

        Its steering and SAs are then in force, and the same worker report
        counts whatever it dropped while starting.
        """
        found = {n: self.statistics(n) for n in self.lab.numbers}
        esp = all(s.get("encrypted_packets", 0) and s.get("decrypted_packets", 0) for s in found.values())
        return found if esp else None

    def drop_counters(self, members: dict[int, dict[str, Any]]) -> Drops:
        """Drops counted so far: by the data planes in the ``members``' statistics, on every namespace's links."""
        roles = {"wan": self.lab.wan}
        for n in self.lab.numbers:
            roles |= {f"gm{n}": self.lab.gm(n), f"h{n}": self.lab.host(n)}
        dataplane = {f"gm{n}": record.get("drops", {}) for n, record in members.items()}
        return Drops(dataplane, {role: link_drops(name) for role, name in roles.items()}, backlog_drops())

    def teardown(self) -> None:
        for process in self.captures:
            process.kill()
            process.wait(10)
        for daemon in self.daemons.values():
            daemon.stop()
        destroy(self.lab.namespaces)


@pytest.fixture
def group(tmp_path, request) -> Iterator[GroupLab]:
    lab = Lab(f"gvdp{os.getpid() % 10000}{uuid.uuid4().hex[:4]}-", members=request.param)
    group = GroupLab(lab, tmp_path)
    try:
        build(lab.topology(), lambda namespace: None)
        yield group
    finally:
        group.teardown()


def stop(capture: subprocess.Popen[bytes]) -> None:
    capture.send_signal(signal.SIGTERM)
    capture.wait(10)


def ipv4_packets(pcap: Path) -> list[bytes]:
    """The IPv4 packets of an Ethernet capture."""
    with open(pcap, "rb") as f:
        frames = [dpkt.ethernet.Ethernet(frame) for _, frame in dpkt.pcap.Reader(f)]
    return [bytes(frame.data) for frame in frames if frame.type == dpkt.ethernet.ETH_TYPE_IP]


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    counted = ("encrypted_packets", "decrypted_packets", "clear_packets")
    change = {name: after[name] - before[name] for name in counted}
    change["no_policy"] = after["drops"].get("no_policy", 0) - before["drops"].get("no_policy", 0)
    return change


@pytest.mark.parametrize("group", [3], indirect=True)
def test_hosts_talk_across_the_group_in_esp_that_tshark_decrypts_with_the_exported_keys(group, tmp_path):
    group.start_ks()
    group.start_members()
    members = [group.member(n) for n in group.lab.numbers]
    for member in members:
        wait_for(lambda m=member: registered(m), timeout=20, what=f"{member.name} to register")
    for n in group.lab.numbers:
        running = lambda n=n: group.statistics(n)["data_plane"].startswith("running")  # noqa: E731
        wait_for(running, timeout=30, what=f"gm{n}'s data plane")
    # Each member's policy reaches its workers shortly after registration: wait until traffic flows.
    for destination in (2, 3):
        wait_for(lambda d=destination: group.ping(1, group.host(d)), timeout=30, what=f"h1 to reach h{destination}")
    wait_for(lambda: group.ping(2, group.host(3)), timeout=30, what="h2 to reach h3")
    before = group.settled(1)

    wan_pcap, lan_pcap = tmp_path / "wan.pcap", tmp_path / "lan.pcap"
    wan = group.capture(group.lab.wan, "gm1", wan_pcap)  # the WAN router's link to gm1
    lan = group.capture(group.lab.host(1), "eth0", lan_pcap)  # what h1 sends
    assert group.ping(1, group.host(2), count=3)
    assert group.ping(1, group.host(3), count=2)
    send = "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'in clear', (sys.argv[1], 9))"
    for _ in range(2):
        assert group.run(group.lab.host(1), PYTHON, "-c", send, group.host(2)).returncode == 0
    assert not group.ping(1, str(group.lab.ks_address.ip))  # no rule covers LAN to the key server: dropped
    time.sleep(0.5)  # the last replies cross the WAN link
    stop(wan)
    stop(lan)

    # The keys, as an operator gets them.
    refused = groupvpn("export", "wireshark-keys", "--socket", str(members[0].socket))
    assert refused.returncode == 2 and refused.stdout == ""
    exported = groupvpn(
        "export", "wireshark-keys", "--socket", str(members[0].socket), "--show-keys", "--format", "tshark"
    )
    assert exported.returncode == 0 and "WARNING" in exported.stderr, exported.stderr
    rows = exported.stdout.splitlines()
    (tek,) = members[0].records("ipsec-security-associations")
    spi = int(tek["spi"], 16)
    assert len(rows) == 2 and all(f'"0x{spi:08x}","AES-CBC [RFC3602]"' in row for row in rows)

    fields = ["ip.src", "ip.dst", "ip.proto", "esp.spi", "esp.icv_good", "esp.decrypted_data", "esp.contained_data",
              "udp.dstport", "data.data", "frame.time_epoch"]  # fmt: skip
    frames = read_fields(wan_pcap, fields, prefs=[*DECRYPT, *rows])
    esp = [f for f in frames if f.values("ip.proto")[:1] == (str(IpProtocol.ESP.value),)]
    clear = [f for f in frames if f not in esp]
    hosts = {group.host(n) for n in group.lab.numbers}
    # 3 echo requests to h2 and 2 to h3 leave gm1 and 5 replies come back, and h2 answers each discard
    # datagram with ICMP port unreachable, which the group encrypts (only UDP discard is denied).
    assert len(esp) == 12, [f.fields for f in frames]
    inner_packets = []
    for frame in esp:
        assert frame.ints("esp.spi") == (spi,) and frame.ints("esp.icv_good") == (1,)
        assert frame.values("ip.src")[0] in hosts and frame.values("ip.dst")[0] in hosts
        (decrypted,) = frame.hexes("esp.decrypted_data")
        assert decrypted[-1] == IpProtocol.EXPERIMENT_253  # Next Header: the timestamp shim (the group has a window)
        (contained,) = frame.hexes("esp.contained_data")
        next_header, stamp = decode_timestamp_shim(contained)
        sent_at = float(frame.values("frame.time_epoch")[0])
        assert next_header == IpProtocol.IPV4 and abs(timestamp_delta(stamp, ntp_timestamp(sent_at))) < 2 << 32
        inner = contained[TIMESTAMP_SHIM_SIZE:]
        assert checksum_valid(inner[:20])
        inner_addresses = (str(IPv4Address(inner[12:16])), str(IPv4Address(inner[16:20])))
        assert inner_addresses == (frame.values("ip.src")[0], frame.values("ip.dst")[0])  # header preservation
        inner_packets.append(inner)
    # What h1 sent is inside, unchanged but for the hop through gm1 (TTL, hence checksum).
    echo_requests = [p for p in ipv4_packets(lan_pcap) if p[9] == IpProtocol.ICMP and p[20] == 8]
    requests = [p for p in echo_requests if str(IPv4Address(p[16:20])) in hosts]
    assert len(requests) == 5
    unreachable = [p for p in inner_packets if p[9] == IpProtocol.ICMP and p[20:22] == bytes((3, 3))]
    assert len(unreachable) == 2 and all(p[50:52] == DISCARD.to_bytes(2, "big") for p in unreachable)
    for original in requests:
        (inner,) = [p for p in inner_packets if p[20:] == original[20:]]
        assert inner[:8] == original[:8] and inner[8] == original[8] - 1 and inner[9:10] == original[9:10]
        assert inner[12:] == original[12:]
    # UDP discard is denied by the group: it crosses the WAN in clear, with the hosts' addresses.
    discards = [f for f in clear if f.ints("udp.dstport") == (DISCARD,)]
    assert len(discards) == 2
    for frame in discards:
        assert (frame.values("ip.src"), frame.values("ip.dst")) == ((group.host(1),), (group.host(2),))
        assert frame.hexes("data.data") == (b"in clear",)
    assert not [f for f in clear if f.values("ip.proto") == (str(IpProtocol.ICMP.value),)]  # no echo in clear

    expected = {"encrypted_packets": 5, "decrypted_packets": 7, "clear_packets": 2, "no_policy": 1}
    assert delta(group.settled(1), before) == expected
    words = ("show", "security", "group-vpn", "member", "ipsec", "statistics", "--socket", str(members[0].socket))
    shown = groupvpn(*words)
    assert shown.returncode == 0 and "running (1 of 1 workers)" in shown.stdout, shown.stdout


FAIL_OPEN = """
set security group-vpn member ipsec vpn lab fail-open rule to-h2 source-address 198.19.1.0/24
set security group-vpn member ipsec vpn lab fail-open rule to-h2 destination-address 198.19.2.2/32
set security group-vpn member ipsec vpn lab fail-open rule to-h1 source-address 198.19.2.0/24
set security group-vpn member ipsec vpn lab fail-open rule to-h1 destination-address 198.19.1.2/32
"""


def fail_open(group: GroupLab, n: int) -> bool:
    return bool(group.statistics(n)["fail_open"])


@pytest.mark.parametrize("group", [2], indirect=True)
def test_fail_open_only_while_no_key_server_answers_and_the_data_plane_follows_its_interface(group):
    # No key server yet: Phase 1 goes unanswered, the members have no SAs and open their fail-open rules.
    group.start_members(FAIL_OPEN)
    for n in group.lab.numbers:
        wait_for(lambda n=n: fail_open(group, n), timeout=60, what=f"gm{n} to fail open")
    before = group.settled(1)
    assert group.ping(1, group.host(2), count=2)  # h1 <-> h2: fail-open rules both ways, in clear
    assert not group.ping(1, str(group.lab.member_lan(2).ip))  # gm2's LAN address: no fail-open rule
    changes = delta(group.settled(1), before)
    assert changes == {"encrypted_packets": 0, "decrypted_packets": 0, "clear_packets": 2, "no_policy": 1}

    # The key server answers the next attempt: keys arrive, fail-open ends, the same traffic is encrypted.
    group.start_ks()
    for n in group.lab.numbers:
        wait_for(lambda n=n: registered(group.member(n)), timeout=30, what=f"gm{n} to register")
        wait_for(lambda n=n: not fail_open(group, n), timeout=10, what=f"gm{n} to close fail-open")
    wait_for(lambda: group.ping(1, group.host(2)), timeout=30, what="h1 to reach h2 through the group")
    before = group.settled(1)
    assert group.ping(1, group.host(2), count=2)
    changes = delta(group.settled(1), before)
    assert changes == {"encrypted_packets": 2, "decrypted_packets": 2, "clear_packets": 0, "no_policy": 0}

    # gm2's WAN interface goes down: its data plane stops (TUNs gone, the steering stays and drops the LAN's
    # traffic); up again, it comes back.
    gm2 = group.lab.gm(2)
    subprocess.run(["ip", "-n", gm2, "link", "set", "wan", "down"], check=True, timeout=10)
    down = "stopped: its interfaces are down; service-set traffic dropped"
    wait_for(lambda: group.statistics(2)["data_plane"] == down, timeout=20, what="gm2's data plane to stop")
    links, rules, table = (
        subprocess.run(["ip", "-n", gm2, *show], capture_output=True, text=True, timeout=10).stdout
        for show in (("-o", "link", "show"), ("rule", "show"), ("route", "show", "table", "7100"))
    )
    assert "gvpn0" not in links and "iif lan lookup 7100 proto 71" in rules, (links, rules)
    assert table.split() == "blackhole default proto 71 metric 4294967295".split(), table
    subprocess.run(["ip", "-n", gm2, "link", "set", "wan", "up"], check=True, timeout=10)
    router = str(group.lab.member_wan(2).network.network_address + 1)  # the kernel dropped the route with the link
    subprocess.run(["ip", "-n", gm2, "route", "add", str(LAB_NET), "via", router], check=True, timeout=10)
    wait_for(lambda: registered(group.member(2)), timeout=30, what="gm2 to register again")
    wait_for(lambda: group.ping(1, group.host(2)), timeout=30, what="h1 to reach h2 again")
    assert group.statistics(2)["data_plane"] == "running (1 of 1 workers)"

    # A changed VPN (df-bit) is reloaded: its data plane restarts with its new registration.
    member = group.member(2)
    member.write(group.member_text(2, FAIL_OPEN + "set security group-vpn member ipsec vpn lab df-bit set\n"))
    reloaded = groupvpn("member", "reload", "--socket", str(member.socket))
    assert reloaded.returncode == 0, reloaded.stderr
    wait_for(lambda: "data plane stopped (configuration changed)" in member.log, timeout=20, what="the restart")
    wait_for(lambda: registered(member), timeout=30, what="gm2 to register after the reload")
    wait_for(lambda: group.ping(1, group.host(2)), timeout=30, what="h1 to reach h2 after the reload")
    assert member.log.count("vpn lab: data plane up") == 3


@pytest.mark.parametrize("group", [1], indirect=True)
def test_no_dataplane_runs_the_control_plane_only(group):
    group.start_members(options=("--no-dataplane",))
    member = group.member(1)
    assert group.statistics(1)["data_plane"] == "disabled (--no-dataplane)"
    assert "data plane disabled (--no-dataplane)" in member.log
    command = ["ip", "-n", group.lab.gm(1), "-o", "link", "show"]
    links = subprocess.run(command, capture_output=True, text=True, timeout=10)
    assert "gvpn" not in links.stdout


@pytest.mark.parametrize("group", [2], indirect=True)
def test_traffic_flows_without_loss_while_the_group_rekeys(group, tmp_path):
    # 30-s TEKs pushed at half-life; each takes over encryption 3 s after its push (ATD), when every member has it.
    group.start_ks(30, "\n                rekey-percentage 50;\n                activation-time-delay 3;")
    group.start_members()
    for n in group.lab.numbers:
        wait_for(lambda n=n: registered(group.member(n)), timeout=20, what=f"gm{n} to register")
    # One member may encrypt while the other cannot decrypt yet (its data plane still starting): the
    # stream starts once both have sent and opened the group's ESP.
    h1, h2 = group.host(1), group.host(2)
    ready = wait_for(lambda: group.ping(1, h2) and group.carrying_esp(), timeout=30, what="ESP both ways")
    before = group.drop_counters(ready)
    pcaps = {name: tmp_path / f"{name}.pcap" for name in ("h1", "wan-gm1", "wan-gm2", "h2")}
    since = time.time()
    group.capture(group.lab.host(1), "eth0", pcaps["h1"])
    group.capture(group.lab.wan, "gm1", pcaps["wan-gm1"])
    group.capture(group.lab.wan, "gm2", pcaps["wan-gm2"])
    group.capture(group.lab.host(2), "eth0", pcaps["h2"])
    count, interval = 350, 0.1  # 35 s: at least two rekeys
    # -w instead of -W: ping waits for every reply until its deadline, so a slow one is not counted as lost.
    command = ("ping", "-D", "-n", "-c", str(count), "-i", str(interval), "-w", str(int(count * interval) + 5), h2)
    in_h1 = ("ip", "netns", "exec", group.lab.host(1), *command)
    keys: set[str] = set()  # every TEK of the stream, each held at least 15 s: sampled every second
    with subprocess.Popen(in_h1, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as stream:
        while True:  # ends with ping, at its deadline at the latest
            keys.update(member_rows(group.member(1).socket))
            try:
                output, _ = stream.communicate(timeout=1)
                break
            except subprocess.TimeoutExpired:
                continue
    time.sleep(0.5)  # the last replies cross the captured links
    for capture in group.captures:
        stop(capture)
    with ThreadPoolExecutor() as pool:  # tshark opens the WAN captures while the members' counters settle
        decoding = [pool.submit(wan_echoes, pcaps[name], keys, h1, h2) for name in ("wan-gm1", "wan-gm2")]
        drops = group.drop_counters(group.all_settled(group.lab.numbers)).since(before)
        (wan1_requests, wan1_replies), (wan2_requests, wan2_replies) = (task.result() for task in decoding)

    sent, counted = ping_counted(output)
    h1_requests, h1_replies = lan_echoes(pcaps["h1"], h1, h2)
    h2_requests, h2_replies = lan_echoes(pcaps["h2"], h1, h2)
    path = [
        Hop("h1's eth0 (request)", h1_requests, "gm1"),
        Hop("the router's link to gm1 (request, from gm1)", wan1_requests.seen, "wan", wan1_requests.spis),
        Hop("the router's link to gm2 (request)", wan2_requests.seen, "gm2"),
        Hop("h2's eth0 (request)", h2_requests, "h2"),
        Hop("h2's eth0 (reply)", h2_replies, "gm2"),
        Hop("the router's link to gm2 (reply, from gm2)", wan2_replies.seen, "wan", wan2_replies.spis),
        Hop("the router's link to gm1 (reply)", wan1_replies.seen, "gm1"),
        Hop("h1's eth0 (reply)", h1_replies, "h1"),
    ]
    losses = attribute(sent, path, counted, drops, origin="h1")
    events = [e for n in group.lab.numbers for e in member_events(group.member(n).log, f"gm{n}", since, time.time())]
    ledger = report(sent, path, losses, drops, sorted(events, key=lambda e: e.at))
    (tmp_path / "echo-ledger.txt").write_text(ledger + "\n")
    print(ledger)
    # Every packet between the hosts crossed the WAN in the group's ESP, and opened with the keys sampled.
    wan = [(e.in_clear, e.undecrypted) for e in (wan1_requests, wan1_replies, wan2_requests, wan2_replies)]
    assert wan == [(0, 0)] * 4, (wan, ledger)
    # Nothing the rollover could cause: no member dropped a packet of the stream, for any reason.
    assert not drops.dataplane, ledger
    # Every lost echo was lost to load, proven by counted queue drops or ping's deadline.
    assert not [loss for loss in losses if loss.cause is not Cause.LOAD], ledger
    spis = list(dict.fromkeys(wan1_requests.spis[seq] for seq in sorted(wan1_requests.spis)))
    assert len(spis) >= 3, ledger  # the first TEK and at least two successors carried the traffic in turn
    log = group.member(1).log
    assert all(f"encrypting with 0x{spi:08x}" in log for spi in spis)
