"""The data plane between two real members: steering, TUNs, worker processes, ESP on the WAN.

Both members run a ``Dataplane`` (two workers each) with the same static
group policy; hosts behind them talk through it.  A capture on the WAN
router's link to member A shows what actually crosses the WAN.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dpkt
import pytest
from dataplane_packets import GCM128, keys_for
from member_pair import DENIED_PORT, HOST_A, HOST_B, SPI, MemberPair, description, ip, policy, running
from netns_traffic import TIMEOUT, between_hosts, capture, eventually, ping, settled, tcp_round_trip, udp_socket

from groupvpn.crypto.suites import EspKeys
from groupvpn.dataplane.channel import PolicyState
from groupvpn.dataplane.manager import Dataplane, DataplaneDescription
from groupvpn.dataplane.steering import SteeringError, SteeringPlan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "ping", "tcpdump")),
        reason="needs root, iproute2, ping and tcpdump",
    ),
]

NEW_SPI = SPI + 1


@pytest.fixture(scope="module")
def lab() -> Iterator[MemberPair]:
    pair = MemberPair.unique()
    try:
        pair.build()
        yield pair
    finally:
        pair.remove()


@pytest.fixture
def members(lab: MemberPair) -> Iterator[tuple[Dataplane, Dataplane]]:
    with running(lab, description(lab), policy(GCM128, keys_for(GCM128))) as pair:
        yield pair


def test_hosts_talk_through_esp_with_their_own_addresses_on_the_wan(lab: MemberPair, members) -> None:
    member_a, member_b = members
    payload = os.urandom(300_000)
    with capture(lab) as wan:
        assert ping(lab.host_a, HOST_B)
        with udp_socket(lab.host_a, HOST_A, 0) as a, udp_socket(lab.host_b, HOST_B, 7000) as b:
            a.sendto(b"ping over udp", (HOST_B, 7000))
            message, sender = b.recvfrom(100)
            b.sendto(message.upper(), sender)
            assert a.recvfrom(100) == (b"PING OVER UDP", (HOST_B, 7000))
        assert tcp_round_trip(lab, payload) == hashlib.sha256(payload).digest()
        a_counts, b_counts = settled(member_a, member_b)  # the last TCP segments may still be on their way

    crossing = between_hosts(wan)
    assert crossing and all(p.p == dpkt.ip.IP_PROTO_ESP for p in crossing), "cleartext between the hosts on the WAN"
    directions = {(socket.inet_ntoa(p.src), socket.inet_ntoa(p.dst)) for p in crossing}
    assert directions == {(HOST_A, HOST_B), (HOST_B, HOST_A)}
    both_ways = a_counts["encrypted_packets"] + b_counts["encrypted_packets"]
    assert both_ways >= 6 + 2 + len(payload) // 1500  # pings, UDP, TCP segments at the least

    for counts in (a_counts, b_counts):
        assert counts["workers_running"] == 2 and counts["policy_version"] == 1
        assert counts["encrypted_packets"] > 0 and counts["write_errors"] == 0
    sent_by_a = sum(1 for p in crossing if p.src == socket.inet_aton(HOST_A))
    # The counters are equal unless a busy kernel dropped a packet between the TUNs (a backlog queue
    # is full); the capture may miss a few under load, never see more than A encrypted.
    encrypted, decrypted = a_counts["encrypted_packets"], b_counts["decrypted_packets"]
    assert encrypted >= sent_by_a and encrypted >= decrypted >= encrypted - 2


def test_denied_traffic_passes_in_clear(lab: MemberPair, members) -> None:
    member_a, _ = members
    with capture(lab) as wan:
        with udp_socket(lab.host_a, HOST_A, 0) as a, udp_socket(lab.host_b, HOST_B, DENIED_PORT) as b:
            a.sendto(b"denied by policy", (HOST_B, DENIED_PORT))
            assert b.recvfrom(100)[0] == b"denied by policy"
    (clear,) = between_hosts(wan)
    assert clear.p == dpkt.ip.IP_PROTO_UDP and clear.data.data == b"denied by policy"
    assert member_a.counters(wait=TIMEOUT)["clear_packets"] == 1


def test_traffic_without_a_rule_is_dropped_and_counted(lab: MemberPair, members) -> None:
    member_a, _ = members
    with udp_socket(lab.host_a, HOST_A, 0) as a, udp_socket(lab.key_server, lab.key_server_address, 7000) as server:
        for _ in range(2):
            a.sendto(b"no rule covers the key server's other ports", (lab.key_server_address, 7000))
        counts = eventually(member_a, lambda c: c["dropped_packets"] >= 2)
        assert counts["drops"] == {"no_policy": 2} and counts["encrypted_packets"] == 0
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.recv(100)


def test_key_server_traffic_never_enters_the_data_plane(lab: MemberPair, members) -> None:
    member_a, _ = members
    with capture(lab) as wan:
        with udp_socket(lab.host_a, HOST_A, 0) as a, udp_socket(lab.key_server, lab.key_server_address, 848) as ks:
            a.sendto(b"gdoi", (lab.key_server_address, 848))
            assert ks.recvfrom(100)[0] == b"gdoi"
    assert [p.data.data for p in wan if p.p == dpkt.ip.IP_PROTO_UDP] == [b"gdoi"]
    assert member_a.counters(wait=TIMEOUT)["outbound_packets"] == 0


def test_stop_puts_the_namespace_back_as_it_was(lab: MemberPair) -> None:
    def state() -> tuple[str, ...]:
        return (
            ip("-n", lab.member_a, "rule", "list"),
            ip("-n", lab.member_a, "-6", "rule", "list"),
            ip("-n", lab.member_a, "route", "show", "table", "all"),
            json.dumps(sorted(link["ifname"] for link in json.loads(ip("-n", lab.member_a, "-j", "link", "show")))),
        )

    before = state()
    dataplane = Dataplane(lab.member_a, description(lab), workers=2)
    dataplane.start()
    try:
        during = state()
        assert "lookup 7100" in during[0] and "gvpn0o" in during[3] and "gvpn0i" in during[3]
    finally:
        dataplane.stop()
    assert state() == before
    dataplane.stop()  # twice is harmless


def test_a_rekey_moves_encryption_to_the_new_sa_without_losing_a_packet(lab: MemberPair, members) -> None:
    """New SA accepted everywhere, then used for encryption, then the old one retired (sadb's order)."""
    old = policy(GCM128, keys_for(GCM128))
    new_sa = replace(old.sas[0], spi=NEW_SPI, keys=EspKeys(os.urandom(GCM128.encryption_key_size)))
    steps = [
        PolicyState(2, old.rules, (*old.sas, new_sa), old.encrypting),
        PolicyState(3, old.rules, (*old.sas, new_sa), {"a-b": NEW_SPI, "b-a": NEW_SPI}),
        PolicyState(4, old.rules, (new_sa,), {"a-b": NEW_SPI, "b-a": NEW_SPI}),
    ]
    spis = []
    for state in steps:
        with capture(lab) as wan:
            for dataplane in members:
                dataplane.update(state)
            assert ping(lab.host_a, HOST_B, count=2)
        spis.append({p.data.spi for p in between_hosts(wan)})
    assert spis == [{SPI}, {NEW_SPI}, {NEW_SPI}]
    assert all(d.counters(wait=TIMEOUT)["policy_version"] == 4 for d in members)


def test_reports_reach_the_daemons_event_loop(lab: MemberPair, members) -> None:
    member_a, _ = members

    async def watch() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        member_a.attach(loop)
        try:
            assert await loop.run_in_executor(None, ping, lab.host_a, HOST_B, 2)
            deadline = loop.time() + TIMEOUT
            while member_a.counters()["encrypted_packets"] < 2 and loop.time() < deadline:
                await asyncio.sleep(0.05)  # periodic reports arrive every 0.2 s
            return member_a.counters()
        finally:
            member_a.detach()

    assert asyncio.run(watch())["encrypted_packets"] == 2


def test_a_dead_worker_hands_its_flows_to_the_others(lab: MemberPair, members) -> None:
    member_a, _ = members
    os.kill(member_a.worker_pids[0], signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while member_a.workers_running == 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert member_a.workers_running == 1
    member_a.update(policy(GCM128, keys_for(GCM128), version=2))  # the survivor still takes policies
    for port in range(7000, 7008):  # flows that hashed to either queue
        with udp_socket(lab.host_a, HOST_A, 0) as a, udp_socket(lab.host_b, HOST_B, port) as b:
            a.sendto(b"still here", (HOST_B, port))
            assert b.recvfrom(100)[0] == b"still here"
    counts = member_a.counters(wait=TIMEOUT)
    assert (counts["workers"], counts["workers_running"], counts["policy_version"]) == (2, 1, 1)


def test_a_failed_start_leaves_nothing_behind(lab: MemberPair) -> None:
    before = ip("-n", lab.member_a, "link", "show"), ip("-n", lab.member_a, "rule", "list")
    broken = DataplaneDescription(SteeringPlan.numbered(0, ["lan"], ["nosuch"]))
    dataplane = Dataplane(lab.member_a, broken, workers=2)
    with pytest.raises(SteeringError, match="there is no interface nosuch"):
        dataplane.start()
    assert (ip("-n", lab.member_a, "link", "show"), ip("-n", lab.member_a, "rule", "list")) == before
    assert dataplane.worker_pids == () and not worker_children()


def worker_children() -> list[int]:
    """Our child processes that run a data plane worker."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"groupvpn.dataplane.worker" in command:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("pinned", [False, True])
def test_workers_are_pinned_to_one_cpu_each_only_when_asked(lab: MemberPair, pinned: bool) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    dataplane = Dataplane(lab.member_a, replace(description(lab), pin_workers=pinned), workers=2)
    dataplane.start()
    try:
        affinities = [os.sched_getaffinity(pid) for pid in dataplane.worker_pids]
    finally:
        dataplane.stop()
    expected = [{cpus[i % len(cpus)]} for i in range(2)] if pinned else [set(cpus)] * 2
    assert affinities == expected
