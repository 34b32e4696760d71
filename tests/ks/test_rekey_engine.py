"""RekeyEngine over a real store, with real PushReceivers as members and an injected clock.

Members join the way the key server's PULL directory serves them (current
policy, last push SEQ under the KEK), receive the engine's datagrams
through ``gdoi.push.PushReceiver`` -- so every push is decrypted, its SEQ
and signature checked and its policy validated as a member would -- and
send back the acknowledgements the receiver builds.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from groupvpn.crypto.suites import esp_suite
from groupvpn.gdoi import (
    AckRequest,
    Endpoint,
    GroupAssociatedPolicy,
    GroupPolicy,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationRefused,
    TrafficSelector,
)
from groupvpn.gdoi.ack import build_ack
from groupvpn.gdoi.push import PushAccepted, PushReceiver, PushRejected, PushRejection
from groupvpn.ike import PreSharedKey, Suite
from groupvpn.ike.events import Datagram
from groupvpn.ks.keys import GroupConfig, GroupKeys, TekConfig
from groupvpn.ks.rekey import (
    AckDropped,
    AckMissing,
    Delivery,
    KeyGenerated,
    KeysActivated,
    MemberInactive,
    MemberReauthorized,
    MemberRemoved,
    PushAcknowledged,
    PushRetransmitted,
    PushSent,
    RekeyConfig,
    RekeyEngine,
    RekeyOutput,
)
from groupvpn.ks.removal import RemovalMethod, removal_refusal
from groupvpn.ks.server import Gateway, GroupSettings, KeyServer, ServerSettings
from groupvpn.ks.store import KeyState, KeyStore, MemberState, StoreError
from groupvpn.wire.message import HEADER, Header
from groupvpn.wire.numbers import (
    AuthAlgorithm,
    EspTransform,
    ExchangeType,
    GdoiProtocol,
    KekAckType,
    NotifyType,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ike"))
from group_configs import CBC, KS_ADDR, LAN_A  # noqa: E402
from group_configs import group_config as shared_group_config  # noqa: E402
from member_client import DEFAULT_SUITE, TestMember  # noqa: E402
from phase1_link import SeededRng  # noqa: E402

T0 = 1_700_000_000.0
GROUP = 42
LAN_C = Endpoint(ip_network("198.18.30.0/24"))
CBC256 = esp_suite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256)
GAP = GroupAssociatedPolicy(activation_delay=5, deactivation_delay=30)
HOSTS = ("198.18.1.2", "198.18.1.3", "198.18.1.4")
PSK = PreSharedKey(b"the-members-of-group-42")


# TEK sa1 (600 s: rekey at 540 s) and a KEK (2000 s: rekey at 1800 s).
group_config = partial(shared_group_config, GROUP, kek_lifetime=2000, tek_lifetime=600, gap=GAP)


@dataclass
class Gm:
    """A member as pushes reach it: E's PushReceiver plus the TEK SPIs and GAP it would install."""

    address: str
    receiver: PushReceiver
    teks: set[bytes]
    gap: GroupAssociatedPolicy | None
    up: bool = True  # receives datagrams
    acking: bool = True  # its acknowledgements reach the key server
    accepted: list[PushAccepted] = field(default_factory=list)
    rejected: list[PushRejected] = field(default_factory=list)

    @classmethod
    def registered(cls, address: str, policy: GroupPolicy, seq: int) -> Gm:
        """A member holding what a PULL gave it: ``policy`` and the SEQ of message 4."""
        assert policy.kek is not None and policy.kek_keys is not None
        receiver = PushReceiver(GROUP, ip_address(address))
        receiver.install(policy.kek, policy.kek_keys, seq)
        return cls(address, receiver, {k.spi for k in policy.tek_keys}, policy.gap)

    @classmethod
    def join(cls, keys: GroupKeys, address: str, now: float) -> Gm:
        """Register as the PULL directory would serve it: current policy, last SEQ under the KEK."""
        keys.store.register_member(GROUP, address, now)
        policy = keys.current_policy(now)
        assert policy.kek is not None
        return cls.registered(address, policy, keys.store.last_push_seq(policy.kek.spi))

    @property
    def keks(self) -> set[bytes]:
        return set(self.receiver.rekey_sas)

    def receive(self, datagram: bytes, now: float) -> bytes | None:
        """Process a push as a member does; the acknowledgement to send, if any."""
        result = self.receiver.receive(datagram, KS_ADDR, now)
        if isinstance(result, PushRejected):
            self.rejected.append(result)
            return result.datagram_for_ack
        self.accepted.append(result)
        for delete in result.payloads.deletes:
            for spi in delete.spis:
                if delete.protocol == GdoiProtocol.KEK:
                    self.receiver.remove(spi)
                else:
                    self.teks.discard(spi)
        policy = result.policy
        if policy is not None:
            if policy.kek is not None and policy.kek_keys is not None:
                self.receiver.install(policy.kek, policy.kek_keys)
            self.teks |= {k.spi for k in policy.tek_keys}
            self.gap = policy.gap
        return result.datagram_for_ack


@dataclass
class Lab:
    """The engine and its members; datagrams carried by hand, time moves only when a test says."""

    keys: GroupKeys
    engine: RekeyEngine
    members: dict[str, Gm] = field(default_factory=dict)
    events: list[object] = field(default_factory=list)
    sent: list[Datagram] = field(default_factory=list)

    def join(self, *hosts: str, now: float = T0) -> None:
        for host in hosts:
            self.members[host] = Gm.join(self.keys, host, now)

    def run(self, out: RekeyOutput, now: float) -> RekeyOutput:
        """Deliver ``out``'s datagrams (a multicast one to every member) and return the acks."""
        self.events += out.events
        self.sent += out.datagrams
        acks = []
        for datagram in out.datagrams:
            host = datagram.addr[0]
            reached = self.members.values() if ip_address(host).is_multicast else [self.members[host]]
            for gm in reached:
                if gm.up and (ack := gm.receive(datagram.data, now)) is not None and gm.acking:
                    acks.append((ack, gm.address))
        for ack, source in acks:
            self.run(self.engine.receive_ack(ack, (source, 848), now), now)
        return out

    def tick(self, now: float) -> RekeyOutput:
        return self.run(self.engine.handle_timer(now), now)

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]

    def clear(self) -> None:
        self.events.clear()
        self.sent.clear()


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "ks.db") as s:
        yield s


def make_lab(store: KeyStore, config: GroupConfig | None = None, rekey: RekeyConfig = RekeyConfig()) -> Lab:
    keys = GroupKeys(store, config or group_config(), rng=SeededRng("ks"))
    return Lab(keys, RekeyEngine(keys, T0, rekey))


@pytest.fixture
def lab(store):
    lab = make_lab(store)
    lab.join(*HOSTS)
    return lab


def current_spis(keys: GroupKeys, now: float) -> tuple[bytes, set[bytes]]:
    policy = keys.current_policy(now)
    assert policy.kek is not None
    return policy.kek.spi, {k.spi for k in policy.tek_keys}


def pushes(lab: Lab) -> list[tuple[int, str, str, tuple[str, ...]]]:
    return [(e.seq, e.kek_spi, e.purpose, e.members) for e in lab.of(PushSent)]


# -- schedule -------------------------------------------------------------------------------


def test_teks_are_pushed_when_ten_percent_of_their_lifetime_remains(lab, store):
    kek_spi, (old_tek,) = current_spis(lab.keys, T0)
    assert lab.engine.next_deadline == T0 + 540
    assert lab.tick(T0 + 539) == RekeyOutput(timer=T0 + 540)
    out = lab.tick(T0 + 540)
    # One datagram per member, the same bytes for all, to port 848.
    assert [d.addr for d in out.datagrams] == [(h, 848) for h in HOSTS]
    assert len({d.data for d in out.datagrams}) == 1
    header = Header.decode(out.datagrams[0].data)
    assert (header.exchange, header.icookie + header.rcookie) == (ExchangeType.GROUPKEY_PUSH, kek_spi)
    (generated,) = lab.of(KeyGenerated)
    assert (generated.kind, generated.sa, generated.recovered) == ("TEK", "sa1", False)
    assert pushes(lab) == [(1, kek_spi.hex(), "new TEKs, scheduled rekey", HOSTS)]
    _, (new_tek,) = current_spis(lab.keys, T0 + 540)
    assert new_tek != old_tek and generated.spi == f"0x{new_tek.hex()}"
    for gm in lab.members.values():
        (accepted,) = gm.accepted
        assert accepted.payloads.seq == 1 and accepted.policy is not None
        assert accepted.policy.kek is None  # no KEK change in a TEK rekey
        assert [k.spi for k in accepted.policy.tek_keys] == [new_tek]
        assert accepted.policy.gap == GAP
        assert gm.teks == {old_tek, new_tek}
    # Every member acknowledged; the store remembers it, nothing is retransmitted.
    assert sorted(e.member for e in lab.of(PushAcknowledged)) == list(HOSTS)
    assert {(m.last_ack_spi, m.last_ack_seq) for m in store.members(GROUP)} == {(kek_spi, 1)}
    # The PULL directory serves the pushed keys and SEQ from now on.
    assert store.last_push_seq(kek_spi) == 1
    assert out.timer == T0 + 550  # when it left, the push awaited acks
    assert lab.engine.next_deadline == T0 + 540 + 540  # all came: the next rekey is all that is left
    assert lab.tick(T0 + 560).datagrams == ()
    assert [type(e) for e in lab.events] == [KeyGenerated, PushSent, KeysActivated, *[PushAcknowledged] * 3]


def test_the_rekey_fraction_is_configurable(store):
    lab = make_lab(store, group_config(rekey_fraction=0.25))
    assert lab.engine.next_deadline == T0 + 450


def test_a_kek_rollover_goes_first_and_the_teks_follow_under_the_new_kek(store):
    lab = make_lab(store, group_config(kek_lifetime=600))  # KEK and TEK due together
    lab.join(*HOSTS)
    old_kek, (old_tek,) = current_spis(lab.keys, T0)
    lab.tick(T0 + 540)
    new_kek, (new_tek,) = current_spis(lab.keys, T0 + 540)
    assert new_kek != old_kek and new_tek != old_tek
    assert pushes(lab) == [
        (1, old_kek.hex(), "new KEK, scheduled rekey", HOSTS),
        (1, new_kek.hex(), "new TEKs, scheduled rekey", HOSTS),  # a new KEK's first push carries 1
    ]
    for gm in lab.members.values():
        kek_push, tek_push = gm.accepted
        assert kek_push.kek_spi == old_kek and kek_push.policy is not None
        assert kek_push.policy.kek is not None and kek_push.policy.kek.spi == new_kek
        assert kek_push.policy.tek_keys == ()  # no TEK rides with a KEK change (RFC 6407 §7.4.1)
        assert tek_push.kek_spi == new_kek and tek_push.policy is not None and tek_push.policy.kek is None
        assert gm.keks == {old_kek, new_kek} and new_tek in gm.teks
    acked = [(e.kek_spi, e.seq) for e in lab.of(PushAcknowledged)]
    assert sorted(set(acked)) == sorted({(old_kek.hex(), 1), (new_kek.hex(), 1)}) and len(acked) == 6
    assert [e.spis for e in lab.of(KeysActivated)] == [(new_kek.hex(),), (f"0x{new_tek.hex()}",)]


def test_a_restart_between_generating_and_pushing_pushes_the_same_keys_with_a_higher_seq(tmp_path):
    path = tmp_path / "ks.db"
    with KeyStore(path) as store:
        lab = make_lab(store)
        lab.join(*HOSTS)
        kek_spi, _ = current_spis(lab.keys, T0)
        # The first run generated the keys and claimed a SEQ, then died before sending.
        pending = lab.keys.prepare_rekey(T0 + 540)
        assert store.next_push_seq(kek_spi) == 1
    with KeyStore(path) as store:
        keys = GroupKeys(store, group_config(), rng=SeededRng("restarted"))
        restarted = Lab(keys, RekeyEngine(keys, T0 + 560), lab.members)
        assert restarted.engine.next_deadline == T0 + 540  # pending keys are due at once
        out = restarted.tick(T0 + 560)
        (recovered,) = restarted.of(KeyGenerated)
        assert recovered.recovered and recovered.spi == f"{pending.teks[0].spi:#010x}"
        assert "generated before a restart and never pushed" in recovered.text
        assert pushes(restarted) == [(2, kek_spi.hex(), "new TEKs, scheduled rekey", HOSTS)]
        assert out.datagrams and all(gm.accepted[0].payloads.seq == 2 for gm in lab.members.values())
        (tek,) = store.teks(GROUP, KeyState.ACTIVE)
        assert tek.keys == pending.teks[0].keys and tek.spi == pending.teks[0].spi
        assert store.last_push_seq(kek_spi) == 2


def test_forced_rekey_replaces_kek_and_teks_now(lab):
    old_kek, old_teks = current_spis(lab.keys, T0)
    lab.run(lab.engine.force_rekey(T0 + 30), T0 + 30)
    new_kek, new_teks = current_spis(lab.keys, T0 + 30)
    assert new_kek != old_kek and not new_teks & old_teks
    assert [e.purpose for e in lab.of(PushSent)] == [
        "new KEK, rekey requested by the administrator",
        "new TEKs, rekey requested by the administrator",
    ]
    assert all(gm.teks == old_teks | new_teks and new_kek in gm.keks for gm in lab.members.values())
    assert lab.engine.next_deadline == T0 + 30 + 540


# -- acknowledgements and retransmission ------------------------------------------------------


def test_retransmissions_go_to_silent_members_at_the_period_then_they_are_judged(lab, store):
    lab.tick(T0 + 540)  # everyone acknowledges SEQ 1
    lab.clear()
    late, gone = lab.members["198.18.1.3"], lab.members["198.18.1.4"]
    late.up = gone.up = False
    start = T0 + 1080
    first = lab.tick(start)
    assert lab.engine.next_deadline == start + 10
    assert lab.tick(start + 9.9).datagrams == ()
    late.up = True
    again = lab.tick(start + 10)
    assert [d.addr[0] for d in again.datagrams] == ["198.18.1.3", "198.18.1.4"]
    assert {d.data for d in again.datagrams} == {first.datagrams[0].data}  # the same push, same SEQ
    third = lab.tick(start + 20)
    assert [d.addr[0] for d in third.datagrams] == ["198.18.1.4"]  # late acknowledged the second copy
    assert [(e.attempt, e.of, e.members) for e in lab.of(PushRetransmitted)] == [
        (1, 2, ("198.18.1.3", "198.18.1.4")),
        (2, 2, ("198.18.1.4",)),
    ]
    assert lab.tick(start + 29.9).events == ()
    judged = lab.tick(start + 30)
    assert judged.datagrams == ()
    (inactive,) = lab.of(MemberInactive)
    assert inactive.member == "198.18.1.4" and inactive.reason == "no ack for push SEQ 2 after 2 retransmissions"
    assert inactive.text == (
        "group 42: member 198.18.1.4 marked inactive: no ack for push SEQ 2 after 2 retransmissions"
    )
    member = store.member(GROUP, "198.18.1.4")
    assert (member.state, member.reason, member.last_ack_seq) == (MemberState.INACTIVE, inactive.reason, 1)
    assert judged.timer == lab.engine.next_deadline == start + 540  # nothing left in flight
    lab.clear()
    lab.tick(start + 540)  # the inactive member gets no more pushes
    assert pushes(lab)[0][3] == HOSTS[:2]


def test_a_member_that_never_acknowledged_is_reported_but_not_marked_inactive(lab, store):
    mute = lab.members["198.18.1.4"]
    mute.acking = False  # e.g. a member without RFC 8263
    lab.tick(T0 + 540)
    for t in (10, 20, 30):
        lab.tick(T0 + 540 + t)
    assert len(lab.of(PushRetransmitted)) == 2 and lab.of(MemberInactive) == []
    (missing,) = lab.of(AckMissing)
    assert missing.member == "198.18.1.4" and missing.seq == 1
    assert "not marked inactive: it has never acknowledged a push (RFC 8263 §6)" in missing.text
    assert store.member(GROUP, "198.18.1.4").state is MemberState.ACTIVE
    # Its copies were real: the member accepted the first and dropped the retransmissions as duplicates.
    assert len(mute.accepted) == 1 and [r.reason for r in mute.rejected] == [PushRejection.DUPLICATE] * 2


def test_a_late_ack_makes_an_inactive_member_active_again(lab, store):
    lab.tick(T0 + 540)
    gm = lab.members["198.18.1.4"]
    gm.up = False
    for t in (0, 10, 20, 30):
        lab.tick(T0 + 1080 + t)
    assert store.member(GROUP, gm.address).state is MemberState.INACTIVE
    last = lab.sent[-1]  # the last retransmission, to it alone, finally arrives
    assert last.addr == (gm.address, 848)
    ack = gm.receive(last.data, T0 + 1111)
    assert ack is not None
    lab.run(lab.engine.receive_ack(ack, (gm.address, 848), T0 + 1111), T0 + 1111)
    acked = lab.of(PushAcknowledged)[-1]
    assert acked.reactivated and acked.text == (
        f"group 42: member 198.18.1.4 acknowledged push SEQ 2 under KEK {acked.kek_spi}; active again"
    )
    assert store.member(GROUP, gm.address).state is MemberState.ACTIVE


def test_a_member_registering_again_during_retransmissions_leaves_them(lab, store):
    gm = lab.members["198.18.1.4"]
    gm.up = False
    lab.tick(T0 + 540)
    store.register_member(GROUP, gm.address, T0 + 545)  # its PULL served the new keys
    assert lab.tick(T0 + 550).datagrams == ()
    assert lab.tick(T0 + 570).events == () and store.member(GROUP, gm.address).state is MemberState.ACTIVE


def test_acks_that_prove_nothing_are_dropped(lab, store):
    lab.tick(T0 + 540)
    gm = lab.members[HOSTS[0]]
    ack = gm.accepted[0].datagram_for_ack
    assert ack is not None

    def dropped(datagram: bytes) -> str:
        (event,) = lab.engine.receive_ack(datagram, ("198.18.9.9", 848), T0 + 541).events
        assert isinstance(event, AckDropped) and event.source == "198.18.9.9"
        return event.text

    assert "duplicate acknowledgement" in dropped(ack)
    tampered = bytearray(ack)
    tampered[HEADER.size + 4] ^= 1  # the first octet of HASH
    assert "bad HASH" in dropped(bytes(tampered))
    (kek,) = store.keks(GROUP, KeyState.ACTIVE)
    stranger = build_ack(kek.spi, kek.kek, KekAckType.KEK_SHA256, 1, ip_address("198.18.9.9"))
    assert dropped(stranger) == (
        "group 42: acknowledgement of push SEQ 1 from 198.18.9.9, which is not a member of the group"
    )
    assert store.member(GROUP, HOSTS[0]).last_ack_seq == 1


def test_without_acks_every_push_is_sent_count_plus_one_times(store):
    lab = make_lab(store, group_config(ack=None), RekeyConfig(retransmission_period=2, retransmissions=3))
    lab.join(*HOSTS)
    lab.tick(T0 + 540)
    for t in (2, 4, 6, 8, 10):
        lab.tick(T0 + 540 + t)
    assert [e.attempt for e in lab.of(PushRetransmitted)] == [1, 2, 3]
    assert len(lab.sent) == 4 * len(HOSTS) and len({d.data for d in lab.sent}) == 1
    assert lab.of(PushAcknowledged) == [] and lab.of(AckMissing) == []
    for gm in lab.members.values():
        assert len(gm.accepted) == 1 and len(gm.rejected) == 3  # the repeats are duplicates to it
    assert lab.engine.next_deadline == T0 + 1080


def test_retransmissions_of_a_kek_rollover_keep_their_order(store):
    lab = make_lab(store, group_config(kek_lifetime=600))
    lab.join(*HOSTS)
    gm = lab.members[HOSTS[2]]
    gm.up = False
    lab.tick(T0 + 540)
    gm.up = True
    lab.tick(T0 + 550)  # KEK push first, so the TEK push under the new KEK opens
    assert [e.seq for e in lab.of(PushRetransmitted)] == [1, 1]
    assert [a.payloads.seq for a in gm.accepted] == [1, 1] and gm.rejected == []
    assert len({(e.kek_spi, e.seq) for e in lab.of(PushAcknowledged) if e.member == gm.address}) == 2


# -- multicast ----------------------------------------------------------------------------


def test_multicast_groups_send_one_datagram_to_the_kek_destination(store):
    lab = make_lab(store, rekey=RekeyConfig(delivery=Delivery.MULTICAST))
    lab.join(*HOSTS)
    lab.members[HOSTS[2]].up = False
    out = lab.tick(T0 + 540)
    assert [d.addr for d in out.datagrams] == [("239.192.0.1", 848)]
    assert "sent to multicast 239.192.0.1 port 848" in lab.of(PushSent)[0].text
    again = lab.tick(T0 + 550)  # repeated while some member has not acknowledged
    assert [d.addr for d in again.datagrams] == [("239.192.0.1", 848)]
    lab.members[HOSTS[2]].up = True
    lab.tick(T0 + 560)
    assert lab.tick(T0 + 570).datagrams == () and lab.of(AckMissing) == []


def test_both_delivers_by_unicast_and_multicast(store):
    lab = make_lab(store, rekey=RekeyConfig(delivery=Delivery.BOTH))
    lab.join(*HOSTS[:2])
    out = lab.tick(T0 + 540)
    assert [d.addr for d in out.datagrams] == [(HOSTS[0], 848), (HOSTS[1], 848), ("239.192.0.1", 848)]
    assert all(len(gm.accepted) == 1 and len(gm.rejected) == 1 for gm in lab.members.values())


def test_multicast_needs_a_multicast_kek_destination(store):
    config = group_config()
    unicast_only = replace(config, kek=replace(config.kek, destination=Endpoint(ip_address("198.18.0.255"), 848)))
    with pytest.raises(ValueError, match="multicast delivery needs a multicast address .* not 198.18.0.255"):
        make_lab(store, unicast_only, RekeyConfig(delivery=Delivery.MULTICAST))


def test_missing_acks_are_never_judged_before_ten_seconds(store):
    lab = make_lab(store, rekey=RekeyConfig(retransmission_period=2, retransmissions=2))
    lab.join(*HOSTS)
    lab.members[HOSTS[0]].up = False
    start = T0 + 540
    lab.tick(start)
    deadlines = []
    for _ in range(3):
        deadlines.append(lab.engine.next_deadline)
        lab.tick(deadlines[-1])
    assert deadlines == [start + 2, start + 4, start + 10]  # two copies 2 s apart, judged at 10 s (RFC 8263 §6)
    assert len(lab.of(PushRetransmitted)) == 2 and [e.member for e in lab.of(AckMissing)] == [HOSTS[0]]


def test_settings_that_cannot_work_are_refused(store):
    with pytest.raises(ValueError, match=r"removal DTD \(30 s\) must be smaller than the group's \(30 s\)"):
        make_lab(store, rekey=RekeyConfig(removal_dtd=30))
    with pytest.raises(ValueError, match="period must be positive"):
        RekeyConfig(retransmission_period=0)


# -- policy changes -----------------------------------------------------------------------


def test_a_policy_change_is_pushed_with_the_new_selectors_and_gap(lab):
    kek_spi, teks = current_spis(lab.keys, T0)
    gap = GroupAssociatedPolicy(activation_delay=10, deactivation_delay=60)
    wider = TekConfig("sa1", CBC, lifetime=600, selectors=(TrafficSelector(0, LAN_A, LAN_C),))
    lab.run(lab.engine.policy_changed(group_config(gap=gap, teks=(wider,)), T0 + 100), T0 + 100)
    assert pushes(lab) == [(1, kek_spi.hex(), "policy update, configuration changed", HOSTS)]
    assert lab.of(KeyGenerated) == []  # same keys, new policy
    for gm in lab.members.values():
        (update,) = gm.accepted
        assert update.policy is not None and update.policy.gap == gap
        assert [(t.spi, t.selector) for t in update.policy.teks] == [(next(iter(teks)), wider.selectors[0])]
        assert gm.gap == gap
    assert lab.keys.current_policy(T0 + 100).gap == gap  # and PULL serves it too
    lab.clear()
    lab.run(lab.engine.policy_changed(group_config(gap=gap, teks=(wider,)), T0 + 200), T0 + 200)
    assert lab.events == []  # a reload without changes pushes nothing


def test_a_changed_suite_gets_a_new_tek_and_a_removed_sa_is_deleted(store):
    sa2 = TekConfig("sa2", CBC, lifetime=600, selectors=(TrafficSelector(0, LAN_A, LAN_C),))
    lab = make_lab(store, group_config(teks=(group_config().teks[0], sa2)))
    lab.join(*HOSTS)
    _, before = current_spis(lab.keys, T0)
    (sa2_tek,) = store.teks(GROUP, KeyState.ACTIVE)[1:]
    faster = replace(group_config().teks[0], suite=CBC256)
    lab.run(lab.engine.policy_changed(group_config(teks=(faster,)), T0 + 100), T0 + 100)
    _, (new_tek,) = current_spis(lab.keys, T0 + 100)
    assert new_tek not in before
    (update,) = lab.members[HOSTS[0]].accepted
    assert [(d.protocol, d.spis) for d in update.payloads.deletes] == [
        (GdoiProtocol.IPSEC_ESP, (sa2_tek.spi.to_bytes(4, "big"),))
    ]
    assert update.policy is not None and [k.spi for k in update.policy.tek_keys] == [new_tek]
    assert update.policy.teks[0].suite == CBC256
    deleted = sa2_tek.spi.to_bytes(4, "big")
    assert all(gm.teks == before - {deleted} | {new_tek} for gm in lab.members.values())
    assert [t.name for t in store.teks(GROUP, KeyState.ACTIVE)] == ["sa1"]


def test_a_changed_sa_kek_is_announced_with_a_new_kek(lab):
    old_kek, _ = current_spis(lab.keys, T0)
    legacy = AckRequest(KekAckType.KEK_SHA256, legacy=True)
    lab.run(lab.engine.policy_changed(group_config(ack=legacy), T0 + 100), T0 + 100)
    new_kek, _ = current_spis(lab.keys, T0 + 100)
    assert new_kek != old_kek
    assert [e.purpose for e in lab.of(PushSent)] == [
        "new KEK, configuration changed",
        "policy update, configuration changed",
    ]
    for gm in lab.members.values():
        rollover = gm.accepted[0].policy
        assert rollover is not None and rollover.kek is not None and rollover.kek.ack == legacy
    assert len(lab.of(PushAcknowledged)) == 6


# -- member removal -----------------------------------------------------------------------


@pytest.mark.parametrize("method", list(RemovalMethod))
def test_a_removed_member_is_told_alone_and_the_others_are_rekeyed(lab, store, method):
    old_kek, old_teks = current_spis(lab.keys, T0)
    (old_tek,) = old_teks
    removed, others = lab.members["198.18.1.3"], [lab.members[h] for h in ("198.18.1.2", "198.18.1.4")]
    lab.run(lab.engine.remove_member("198.18.1.3", method, T0 + 100), T0 + 100)
    new_kek, (new_tek,) = current_spis(lab.keys, T0 + 100)
    assert new_kek != old_kek and new_tek != old_tek
    assert pushes(lab) == [
        (1, old_kek.hex(), f"removal of 198.18.1.3 by {method}", ("198.18.1.3",)),
        (2, old_kek.hex(), "new KEK, member 198.18.1.3 removed", ("198.18.1.2", "198.18.1.4")),
        (1, new_kek.hex(), "new TEKs, member 198.18.1.3 removed", ("198.18.1.2", "198.18.1.4")),
    ]
    (event,) = lab.of(MemberRemoved)
    assert event.text == (
        f"group 42: member 198.18.1.3 removed by the administrator (method {method}); "
        "its registrations are refused until it is re-authorized"
    )
    (told,) = removed.accepted
    if method is RemovalMethod.DELETE:
        assert told.policy is None
        assert [(d.protocol, d.spis) for d in told.payloads.deletes] == [
            (GdoiProtocol.IPSEC_ESP, (old_tek,)),
            (GdoiProtocol.KEK, (old_kek,)),
        ]
        assert removed.teks == set() and removed.keks == set()
    else:
        # Only the old SAs, no SA KEK, and a DTD smaller than the group's 30 s.
        assert told.payloads.deletes == () and told.policy is not None and told.policy.kek is None
        assert [k.spi for k in told.policy.tek_keys] == [old_tek]
        assert told.policy.gap == GroupAssociatedPolicy(activation_delay=5, deactivation_delay=5)
        assert removed.teks == {old_tek} and removed.keks == {old_kek}
    # It acknowledged its removal; it never saw the new keys, which the others hold.
    assert ("198.18.1.3", 1) in [(e.member, e.seq) for e in lab.of(PushAcknowledged)]
    assert new_kek not in removed.keks and new_tek not in removed.teks
    assert all(new_kek in gm.keks and new_tek in gm.teks for gm in others)
    # Removed in the store, refused by the PULL directory check and by the registry.
    member = store.member(GROUP, "198.18.1.3")
    assert (member.state, member.reason) == (MemberState.REMOVED, f"removed by the administrator (method {method})")
    refusal = removal_refusal(store, GROUP, "198.18.1.3")
    assert refusal is not None and refusal.notify_type is NotifyType.AUTHENTICATION_FAILED
    assert refusal.reason == "member 198.18.1.3 was removed from group 42 by the administrator"
    assert removal_refusal(store, GROUP, "198.18.1.2") is None
    with pytest.raises(StoreError, match="was removed"):
        store.register_member(GROUP, "198.18.1.3", T0 + 101)
    # Later pushes leave it out.
    lab.clear()
    lab.tick(T0 + 100 + 540)
    assert pushes(lab)[0][3] == ("198.18.1.2", "198.18.1.4")


def test_a_group_without_a_deactivation_delay_is_served_but_refuses_removal_by_dtd(store):
    lab = make_lab(store, group_config(gap=GroupAssociatedPolicy(activation_delay=5, deactivation_delay=0)),
                   RekeyConfig(removal_dtd=0))
    lab.join(*HOSTS)
    with pytest.raises(ValueError, match=r"DTD 0 s\), so a smaller DTD cannot remove a member: use method delete"):
        lab.engine.remove_member(HOSTS[1], RemovalMethod.DTD, T0 + 100)
    lab.run(lab.engine.remove_member(HOSTS[1], RemovalMethod.DELETE, T0 + 100), T0 + 100)
    assert lab.of(MemberRemoved)


def test_a_removed_member_stays_refused_until_reauthorized(lab, store):
    lab.run(lab.engine.remove_member("198.18.1.3", RemovalMethod.DELETE, T0 + 100), T0 + 100)
    with pytest.raises(ValueError, match="198.18.1.3 is removed already of group 42"):
        lab.engine.remove_member("198.18.1.3", RemovalMethod.DELETE, T0 + 101)
    with pytest.raises(ValueError, match="198.18.9.9 is not a member of group 42"):
        lab.engine.remove_member("198.18.9.9", RemovalMethod.DTD, T0 + 101)
    with pytest.raises(ValueError, match="198.18.1.2 is not a removed member"):
        lab.engine.reauthorize("198.18.1.2", T0 + 101)
    (event,) = lab.engine.reauthorize("198.18.1.3", T0 + 200).events
    assert isinstance(event, MemberReauthorized)
    assert event.text == "group 42: member 198.18.1.3 re-authorized; it may register again"
    assert removal_refusal(store, GROUP, "198.18.1.3") is None
    assert store.member(GROUP, "198.18.1.3").state is MemberState.INACTIVE  # no pushes before it registers
    assert store.register_member(GROUP, "198.18.1.3", T0 + 201).state is MemberState.ACTIVE


def test_removal_unacknowledged_is_retransmitted_to_the_removed_member_only(lab):
    removed = lab.members["198.18.1.3"]
    removed.up = False
    lab.run(lab.engine.remove_member("198.18.1.3", RemovalMethod.DTD, T0 + 100), T0 + 100)
    for t in (10, 20, 30):
        lab.tick(T0 + 100 + t)
    assert {e.members for e in lab.of(PushRetransmitted)} == {("198.18.1.3",)}
    (missing,) = lab.of(AckMissing)
    assert (missing.member, missing.seq, missing.outcome) == ("198.18.1.3", 1, "it is removed")
    assert lab.of(MemberInactive) == []


# -- with the key server's GROUPKEY-PULL --------------------------------------------------------


def register(server: KeyServer, host: str, now: float) -> tuple[TestMember, list[object]]:
    """A real Main Mode and PULL against ``server``, datagrams carried by hand (bounded)."""
    member = TestMember((host, 848), KS_ADDR, PSK, (GROUP,), suites=(DEFAULT_SUITE,), rng=SeededRng(host))
    queue = deque(("KS", d) for d in member.start(now))
    events: list[object] = []
    for _ in range(100):
        if not queue:
            return member, events
        to, data = queue.popleft()
        if to == "KS":
            out = server.receive(data, (host, 848), now)
            events += out.events
            queue.extend(("GM", d.data) for d in out.datagrams)
        else:
            queue.extend(("KS", d) for d in member.receive(data, now))
    raise AssertionError("the registration never went quiet")


def test_members_registering_after_a_push_get_its_keys_and_a_removed_one_is_not_registered(store):
    settings = ServerSettings(
        KS_ADDR[0],
        (Suite.parse(DEFAULT_SUITE),),
        (Gateway("gm", PSK),),
        (GroupSettings(group_config(), ("gm",)),),
    )
    server = KeyServer(settings, store, T0, rng=SeededRng("ks"))
    keys = server.groups[GROUP].keys
    lab = Lab(keys, server.groups[GROUP].rekey)  # the server's own engine, over the keys PULL serves
    first, _ = register(server, HOSTS[0], T0)
    pulled = first.results[GROUP]
    assert isinstance(pulled, RegistrationComplete) and pulled.seq is not None
    lab.members[HOSTS[0]] = Gm.registered(HOSTS[0], pulled.policy, pulled.seq)
    lab.join(HOSTS[1])
    lab.tick(T0 + 540)
    kek_spi, (new_tek,) = current_spis(keys, T0 + 540)
    late, _ = register(server, HOSTS[2], T0 + 541)
    result = late.results[GROUP]
    assert isinstance(result, RegistrationComplete)
    assert [k.spi for k in result.policy.tek_keys] == [new_tek] and result.seq == 1  # the push's SEQ
    assert new_tek in lab.members[HOSTS[0]].teks  # the member registered by PULL verified the push
    lab.members[HOSTS[2]] = Gm.registered(HOSTS[2], result.policy, result.seq)
    # A removed member is refused at message 1, with the reason.
    lab.run(lab.engine.remove_member(HOSTS[1], RemovalMethod.DELETE, T0 + 600), T0 + 600)
    new_kek, (newer_tek,) = current_spis(keys, T0 + 600)
    assert all(new_kek in lab.members[h].keks and newer_tek in lab.members[h].teks for h in (HOSTS[0], HOSTS[2]))
    again, events = register(server, HOSTS[1], T0 + 601)
    refused = again.results[GROUP]
    assert isinstance(refused, RegistrationFailed)
    assert refused.reason.endswith("AUTHENTICATION_FAILED (member 198.18.1.3 was removed from group 42 by the administrator)")
    (event,) = [e for e in events if isinstance(e, RegistrationRefused)]
    assert event.notify_type is NotifyType.AUTHENTICATION_FAILED and store.member(GROUP, HOSTS[1]).state is MemberState.REMOVED
