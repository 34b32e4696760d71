"""Rekeying wired into the member core: real key server cores and their rekey engine, in memory.

``member_lab`` carries the datagrams and moves the clock; the key server
address holds a key server core whose group keys also feed a
``ks.rekey.RekeyEngine``, so pushes are the engine's real bytes and the
member's acknowledgements reach the engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import pytest
from member_lab import GM, GM_KEY, KS1, Lab, key_server, vpn

from groupvpn.gm.member import AttemptFailed, Failure, IkeSaUp, Registered
from groupvpn.gm.rekey import PullRekeyStarted, PushApplied, PushDropped, Removed, SaActivated, SaDeactivated
from groupvpn.ike.events import Datagram
from groupvpn.ike.sa import Address
from groupvpn.ks.rekey import PushAcknowledged, RekeyEngine
from groupvpn.ks.rekey import RekeyOutput as ServerOutput
from groupvpn.ks.removal import RemovalMethod
from groupvpn.ks.server import Gateway, KeyServer
from groupvpn.ks.store import KeyStore
from groupvpn.runtime.member_daemon import describe
from groupvpn.wire.message import Header
from groupvpn.wire.numbers import ExchangeType


@dataclass
class RekeyingServer:
    """A key server core and the rekey engine of one of its groups: acknowledgements go to the engine."""

    core: KeyServer
    engine: RekeyEngine
    events: list[object] = field(default_factory=list)

    def receive(self, datagram: bytes, source: Address, now: float) -> list[Datagram]:
        if Header.decode(datagram).exchange == ExchangeType.GROUPKEY_PUSH_ACK:
            acked = self.engine.receive_ack(datagram, source, now)
            self.events += acked.events
            return list(acked.datagrams)
        served = self.core.receive(datagram, source, now)
        self.events += served.events
        return list(served.datagrams)

    def send(self, lab: Lab, out: ServerOutput) -> None:
        """Put the engine's pushes on the wire of ``lab`` and deliver everything."""
        self.events += out.events
        lab.in_flight.extend((d.addr, KS1, d.data) for d in out.datagrams)
        lab.deliver()

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "ks.db") as s:
        yield s


def rekeying_lab(store: KeyStore, group_id: int, *vpns: object) -> tuple[Lab, RekeyingServer]:
    core = key_server(store)
    lab = Lab.make(list(vpns) or [vpn()], {})  # type: ignore[arg-type]
    server = RekeyingServer(core, RekeyEngine(core.groups[group_id].keys, lab.now))
    lab.servers[KS1] = server  # type: ignore[assignment]
    return lab, server


def test_a_push_reaches_the_group_holding_its_kek_and_is_acknowledged(store):
    lab, server = rekeying_lab(store, 2, vpn("lan", 1, interface="eth1"), vpn("guest", 2, interface="eth2"))
    lab.link(True, "eth1")
    lab.link(True, "eth2")
    assert lab.state("lan") == lab.state("guest") == "REGISTERED"
    lan = lab.sadb.groups[1]
    lab.now += 100
    pushed_at = lab.now
    server.send(lab, server.engine.force_rekey(lab.now))
    kek_push, tek_push = lab.of(PushApplied)
    assert (kek_push.group_id, tek_push.group_id) == (2, 2)
    assert lab.sadb.groups[1] is lan  # group 1 untouched
    guest = lab.sadb.groups[2]
    assert guest.kek is not None and guest.kek.spi == tek_push.kek_spi and guest.kek.seq == 1
    assert [(e.member, e.seq) for e in server.of(PushAcknowledged)] == [(GM, 1), (GM, 1)]
    # The ATD is a timer of the member core.
    lab.run(lambda: bool(lab.of(SaActivated)))
    assert lab.now == pushed_at + 5 and lab.member.stats["GROUPKEY-PUSH under unknown KEKs"] == 0


def test_a_pull_rekey_registers_again_over_the_ike_sa_it_has(store):
    lab, _ = rekeying_lab(store, 1)
    lab.link(True)
    tek = lab.sadb.groups[1].teks[0]
    lab.run(lambda: len(lab.of(Registered)) == 2)
    (started,) = lab.of(PullRekeyStarted)
    assert started.reason.startswith(f"TEK 0x{tek.spi.hex()} has ") and started.reason.endswith(" and no successor")
    assert tek.expires_at - 0.07 * 1800 <= lab.now <= tek.expires_at - 0.05 * 1800
    assert len(lab.of(IkeSaUp)) == 1 and lab.state() == "REGISTERED"
    # The answer restated the same TEK: its end stays where it was, and no second PULL follows it.
    assert lab.sadb.groups[1].teks[0].expires_at == tek.expires_at
    lab.run(lambda: lab.now >= tek.expires_at)
    assert len(lab.of(PullRekeyStarted)) == 1


def test_a_removed_member_is_refused_and_reports_why(store):
    lab, server = rekeying_lab(store, 1)
    lab.link(True)
    lab.now += 100
    core = server.core
    others = Gateway("gms", GM_KEY, frozenset({"198.18.77.7"}))  # the member's address is no longer listed
    core.reconfigure(replace(core.settings, gateways=(others, *core.settings.gateways[1:])), lab.now)
    server.send(lab, server.engine.remove_member(GM, RemovalMethod.DELETE, lab.now))
    lab.run(lambda: bool(lab.of(AttemptFailed)))
    (started,) = lab.of(PullRekeyStarted)
    (failed,) = lab.of(AttemptFailed)
    (removed,) = lab.of(Removed)
    assert failed.failure is Failure.REFUSED
    assert (
        removed.text
        == f"removed from group 1 by the key server: {started.reason}; re-registration refused: {failed.reason}"
    )
    assert (
        started.reason.endswith("deleted by push SEQ 1") and f"member {GM} not authorized for group 1" in failed.reason
    )
    assert 1 not in lab.sadb.groups and lab.state() == "WAITING"
    assert {e.kind for e in lab.of(SaDeactivated)} == {"TEK", "KEK"}


def test_the_daemon_logs_removals_as_errors_and_dropped_pushes_as_warnings(store):
    lab, server = rekeying_lab(store, 1)
    lab.link(True)
    lab.now += 100
    out = server.engine.force_rekey(lab.now)
    server.send(lab, out)
    lab.apply(lab.member.receive(out.datagrams[0].data, KS1, lab.now))  # a retransmitted copy
    lab.run(lambda: bool(lab.of(SaDeactivated)))  # ATD, then DTD
    for event in lab.of(PushApplied) + lab.of(SaActivated) + lab.of(SaDeactivated):
        assert describe(event) == (logging.INFO, event.text)
    (dropped,) = lab.of(PushDropped)
    assert describe(dropped) == (logging.WARNING, dropped.text) and "duplicate push" in dropped.text
    removed = Removed(1, "TEK 0x00001234 deleted by push SEQ 3", "key server 198.18.0.1 refused registration")
    assert describe(removed) == (logging.ERROR, removed.text)
