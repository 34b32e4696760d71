"""The key server core with its rekey engines: timer, pushes out, acks in, operator commands, reload, store failures.

Members register through real Main Mode and GROUPKEY-PULL (``Net`` from
``test_server``), then hold what the PULL gave them in ``gdoi.push``'s
``PushReceiver`` -- so every push the core sends is decrypted and
verified as a member would, and its acknowledgement goes back through
``KeyServer.receive``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import ip_address

import pytest

from groupvpn.crypto.errors import CryptoError
from groupvpn.gdoi import GroupAssociatedPolicy, RegistrationComplete, RegistrationFailed
from groupvpn.gdoi.push import PushAccepted, PushReceiver
from groupvpn.ks.rekey import (
    KeyGenerated,
    MemberReauthorized,
    MemberRemoved,
    PushAcknowledged,
    PushSent,
    RekeyConfig,
)
from groupvpn.ks.removal import RemovalMethod
from groupvpn.ks.server import KeyServer, ServerOutput, StoreFailed, UnknownGroup
from groupvpn.ks.store import KeyState, KeyStore, MemberState, StoreError
from groupvpn.ks.views import events, registered_members, statistics
from groupvpn.wire.message import Header
from groupvpn.wire.numbers import SigAlgorithm, SigHashAlgorithm
from test_server import KS, LISTED, T0, Net, group, settings

TEK_REKEY = T0 + 1620  # the groups' TEKs live 1800 s; 10 % before the end


@dataclass
class Members:
    """What registered members hold of each group: a PushReceiver per (member, group)."""

    net: Net
    receivers: dict[tuple[str, int], PushReceiver] = field(default_factory=dict)
    accepted: list[tuple[str, int, PushAccepted]] = field(default_factory=list)

    def register(self, host: str, groups: tuple[int, ...], now: float = T0) -> None:
        member = self.net.join(host, groups, now=now)
        self.net.deliver(now)
        for group_id in groups:
            result = member.results[group_id]
            assert isinstance(result, RegistrationComplete), result
            policy = result.policy
            assert policy.kek is not None and policy.kek_keys is not None and result.seq is not None
            receiver = PushReceiver(group_id, ip_address(host))
            receiver.install(policy.kek, policy.kek_keys, result.seq)
            self.receivers[host, group_id] = receiver

    def deliver(self, out: ServerOutput, now: float) -> list[object]:
        """Hand ``out``'s pushes to the members they are for; their acks go back to the server.

        Returns every event: ``out``'s and those of the acks.
        """
        seen: list[object] = list(out.events)
        for datagram in out.datagrams:
            host = datagram.addr[0]
            assert datagram.addr == (host, 848)
            header = Header.decode(datagram.data)
            spi = header.icookie + header.rcookie
            (receiver,) = [r for (h, _), r in self.receivers.items() if h == host and spi in r.rekey_sas]
            result = receiver.receive(datagram.data, KS, now)
            assert isinstance(result, PushAccepted), result
            self.accepted.append((host, receiver.group_id, result))
            if result.policy is not None and result.policy.kek is not None and result.policy.kek_keys is not None:
                receiver.install(result.policy.kek, result.policy.kek_keys)
            if result.datagram_for_ack is not None:
                seen += self.net.server.receive(result.datagram_for_ack, (host, 848), now).events
        return seen


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "ks.db") as store:
        yield store


@pytest.fixture
def net(store):
    return Net(KeyServer(settings(), store, T0))


@pytest.fixture
def members(net):
    members = Members(net)
    members.register(LISTED[0], (1, 2))
    members.register(LISTED[1], (1,))
    net.server.handle_timer(T0 + 61)  # finished PULLs are forgotten
    return members


def of(kind: type, seen: list[object]) -> list:  # type: ignore[type-arg]
    return [e for e in seen if isinstance(e, kind)]


def test_the_rekey_schedule_is_the_core_timer_and_acks_come_back_through_receive(members, store):
    server = members.net.server
    assert server.groups[1].rekey.next_deadline == TEK_REKEY and server.timer is not None
    assert server.timer <= TEK_REKEY
    out = server.handle_timer(TEK_REKEY)
    assert sorted(d.addr[0] for d in out.datagrams) == [LISTED[0], LISTED[0], LISTED[1]]
    assert [(e.group_id, e.seq, e.members) for e in of(PushSent, list(out.events))] == [
        (1, 1, tuple(LISTED)),
        (2, 1, (LISTED[0],)),
    ]
    seen = members.deliver(out, TEK_REKEY)
    acks = sorted((e.group_id, e.member, e.seq) for e in of(PushAcknowledged, seen))
    assert acks == [(1, LISTED[0], 1), (1, LISTED[1], 1), (2, LISTED[0], 1)]
    # Every member holds the key the server now serves.
    for _, group_id, accepted in members.accepted:
        (tek,) = store.teks(group_id, KeyState.ACTIVE)
        assert accepted.policy is not None and [k.spi for k in accepted.policy.tek_keys] == [tek.spi.to_bytes(4, "big")]
    view = registered_members(server)
    assert [(r["group"], r["member"], r["state"], r["reason"], r["last_ack_seq"]) for r in view["records"]] == [
        (1, LISTED[0], "active", None, 1),
        (1, LISTED[1], "active", None, 1),
        (2, LISTED[0], "active", None, 1),
    ]
    counters = {(r["scope"], r["counter"]): r["value"] for r in statistics(server)["records"]}
    assert counters[("group 1", "pushes sent")] == 1 and counters[("group 1", "push acknowledgements")] == 2
    assert counters[("group 2", "keys generated")] == 1
    assert out.timer is not None and out.timer > TEK_REKEY  # the acks' deadline, then the next rekey


def test_acknowledgements_under_a_kek_the_server_never_issued_are_dropped(members):
    server = members.net.server
    out = server.handle_timer(TEK_REKEY)
    push = next(d.data for d in out.datagrams if d.addr[0] == LISTED[1])
    accepted = members.receivers[LISTED[1], 1].receive(push, KS, TEK_REKEY)
    assert isinstance(accepted, PushAccepted) and accepted.datagram_for_ack is not None
    forged = bytes(range(1, 17)) + accepted.datagram_for_ack[16:]  # cookies of no KEK
    assert server.receive(forged, (LISTED[1], 848), TEK_REKEY).events == ()
    assert server.stats["acknowledgements under an unknown KEK"] == 1
    (acked,) = server.receive(accepted.datagram_for_ack, (LISTED[1], 848), TEK_REKEY).events
    assert isinstance(acked, PushAcknowledged) and acked.member == LISTED[1]


def test_a_forced_rekey_pushes_a_new_kek_then_new_teks_to_that_group_only(members, store):
    server = members.net.server
    (old_kek,) = store.keks(1, KeyState.ACTIVE)
    out = server.force_rekey(1, T0 + 100)
    assert [(e.group_id, e.purpose) for e in of(PushSent, list(out.events))] == [
        (1, "new KEK, rekey requested by the administrator"),
        (1, "new TEKs, rekey requested by the administrator"),
    ]
    members.deliver(out, T0 + 100)
    (new_kek,) = store.keks(1, KeyState.ACTIVE)
    assert new_kek.spi != old_kek.spi
    assert all(new_kek.spi in r.rekey_sas for (h, g), r in members.receivers.items() if g == 1)
    view = events("rekey", of(PushSent, list(out.events)))
    assert [r["event"] for r in view["records"]][0].startswith("group 1: push SEQ 1 under KEK ")
    with pytest.raises(UnknownGroup, match="group 9 is not configured"):
        server.force_rekey(9, T0 + 100)


def test_removal_from_every_group_refusal_and_reauthorization_for_one(members, store):
    server, net = members.net.server, members.net
    out = server.remove_member(LISTED[0], RemovalMethod.DTD, T0 + 100)
    assert [(e.group_id, e.member) for e in of(MemberRemoved, list(out.events))] == [(1, LISTED[0]), (2, LISTED[0])]
    members.deliver(out, T0 + 100)
    rows = {(r["group"], r["member"]): r for r in registered_members(server)["records"]}
    assert (rows[1, LISTED[0]]["state"], rows[1, LISTED[0]]["reason"]) == ("removed", "removed by the administrator (method dtd)")
    assert rows[1, LISTED[1]]["state"] == "active"
    with pytest.raises(ValueError, match=f"{LISTED[0]} is not a member of any group"):
        server.remove_member(LISTED[0], RemovalMethod.DELETE, T0 + 101)
    with pytest.raises(ValueError, match=f"{LISTED[1]} is not a removed member of any group"):
        server.reauthorize(LISTED[1], T0 + 101)

    again = net.join(LISTED[0], (1,), now=T0 + 102, rng=None)
    net.deliver(T0 + 102)
    refused = again.results[1]
    assert isinstance(refused, RegistrationFailed)
    assert f"AUTHENTICATION_FAILED (member {LISTED[0]} was removed from group 1 by the administrator)" in refused.reason

    out = server.reauthorize(LISTED[0], T0 + 200, group_id=1)
    assert [e.group_id for e in of(MemberReauthorized, list(out.events))] == [1]
    back = net.join(LISTED[0], (1, 2), now=T0 + 201, rng=None)
    net.deliver(T0 + 201)
    assert isinstance(back.results[1], RegistrationComplete) and isinstance(back.results[2], RegistrationFailed)
    assert store.member(1, LISTED[0]).state is MemberState.ACTIVE  # type: ignore[union-attr]
    assert store.member(2, LISTED[0]).state is MemberState.REMOVED  # type: ignore[union-attr]


def test_a_store_failure_holds_the_rekey_back_then_the_same_keys_go_out(members, store, monkeypatch):
    server = members.net.server

    def full(kek_spi: bytes) -> int:
        raise StoreError("database or disk is full")

    monkeypatch.setattr(store, "next_push_seq", full)
    out = server.handle_timer(TEK_REKEY)
    assert out.datagrams == () and server.stats["store failures"] == 2
    assert [e.text for e in of(StoreFailed, list(out.events))] == [
        f"key store failure while rekeying group {g} (next try in 10 s): database or disk is full" for g in (1, 2)
    ]
    assert out.timer == TEK_REKEY + 10
    (pending,) = store.teks(1, KeyState.PENDING)
    assert server.handle_timer(TEK_REKEY + 9).datagrams == ()
    monkeypatch.undo()
    out = server.handle_timer(TEK_REKEY + 10)
    assert [e.recovered for e in of(KeyGenerated, list(out.events))] == [True, True]
    members.deliver(out, TEK_REKEY + 10)
    (active,) = store.teks(1, KeyState.ACTIVE)
    assert (active.spi, active.keys) == (pending.spi, pending.keys)
    assert {accepted.payloads.seq for _, _, accepted in members.accepted} == {1}


def test_a_pull_meeting_a_store_failure_is_dropped_and_its_retransmission_served(net, store, monkeypatch):
    def locked(kek_spi: bytes) -> int:
        raise StoreError("database is locked")

    monkeypatch.setattr(store, "last_push_seq", locked)
    member = net.join(LISTED[0], (1,))
    net.deliver()
    (failed,) = [e for e in net.events if isinstance(e, StoreFailed)]
    assert failed.text == f"key store failure while answering a GROUPKEY-PULL from {LISTED[0]}: database is locked"
    assert member.results == {}
    monkeypatch.undo()
    for step in range(1, 20):
        net.tick(T0 + step * 0.25)
    assert isinstance(member.results[1], RegistrationComplete)


def test_a_reload_pushes_the_changed_gap_and_a_changed_delivery_gets_a_new_engine(members):
    server = members.net.server
    engine = server.groups[1].rekey
    old = group(1, "gm")
    gap = GroupAssociatedPolicy(activation_delay=5, deactivation_delay=20, anti_replay_window=10)
    changed = replace(old, keys=replace(old.keys, gap=gap))
    out = server.reconfigure(settings(groups=(changed, group(2, "gm", "anyone"))), T0 + 300)
    assert [(e.group_id, e.purpose) for e in of(PushSent, list(out.events))] == [
        (1, "policy update, configuration changed")
    ]
    members.deliver(out, T0 + 300)
    updates = [a.policy for h, g, a in members.accepted if g == 1]
    assert len(updates) == 2 and all(p is not None and p.gap == gap for p in updates)
    assert server.groups[1].rekey is engine
    slower = replace(changed, rekey=RekeyConfig(retransmission_period=30, retransmissions=0))
    out = server.reconfigure(settings(groups=(slower, group(2, "gm", "anyone"))), T0 + 301)
    assert out.datagrams == () and server.groups[1].rekey is not engine
    assert server.groups[1].rekey.config.retransmission_period == 30
    assert server.groups[1].stats["pushes sent"] == 1  # the counters stay with the group


def test_a_reload_that_cannot_be_served_changes_nothing(members):
    server = members.net.server
    old = group(1, "gm")
    changed = replace(old, keys=replace(old.keys, gap=None))
    second = group(2, "gm", "anyone")
    # Group 2's stored signing key is ECDSA; an RSA configuration cannot use it.
    rsa_kek = replace(second.keys.kek, sig_algorithm=SigAlgorithm.RSA, sig_hash=SigHashAlgorithm.SHA256)
    rsa = replace(second, keys=replace(second.keys, kek=rsa_kek))
    with pytest.raises(CryptoError):
        server.reconfigure(settings(groups=(changed, rsa)), T0 + 300)
    assert server.groups[1].keys.config == old.keys and server.groups[2].keys.config == second.keys
    assert server.settings.groups == (old, second)
