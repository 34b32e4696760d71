"""The key server core in memory: members (Phase1Initiator + PullInitiator) against KeyServer, fake clock."""

from __future__ import annotations

import sqlite3
import sys
from collections import deque
from dataclasses import dataclass, field, replace
from ipaddress import ip_address
from pathlib import Path

import pytest

from groupvpn.crypto.suites import esp_suite
from groupvpn.gdoi import (
    Endpoint,
    FailureKind,
    MemberRegistered,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationRefused,
    SenderIds,
)
from groupvpn.ike import FailureReason, IkeSaDeleted, IkeSaEstablished, IkeSaFailed, PreSharedKey, Suite
from groupvpn.ike.events import Collector
from groupvpn.ike.informational import notify
from groupvpn.ks.rekey import Delivery, RekeyConfig
from groupvpn.ks.server import (
    Gateway,
    GroupSettings,
    KeyServer,
    PolicyRejected,
    PullLimits,
    PullRateLimited,
    RegistrationNotStored,
    ServerEvent,
    ServerSettings,
    TokenBuckets,
)
from groupvpn.ks.store import KeyState, KeyStore, StoreError
from groupvpn.wire.message import Header, Message
from groupvpn.wire.numbers import (
    EspTransform,
    ExchangeType,
    NotifyType,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ike"))
from group_configs import group_config  # noqa: E402
from member_client import DEFAULT_SUITE, TestMember  # noqa: E402
from phase1_link import SeededRng  # noqa: E402

T0 = 1_700_000_000.0
KS = ("198.18.0.1", 848)
GM_KEY = PreSharedKey(b"members-of-group-one-key")
WIDE_KEY = PreSharedKey(b"the-group-wide-pre-shared-key")
WRONG_KEY = PreSharedKey(b"not-the-key-anybody-configured")
LISTED = ("198.18.1.2", "198.18.1.3")


def group(group_id: int, *gateways: str, unicast: bool = True) -> GroupSettings:
    delivery = Delivery.UNICAST if unicast else Delivery.MULTICAST
    return GroupSettings(group_config(group_id, server=KS), gateways, RekeyConfig(delivery=delivery))


def settings(**changes: object) -> ServerSettings:
    fields: dict[str, object] = {
        "address": KS[0],
        "suites": (Suite.parse(DEFAULT_SUITE),),
        "gateways": (Gateway("gm", GM_KEY, frozenset(LISTED)), Gateway("anyone", WIDE_KEY)),
        "groups": (group(1, "gm"), group(2, "gm", "anyone")),
    }
    fields.update(changes)
    return ServerSettings(**fields)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path):
    return tmp_path / "ks.db"


@pytest.fixture
def store(db):
    with KeyStore(db) as s:
        yield s


@dataclass
class Net:
    """The key server and its members, datagrams carried by hand; time moves only when a test says."""

    server: KeyServer
    members: dict[str, TestMember] = field(default_factory=dict)
    in_flight: deque[tuple[str, str, bytes]] = field(default_factory=deque)  # (to, from host, data)
    events: list[ServerEvent] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    timer: float | None = None

    def join(self, host: str, groups: tuple[int, ...], psk: PreSharedKey = GM_KEY, now: float = T0, **kw: object) -> TestMember:
        kw.setdefault("rng", SeededRng(f"member {host}"))
        member = TestMember((host, 848), KS, psk, groups, **kw)  # type: ignore[arg-type]
        self.members[host] = member
        self._from_member(host, member.start(now))
        return member

    def _from_member(self, host: str, datagrams: list[bytes]) -> None:
        self.in_flight.extend(("KS", host, d) for d in datagrams)

    def _from_server(self, out) -> None:  # type: ignore[no-untyped-def]
        self.events += out.events
        self.timer = out.timer
        for datagram in out.datagrams:
            self.replies.append(datagram.data)
            self.in_flight.append((datagram.addr[0], "KS", datagram.data))

    def to_server(self, host: str, data: bytes, now: float = T0) -> list[bytes]:
        before = len(self.replies)
        self._from_server(self.server.receive(data, (host, 848), now))
        return self.replies[before:]

    def step(self, now: float = T0) -> None:
        to, source, data = self.in_flight.popleft()
        if to == "KS":
            self.to_server(source, data, now)
        else:
            self._from_member(to, self.members[to].receive(data, now))

    def deliver(self, now: float = T0) -> Net:
        for _ in range(100_000):
            if not self.in_flight:
                return self
            self.step(now)
        raise AssertionError("the network never went quiet")

    def tick(self, now: float) -> Net:
        for host, member in self.members.items():
            self._from_member(host, member.tick(now))
        self._from_server(self.server.handle_timer(now))
        return self.deliver(now)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def net(store):
    return Net(KeyServer(settings(), store, T0, rng=SeededRng("ks")))


def test_a_listed_member_registers_and_gets_the_stored_keys(net, store):
    member = net.join("198.18.1.2", (1,))
    net.deliver()
    result = member.results[1]
    assert isinstance(result, RegistrationComplete), result
    policy = result.policy
    (kek,) = store.keks(1, KeyState.ACTIVE)
    (tek,) = store.teks(1, KeyState.ACTIVE)
    assert policy.kek is not None and policy.kek.spi == kek.spi
    assert policy.kek_keys is not None and policy.kek_keys.kek == kek.kek
    assert [t.spi for t in policy.teks] == [tek.spi.to_bytes(4, "big")] * 2
    assert [k.material for k in policy.tek_keys] == [tek.keys]
    # Unicast: pushes go to the member's Phase 1 address and port.
    assert policy.kek.destination == Endpoint(ip_address("198.18.1.2"), 848)
    assert result.seq == 0
    assert net.kinds() == ["IkeSaEstablished", "MemberRegistered"]
    (registered,) = net.of(MemberRegistered)
    assert (registered.group_id, registered.peer.address) == (1, ("198.18.1.2", 848))
    assert [m.address for m in store.members(1)] == ["198.18.1.2"]
    assert net.server.stats["registrations"] == 1 and net.server.groups[1].stats["registrations"] == 1


def test_multicast_groups_name_the_configured_rekey_address(store):
    net = Net(KeyServer(settings(groups=(group(1, "gm", unicast=False),)), store, T0))
    member = net.join("198.18.1.2", (1,))
    net.deliver()
    result = member.results[1]
    assert isinstance(result, RegistrationComplete) and result.policy.kek is not None
    assert result.policy.kek.destination == Endpoint(ip_address("239.192.0.1"), 848)


def test_unknown_group_is_refused_with_the_reason(net, store):
    member = net.join("198.18.1.2", (99,))
    net.deliver()
    result = member.results[99]
    assert isinstance(result, RegistrationFailed) and result.kind is FailureKind.REFUSED
    assert "INVALID_ID_INFORMATION (unknown group 99)" in result.reason
    (refused,) = net.of(RegistrationRefused)
    assert (refused.group_id, refused.reason) == (99, "unknown group 99")
    assert net.server.stats["refusals: INVALID_ID_INFORMATION"] == 1
    assert store.members(1) == [] and store.members(99) == []


def test_a_member_with_the_group_wide_key_may_join_only_groups_of_that_gateway(net, store):
    member = net.join("198.18.2.2", (1, 2), psk=WIDE_KEY)
    net.deliver()
    refused = member.results[1]
    assert isinstance(refused, RegistrationFailed) and refused.kind is FailureKind.REFUSED
    assert "member 198.18.2.2 not authorized for group 1" in refused.reason
    assert isinstance(member.results[2], RegistrationComplete)
    (event,) = net.of(RegistrationRefused)
    assert (event.group_id, event.notify_type, event.reason) == (
        1,
        NotifyType.AUTHENTICATION_FAILED,
        "member 198.18.2.2 not authorized for group 1",
    )
    assert net.server.groups[1].stats["refusals: AUTHENTICATION_FAILED"] == 1
    assert [m.address for m in store.members(2)] == ["198.18.2.2"] and store.members(1) == []


def test_a_listed_member_cannot_use_the_group_wide_key(net):
    member = net.join("198.18.1.3", (2,), psk=WIDE_KEY)
    net.deliver()
    assert member.ike_failure is not None and member.ike_failure.reason is FailureReason.AUTHENTICATION_FAILED
    (failed,) = net.of(IkeSaFailed)
    assert failed.reason is FailureReason.AUTHENTICATION_FAILED and failed.peer[0] == "198.18.1.3"


def test_wrong_pre_shared_key_fails_phase_1_with_the_reason(net, store):
    member = net.join("198.18.1.2", (1,), psk=WRONG_KEY)
    net.deliver()
    (failed,) = net.of(IkeSaFailed)
    assert failed.reason is FailureReason.AUTHENTICATION_FAILED
    assert failed.message.startswith("authentication failed:") and "pre-shared key differs" in failed.message
    assert member.ike_failure is not None and member.results == {}
    assert store.members(1) == []


def test_unacceptable_proposal_fails_phase_1_with_the_reason(net):
    member = net.join("198.18.1.2", (1,), suites=("3des-sha1-modp1024",))
    net.deliver()
    (failed,) = net.of(IkeSaFailed)
    assert failed.reason is FailureReason.NO_PROPOSAL_CHOSEN and "198.18.1.2" in failed.message
    assert member.ike_failure is not None and member.ike_failure.reason is FailureReason.NO_PROPOSAL_CHOSEN


def _run_main_mode(net: Net, host: str) -> TestMember:
    """Deliver until the member's PULL message 1 is the next datagram for the server."""
    member = net.join(host, (1,))
    while not any(Header.decode(d).exchange == ExchangeType.GROUPKEY_PULL for to, _, d in net.in_flight if to == "KS"):
        net.step()
    return member


def test_a_duplicate_message_1_gets_the_cached_reply_without_new_state(net, store):
    _run_main_mode(net, "198.18.1.2")
    (_, host, message1) = net.in_flight.popleft()
    first = net.to_server(host, message1)
    again = net.to_server(host, message1)
    assert len(first) == 1 and again == first
    assert net.server.pull_stats()["duplicate"] == 1
    assert net.server.stats["pulls rate limited"] == 0 and net.server.pulls_in_progress == 1
    assert store.members(1) == []  # nothing changes before message 3


def test_the_member_is_stored_before_message_4_leaves(net, db):
    _run_main_mode(net, "198.18.1.2")
    net.step()  # message 1 -> message 2
    with KeyStore(db) as other:
        assert other.members(1) == []
    net.step()  # message 2 reaches the member, message 3 is in flight
    (_, host, message3) = net.in_flight.popleft()
    (message4,) = net.to_server(host, message3)
    with KeyStore(db) as other:  # another connection sees the committed row while message 4 is unsent
        assert [m.address for m in other.members(1)] == ["198.18.1.2"]
    assert Header.decode(message4).exchange == ExchangeType.GROUPKEY_PULL


def test_no_message_4_when_the_member_cannot_be_stored(net, store, monkeypatch):
    _run_main_mode(net, "198.18.1.2")
    net.step()
    net.step()
    (_, host, message3) = net.in_flight.popleft()

    def broken(*args: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "register_member", broken)
    assert net.to_server(host, message3) == []
    (lost,) = net.of(RegistrationNotStored)
    assert lost.group_id == 1 and lost.reason == "member 198.18.1.2 of group 1 not recorded: disk full"
    assert net.of(MemberRegistered) == [] and net.server.pulls_in_progress == 0
    assert net.to_server(host, message3) == []  # its retransmission starts nothing either


def test_new_pulls_are_rate_limited_per_source(store):
    limits = PullLimits(rate=1.0, burst=2)
    net = Net(KeyServer(settings(pull_limits=limits, groups=tuple(group(g, "gm") for g in (1, 2, 3, 4))), store, T0))
    member = net.join("198.18.1.2", (1, 2, 3, 4))
    other = net.join("198.18.1.3", (1,))
    net.deliver()
    assert sorted(member.results) == [1, 2] and isinstance(other.results[1], RegistrationComplete)
    assert net.server.stats["pulls rate limited"] == 1
    assert [e.address for e in net.of(PullRateLimited)] == ["198.18.1.2"]
    net.tick(T0 + 0.2)  # group 3's retransmission: still no token, and no second event
    assert net.server.stats["pulls rate limited"] == 2 and len(net.of(PullRateLimited)) == 1
    net.tick(T0 + 5)  # the bucket refilled
    assert sorted(member.results) == [1, 2, 3, 4]
    assert all(isinstance(r, RegistrationComplete) for r in member.results.values())


def test_token_buckets_refill_at_their_rate_and_forget_full_sources():
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.first_refusal("a") and not buckets.first_refusal("a")
    assert buckets.take("a", 0.5) and not buckets.take("a", 0.5)
    buckets.prune(0.6)
    assert len(buckets) == 1
    buckets.prune(2.0)
    assert len(buckets) == 0


def test_many_members_register_concurrently_and_share_the_group_keys(store):
    hosts = [f"198.18.3.{i}" for i in range(1, 41)]
    gateway = Gateway("gm", GM_KEY, frozenset(hosts))
    net = Net(KeyServer(settings(gateways=(gateway,), groups=(group(1, "gm"), group(2, "gm"))), store, T0))
    members = [net.join(host, (1, 2)) for host in hosts]  # every message 1 is in flight before any reply
    net.deliver()
    for g in (1, 2):
        policies = [m.results[g].policy for m in members]  # type: ignore[union-attr]
        assert {(p.kek.spi, p.kek_keys.kek, p.tek_keys) for p in policies} == {  # type: ignore[union-attr]
            (policies[0].kek.spi, policies[0].kek_keys.kek, policies[0].tek_keys)  # type: ignore[union-attr]
        }
        assert sorted(m.address for m in store.members(g)) == sorted(hosts)
    assert net.server.stats["registrations"] == 80 and len(net.server.phase1.sessions) == 40


def test_a_member_rejecting_the_policy_is_reported(net):
    member = _run_main_mode(net, "198.18.1.2")
    net.step()  # the server answers message 1; its message 2 is in flight
    net.in_flight.clear()
    session = member.phase1.session
    assert session is not None
    sent = Collector()
    session.send(sent, notify(session.sa, NotifyType.ATTRIBUTES_NOT_SUPPORTED, b"TEK 00001234: no ESP_NULL"))
    (datagram,) = sent.datagrams
    assert net.to_server("198.18.1.2", datagram.data) == []
    (rejected,) = net.of(PolicyRejected)
    assert (rejected.group_id, rejected.notify_type) == (1, NotifyType.ATTRIBUTES_NOT_SUPPORTED)
    assert rejected.reason == (
        "member 198.18.1.2 rejected the policy of group 1: ATTRIBUTES_NOT_SUPPORTED (TEK 00001234: no ESP_NULL)"
    )
    assert net.server.groups[1].stats["policy rejected by member"] == 1 and net.server.pulls_in_progress == 0


def test_a_member_deleting_its_ike_sa_ends_its_pulls(net):
    member = _run_main_mode(net, "198.18.1.2")
    net.step()
    net.in_flight.clear()
    for datagram in member.phase1.delete(T0).datagrams:
        net.to_server("198.18.1.2", datagram.data)
    assert net.of(IkeSaDeleted) and net.server.pulls_in_progress == 0 and not net.server.phase1.sessions


def test_unfinished_pulls_are_forgotten_after_the_timeout(net):
    _run_main_mode(net, "198.18.1.2")
    net.step()
    net.in_flight.clear()  # message 2 is lost and the member gives up
    assert net.server.pulls_in_progress == 1 and net.timer == T0 + net.server.settings.pull_limits.timeout
    net.server.handle_timer(T0 + 29)
    assert net.server.pulls_in_progress == 1
    net.server.handle_timer(T0 + 30)
    assert net.server.pulls_in_progress == 0 and net.server.stats["pulls abandoned by members"] == 1


def test_pulls_need_an_established_ike_sa_from_its_peer(net):
    forged = Message.sealed(b"\x01" * 8, b"\x02" * 8, ExchangeType.GROUPKEY_PULL, 8, b"\x00" * 32, message_id=7)
    assert net.to_server("198.18.1.2", forged.encode()) == []
    assert net.server.stats["pulls without an IKE SA"] == 1
    assert net.to_server("198.18.1.2", b"\x00" * 10) == [] and net.server.stats["malformed datagrams"] == 1


def test_reconfigure_applies_to_new_exchanges(net, store):
    first = net.join("198.18.1.2", (1,))
    net.deliver()
    assert isinstance(first.results[1], RegistrationComplete)
    changed = settings(
        gateways=(Gateway("gm", WRONG_KEY, frozenset(LISTED)),), groups=(group(2, "gm"),)
    )
    net.server.reconfigure(changed, T0 + 1)
    late = net.join("198.18.1.3", (1, 2), psk=WRONG_KEY, now=T0 + 1)
    net.deliver(T0 + 1)
    assert isinstance(late.results[2], RegistrationComplete)
    assert isinstance(late.results[1], RegistrationFailed) and "unknown group 1" in late.results[1].reason
    assert net.server.stats["registrations"] == 2 and len(net.server.phase1.sessions) == 2


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {
                "gateways": (
                    Gateway("gm", GM_KEY, frozenset(LISTED)),
                    Gateway("anyone", WIDE_KEY, frozenset(LISTED[:1])),
                )
            },
            "member 198.18.1.2 is listed in gateways with different pre-shared keys",
        ),
        ({"gateways": (Gateway("gm", GM_KEY), Gateway("anyone", WIDE_KEY))}, "only one group-wide key is possible"),
        ({"groups": (group(1, "nope"),)}, "group 1 names unknown IKE gateway nope"),
        ({"groups": (group(1, "gm"), group(1, "gm"))}, "group IDs must be unique"),
        ({"suites": ()}, "no IKE proposal"),
    ],
)
def test_inconsistent_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        settings(**change)


def test_counter_mode_groups_give_every_registration_fresh_sender_ids(store, db):
    gcm = esp_suite(EspTransform.AES_GCM_16, 128)
    plain = group(1, "gm")
    counter = replace(plain, keys=replace(plain.keys, teks=(replace(plain.keys.teks[0], suite=gcm),)))
    net = Net(KeyServer(settings(groups=(counter,)), store, T0))

    def sender_ids(host: str, **kw: object) -> RegistrationComplete | RegistrationFailed:
        """A registration over a new IKE SA."""
        member = net.join(host, (1,), rng=SeededRng(f"registration {len(net.of(IkeSaEstablished))}"), **kw)
        net.deliver()
        return member.results[1]

    first, second, again = sender_ids(LISTED[0]), sender_ids(LISTED[1], sender_ids=3), sender_ids(LISTED[0])
    shown = [r.policy.sender_ids for r in (first, second, again) if isinstance(r, RegistrationComplete)]
    # Sequential from 0, NUMBER_OF_SID_BITS 16, new ones on every PULL (RFC 6407 §3.5).
    assert shown == [SenderIds(16, (0,)), SenderIds(16, (1, 2, 3)), SenderIds(16, (4,))]
    assert [e.sender_ids for e in net.of(MemberRegistered)] == shown
    greedy = sender_ids(LISTED[1], sender_ids=65)
    assert isinstance(greedy, RegistrationFailed)
    assert "ATTRIBUTES_NOT_SUPPORTED (member 198.18.1.3 asked for 65 sender IDs; a registration gets at most 64)" in greedy.reason
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE grp SET next_sender_id = 65535")
    assert sender_ids(LISTED[0], sender_ids=2).reason.endswith(  # type: ignore[union-attr]
        "(member 198.18.1.2 needs 2 sender IDs, but group 1 has 1 of its 65536 sender IDs left)"
    )
    assert sender_ids(LISTED[1]).policy.sender_ids == SenderIds(16, (65535,))  # type: ignore[union-attr]


def test_a_restarted_server_serves_the_same_keys(db):
    with KeyStore(db) as store:
        net = Net(KeyServer(settings(), store, T0))
        first = net.join("198.18.1.2", (1,))
        net.deliver()
    with KeyStore(db) as store:
        net = Net(KeyServer(settings(), store, T0 + 60))
        second = net.join("198.18.1.3", (1,), now=T0 + 60)
        net.deliver(T0 + 60)
        a, b = first.results[1], second.results[1]
        assert isinstance(a, RegistrationComplete) and isinstance(b, RegistrationComplete)
        assert (a.policy.kek_keys, a.policy.tek_keys) == (b.policy.kek_keys, b.policy.tek_keys)
        assert a.policy.kek.spi == b.policy.kek.spi  # type: ignore[union-attr]
        assert [m.address for m in store.members(1)] == ["198.18.1.2", "198.18.1.3"]
