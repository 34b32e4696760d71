"""The worker's packet path and channel, with datagram socket pairs standing in for its TUN queues.

A TUN queue fd and a datagram socket behave alike for the worker: one
``read`` is one packet, one ``write`` sends one.  Each test holds the
"kernel" ends and sees exactly what the worker writes back.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from ipaddress import ip_network

import pytest
from dataplane_packets import CBC_SHA1, GCM128, NOW, keys_for, tcp, udp
from member_pair import DENIED_PORT, HOST_A, HOST_B, LAN_A, LAN_B, SPI, policy

from groupvpn.crypto.suites import EspKeys
from groupvpn.dataplane import DropReason
from groupvpn.dataplane.channel import (
    Counter,
    PolicyState,
    Rejected,
    Report,
    ReportRequest,
    WorkerSetup,
    channel_pair,
    encode,
    receive,
    send,
)
from groupvpn.dataplane.esp_path import SaConfig
from groupvpn.dataplane.offload import PLAIN, VNET_HEADER_SIZE, GsoType, VnetFlag, VnetHeader
from groupvpn.dataplane.spd import FailOpenRule, FilterTerm, Rule, Selector, SpdError
from groupvpn.dataplane.worker import Worker
from groupvpn.wire.esp import ESP_HEADER_SIZE
from groupvpn.wire.numbers import PolicyAction

NEW_SPI = SPI + 1


@dataclass
class Harness:
    """A worker and the far ends of its two queues and its channel."""

    worker: Worker
    outbound: socket.socket  # where LAN packets come from and their results go back to
    inbound: socket.socket
    manager: socket.socket

    def lan(self, *packets: bytes) -> list[bytes]:
        """Packets steered in from the LAN; what the worker wrote back."""
        for packet in packets:
            self.outbound.send(packet)
        while self.worker.drain_outbound(NOW):
            pass
        return drain(self.outbound)

    def wan(self, *packets: bytes) -> list[bytes]:
        for packet in packets:
            self.inbound.send(packet)
        while self.worker.drain_inbound(NOW):
            pass
        return drain(self.inbound)

    def count(self, counter: Counter) -> int:
        return self.worker.counts[counter]


def drain(end: socket.socket) -> list[bytes]:
    found = []
    while True:
        try:
            found.append(end.recv(65535))
        except BlockingIOError:
            return found


@pytest.fixture
def make_worker() -> Iterator[object]:
    opened: list[socket.socket] = []

    def make(index: int = 0, workers: int = 1, state: PolicyState | None = None, **setup: object) -> Harness:
        ends = []
        for _ in range(2):
            theirs, mine = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            theirs.setblocking(False)
            mine.setblocking(False)
            opened.extend((theirs, mine))
            ends.append((theirs, mine))
        manager, channel = channel_pair()
        opened.extend((manager, channel))
        (outbound, outbound_fd), (inbound, inbound_fd) = ((far, near.fileno()) for far, near in ends)
        settings = WorkerSetup(index, workers, 1500, **setup)  # type: ignore[arg-type]
        worker = Worker(settings, channel, outbound_fd, inbound_fd)
        if state is not None:
            worker.apply(state)
        return Harness(worker, outbound, inbound, manager)

    yield make
    for end in opened:
        end.close()


def gcm_policy(version: int = 1, **sa: object) -> PolicyState:
    return policy(GCM128, keys_for(GCM128), version, **sa)


def iv_of(esp: bytes) -> int:
    return int.from_bytes(esp[20 + ESP_HEADER_SIZE : 20 + ESP_HEADER_SIZE + 8], "big")


def spi_of(esp: bytes) -> int:
    return int.from_bytes(esp[20:24], "big")


def test_protected_traffic_is_encrypted_and_the_peer_decrypts_it(make_worker) -> None:
    a, b = make_worker(state=gcm_policy()), make_worker(state=gcm_policy())
    packet = udp(HOST_A, HOST_B, b"to the other site")
    (esp,) = a.lan(packet)
    assert esp[9] == 50 and esp[12:20] == packet[12:20]  # ESP with the hosts' addresses
    assert b.wan(esp) == [packet]
    assert (a.count(Counter.OUTBOUND_PACKETS), a.count(Counter.ENCRYPTED_PACKETS)) == (1, 1)
    assert (a.count(Counter.OUTBOUND_BYTES), a.count(Counter.ENCRYPTED_BYTES)) == (len(packet), len(packet))
    assert (b.count(Counter.INBOUND_PACKETS), b.count(Counter.INBOUND_BYTES)) == (1, len(esp))
    assert (b.count(Counter.DECRYPTED_PACKETS), b.count(Counter.DECRYPTED_BYTES)) == (1, len(packet))


def test_with_offload_a_batch_of_segments_is_written_joined_and_counted_per_packet(make_worker) -> None:
    a, b = make_worker(state=gcm_policy()), make_worker(state=gcm_policy(), offload=True)
    segments = [tcp(HOST_A, HOST_B, bytes([i]) * 1000, seq=1000 * (i + 1), ident=i) for i in range(8)]
    other = udp(HOST_A, HOST_B, b"not tcp")
    esp = a.lan(*segments, other)
    written = b.wan(*(PLAIN + packet for packet in esp))
    joined, alone = written
    header = VnetHeader.decode(joined)
    assert (header.flags, header.gso_type, header.gso_size) == (VnetFlag.NEEDS_CSUM, GsoType.TCPV4, 1000)
    assert joined[VNET_HEADER_SIZE + 20 + 20 :] == b"".join(segment[40:] for segment in segments)
    assert alone == PLAIN + other
    assert (b.count(Counter.INBOUND_PACKETS), b.count(Counter.INBOUND_BYTES)) == (9, sum(map(len, esp)))
    inner = [*segments, other]
    assert (b.count(Counter.DECRYPTED_PACKETS), b.count(Counter.DECRYPTED_BYTES)) == (9, sum(map(len, inner)))


def test_with_offload_a_read_asking_for_segmentation_is_dropped(make_worker) -> None:
    a, b = make_worker(state=gcm_policy()), make_worker(state=gcm_policy(), offload=True)
    (esp,) = a.lan(udp(HOST_A, HOST_B))
    gso = VnetHeader(VnetFlag.NEEDS_CSUM, GsoType.TCPV4, False, 40, 1000, 20, 16).encode()
    assert b.wan(gso + esp, VnetHeader(VnetFlag.NEEDS_CSUM, csum_start=20, csum_offset=6).encode() + esp) == []
    assert b.worker.drops[DropReason.VNET_HEADER] == 2
    assert (b.count(Counter.INBOUND_PACKETS), b.count(Counter.DECRYPTED_PACKETS)) == (2, 0)


def test_denied_traffic_goes_back_in_clear_and_unmatched_traffic_is_dropped(make_worker) -> None:
    a = make_worker(state=gcm_policy())
    denied = udp(HOST_A, HOST_B, dport=DENIED_PORT)
    unmatched = udp(HOST_A, "198.18.2.1")
    assert a.lan(denied, unmatched) == [denied]
    assert a.count(Counter.CLEAR_PACKETS) == 1 and a.count(Counter.ENCRYPTED_PACKETS) == 0
    assert a.worker.drops[DropReason.NO_POLICY] == 1


def test_before_any_policy_everything_is_dropped_except_bypass(make_worker) -> None:
    ks = Selector(destination=ip_network("198.18.0.1/32"))
    a = make_worker(bypass=(FilterTerm((ks,)),))
    control = udp(HOST_A, "198.18.0.1", dport=848)
    assert a.lan(udp(HOST_A, HOST_B), control) == [control]
    assert a.worker.drops[DropReason.NO_POLICY] == 1


def test_fail_open_lets_listed_traffic_pass_while_the_group_has_no_sa(make_worker) -> None:
    rule = FailOpenRule(LAN_A, ip_network("198.19.2.2/32"))
    a = make_worker(fail_open_rules=(rule,))
    keyless = PolicyState(1, gcm_policy().rules)
    packet, other = udp(HOST_A, HOST_B), udp(HOST_A, "198.19.2.3")
    a.worker.apply(keyless)
    assert a.lan(packet) == [] and a.worker.drops[DropReason.NO_SA] == 1
    a.worker.apply(replace(keyless, version=2, fail_open=True))
    assert a.lan(packet, other) == [packet]
    assert a.worker.drops[DropReason.NO_SA] == 2


def test_rekey_switches_encryption_while_both_keys_decrypt(make_worker) -> None:
    old = gcm_policy()
    new_config = SaConfig(NEW_SPI, GCM128, EspKeys(bytes(range(50, 70))), selectors=old.sas[0].selectors)
    both = PolicyState(2, old.rules, (*old.sas, new_config), {"a-b": NEW_SPI, "b-a": NEW_SPI})
    a, b = make_worker(state=old), make_worker(state=old)
    (under_old,) = a.lan(udp(HOST_A, HOST_B))
    a.worker.apply(both)
    b.worker.apply(both)
    (under_new,) = a.lan(udp(HOST_A, HOST_B))
    assert (spi_of(under_old), spi_of(under_new)) == (SPI, NEW_SPI)
    assert len(b.wan(under_old, under_new)) == 2
    b.worker.apply(PolicyState(3, old.rules, (new_config,), {"a-b": NEW_SPI, "b-a": NEW_SPI}))
    assert b.wan(under_old) == []
    assert b.worker.drops[DropReason.UNKNOWN_SPI] == 1


def test_an_unchanged_sa_keeps_its_context_and_sequence_across_updates(make_worker) -> None:
    a = make_worker(state=gcm_policy())
    a.lan(udp(HOST_A, HOST_B), udp(HOST_A, HOST_B))
    a.worker.apply(replace(gcm_policy(2), fail_open=True))
    (esp,) = a.lan(udp(HOST_A, HOST_B))
    assert int.from_bytes(esp[24:28], "big") == 3  # sequence number: the same prepared SA goes on


def test_workers_draw_counter_ivs_from_disjoint_slices(make_worker) -> None:
    """SID | worker | counter: with 2 workers one bit follows the member's 4 SID bits."""
    state = gcm_policy(sid=0b1011, sid_bits=4)
    first, second = (make_worker(index, 2, state) for index in (0, 1))
    ivs = [iv_of(esp) for harness in (first, second) for esp in harness.lan(udp(HOST_A, HOST_B), udp(HOST_A, HOST_B))]
    assert [iv >> 59 for iv in ivs] == [0b10110, 0b10110, 0b10111, 0b10111]
    assert [iv & 0xFFFF for iv in ivs] == [1, 2, 1, 2]


def test_an_sa_that_leaves_and_returns_continues_its_iv_counter(make_worker) -> None:
    a = make_worker(state=gcm_policy())
    a.lan(udp(HOST_A, HOST_B), udp(HOST_A, HOST_B))
    a.worker.apply(PolicyState(2, gcm_policy().rules))
    a.worker.apply(gcm_policy(3, replay_window=5))  # same SPI and keys, another configuration
    (esp,) = a.lan(udp(HOST_A, HOST_B))
    assert iv_of(esp) == 3


def test_cbc_sas_work_through_the_worker(make_worker) -> None:
    state = policy(CBC_SHA1, keys_for(CBC_SHA1))
    a, b = make_worker(state=state), make_worker(state=state)
    packet = udp(HOST_A, HOST_B, bytes(500))
    assert b.wan(*a.lan(packet)) == [packet]


def test_a_batch_is_bounded(make_worker) -> None:
    a = make_worker(state=gcm_policy(), batch=3)
    for _ in range(5):
        a.outbound.send(udp(HOST_A, HOST_B))
    assert [a.worker.drain_outbound(NOW) for _ in range(3)] == [3, 2, 0]
    assert len(drain(a.outbound)) == 5


def test_a_policy_that_cannot_be_applied_is_rejected_and_the_old_one_stays(make_worker) -> None:
    a = make_worker(index=1, workers=2, state=gcm_policy())
    send(a.manager, encode(gcm_policy(2, sid=1, sid_bits=63)))  # no room left for the worker bit
    assert a.worker.handle_channel()
    rejected = receive(a.manager)
    assert isinstance(rejected, Rejected) and (rejected.index, rejected.version) == (1, 2)
    assert "does not fit" in rejected.problem
    assert a.worker.version == 1 and len(a.lan(udp(HOST_A, HOST_B))) == 1


def test_reports_answer_requests_and_the_channel_closing_ends_the_worker(make_worker) -> None:
    a = make_worker(state=gcm_policy(7))
    a.lan(udp(HOST_A, HOST_B))
    send(a.manager, encode(ReportRequest(5)))
    assert a.worker.handle_channel()
    report = receive(a.manager)
    assert isinstance(report, Report) and (report.serial, report.version) == (5, 7)
    assert report.counters[Counter.ENCRYPTED_PACKETS] == 1 and sum(report.drops) == 0
    a.manager.close()
    assert not a.worker.handle_channel()


def next_report(end: socket.socket, wanted: object) -> Report:
    """The first report from a blocking ``end`` for which ``wanted(report)`` holds."""
    while True:
        message = receive(end)
        if isinstance(message, Report) and wanted(message):
            return message


def test_the_loop_serves_packets_and_policies_until_the_channel_closes(make_worker) -> None:
    a = make_worker(report_interval=0.05)
    for end in (a.manager, a.outbound):
        end.setblocking(True)
        end.settimeout(10)
    loop = threading.Thread(target=a.worker.run)
    loop.start()
    try:
        send(a.manager, encode(gcm_policy()))
        send(a.manager, encode(ReportRequest(1)))
        assert next_report(a.manager, lambda r: r.serial == 1).version == 1
        a.outbound.send(udp(HOST_A, HOST_B))
        assert spi_of(a.outbound.recv(65535)) == SPI
        periodic = next_report(a.manager, lambda r: r.counters[Counter.ENCRYPTED_PACKETS])
        assert periodic.serial == 0
    finally:
        a.manager.close()
        loop.join(10)
    assert not loop.is_alive()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"sas": gcm_policy().sas * 2}, "listed twice"),
        ({"encrypting": {"deny-discard": SPI}}, "not a permit rule"),
        ({"encrypting": {"a-b": NEW_SPI}}, "not among the SAs"),
        ({"rules": (Rule("x", Selector(LAN_A, LAN_B)), Rule("x", Selector(), PolicyAction.DENY))}, "unique"),
    ],
)
def test_policy_state_consistency(change: dict[str, object], problem: str) -> None:
    with pytest.raises(SpdError, match=problem):
        replace(gcm_policy(), **change)


def test_policy_state_survives_the_channel() -> None:
    manager, worker = channel_pair()
    with manager, worker:
        state = gcm_policy(4, sid=3, sid_bits=8)
        send(manager, encode(state))
        assert receive(worker) == state
        assert receive(worker) is None
