"""The key server core (GCKS, RFC 6407 §3.4), sans-IO: Phase 1, GROUPKEY-PULL, admission and rekeying.

One ``KeyServer`` answers every member on one socket.  Datagrams are
dispatched by their ISAKMP header: a GROUPKEY-PULL (exchange 32) under an
established IKE SA goes to the ``PullResponder`` of that SA and Message
ID, created on its first message if the source is within its PULL rate;
a GROUPKEY-PUSH acknowledgement (exchange 35) goes to the rekey engine of
the group whose KEK it names; everything else (Main Mode,
informationals, DPD, deletes) belongs to the ``Phase1Responder``.

Each group has one ``RekeyEngine`` sharing the group's ``GroupKeys``:
its deadlines join the core's timer, its pushes leave with the core's
datagrams and its events with the core's events.  The operator's
commands (forced rekey, member removal, re-authorization) and a
configuration reload are calls that return output like any other.

Admission follows the configuration: a member may join a group when one
of the group's gateways admits its address -- listed there, or not listed
anywhere when the gateway holds the group-wide key.  Group state changes
only once a member's message 3 validates (RFC 6407 §3.4): the member is
written to the store before message 4 leaves this object, so a crash can
lose a registration the member never saw complete, never one it did.

All times are seconds since the epoch: keys and members live in the
store across restarts, so the driver passes the wall clock.  A failing
store never escapes ``receive`` or ``handle_timer``: the datagram in hand
is dropped (the member retransmits) or the group's rekeying waits
``STORE_RETRY`` seconds, and a ``StoreFailed`` event says why.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import ip_address

from ..gdoi.events import MemberRegistered, Peer, PullOutput, RegistrationRefused
from ..gdoi.policy import Endpoint, GroupPolicy, SenderIds
from ..gdoi.pull import Offer, PullResponder, Refusal
from ..ike.events import Datagram, Event, IkeSaDeleted, NotifyReceived, Output
from ..ike.proposals import Suite
from ..ike.psk import PreSharedKey, PskStore
from ..ike.responder import Limits, Phase1Responder
from ..ike.sa import Address
from ..wire.errors import WireError
from ..wire.isakmp import Identification
from ..wire.message import Header
from ..wire.numbers import ExchangeType, NotifyType, name_of
from .keys import GroupConfig, GroupKeys
from .rekey import (
    AckDropped,
    Delivery,
    KeyGenerated,
    MemberInactive,
    MemberRemoved,
    PushAcknowledged,
    PushRetransmitted,
    PushSent,
    RekeyConfig,
    RekeyEngine,
    RekeyEvent,
    RekeyOutput,
)
from .removal import RemovalMethod, removal_refusal
from .store import SENDER_ID_BITS, KeyStore, MemberState, SenderIdsExhausted, StoreError

Rng = Callable[[int], bytes]

_ERROR_NOTIFY_LIMIT = 16384  # RFC 2408 §3.14.1: notify types below are errors
_REASON_LIMIT = 200  # characters of a member's notify text we repeat
STORE_RETRY = 10.0  # seconds a group's rekeying waits after the store failed
MAX_SENDER_IDS_PER_PULL = 64  # more would let one member drain its group's sender IDs


# -- settings ----------------------------------------------------------------------


def _address(text: str) -> str:
    return str(ip_address(text))


@dataclass(frozen=True)
class Gateway:
    """Members that may register through one IKE gateway, and the pre-shared key they prove it with.

    No ``addresses``: any address, with this key as the group-wide key.
    """

    name: str
    psk: PreSharedKey
    addresses: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", frozenset(_address(a) for a in self.addresses))


@dataclass(frozen=True)
class GroupSettings:
    """One group as the key server serves it: its keys and policy, who may join, how pushes travel.

    With unicast delivery the SA KEK a member receives names the member's
    own Phase 1 address and port as the push destination instead of
    ``keys.kek.destination`` (the multicast rekey address).
    """

    keys: GroupConfig
    gateways: tuple[str, ...]
    rekey: RekeyConfig = RekeyConfig()

    def __post_init__(self) -> None:
        if not self.gateways:
            raise ValueError(f"group {self.group_id} names no IKE gateway, so no member could join it")
        self.rekey.check(self.keys)

    @property
    def group_id(self) -> int:
        return self.keys.group_id

    @property
    def unicast(self) -> bool:
        return self.rekey.delivery is Delivery.UNICAST


@dataclass(frozen=True)
class PullLimits:
    """Per-source admission of new GROUPKEY-PULLs (a token bucket) and how long exchanges are kept."""

    rate: float = 1.0  # new PULLs per second per source address, sustained
    burst: int = 10  # new PULLs a quiet source may start at once
    timeout: float = 30.0  # an unfinished PULL is forgotten after this long without a message
    linger: float = 60.0  # a finished PULL keeps answering duplicates this long

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1 or self.timeout <= 0 or self.linger <= 0:
            raise ValueError(f"unusable PULL limits {self}")


@dataclass(frozen=True)
class ServerSettings:
    """Everything the key server core needs: its identity, Phase 1 suites, gateways and groups."""

    address: str  # the key server's own address: its Phase 1 identity
    suites: tuple[Suite, ...]
    gateways: tuple[Gateway, ...]
    groups: tuple[GroupSettings, ...]
    pull_limits: PullLimits = PullLimits()
    phase1_limits: Limits = Limits()

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _address(self.address))
        if not self.suites:
            raise ValueError("no IKE proposal: Phase 1 needs at least one")
        names = [g.name for g in self.gateways]
        if len(set(names)) != len(names):
            raise ValueError(f"gateway names must be unique: {names}")
        ids = [g.group_id for g in self.groups]
        if len(set(ids)) != len(ids):
            raise ValueError(f"group IDs must be unique: {ids}")
        for group in self.groups:
            unknown = [n for n in group.gateways if n not in names]
            if unknown:
                raise ValueError(f"group {group.group_id} names unknown IKE gateway {', '.join(unknown)}")
        self.psks()  # conflicting keys fail here, at configuration time

    def psks(self) -> PskStore:
        """Each listed address's key, and the group-wide key for every other address.

        Main Mode picks the key by address before any identity is seen, so
        an address has one key, and there is at most one group-wide key.
        """
        by_address: dict[str, PreSharedKey] = {}
        for gateway in self.gateways:
            for address in gateway.addresses:
                if by_address.setdefault(address, gateway.psk) != gateway.psk:
                    raise ValueError(f"member {address} is listed in gateways with different pre-shared keys")
        wide = {g.psk for g in self.gateways if not g.addresses}
        if len(wide) > 1:
            raise ValueError("gateways without addresses hold different pre-shared keys; only one group-wide key is possible")
        return PskStore(by_address, default=next(iter(wide), None))

    def gateways_of(self, address: str) -> frozenset[str]:
        """The gateways a member at ``address`` authenticated through."""
        listed = frozenset(g.name for g in self.gateways if address in g.addresses)
        return listed or frozenset(g.name for g in self.gateways if not g.addresses)


# -- events and output ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyRejected:
    """A member refused the policy of message 2 with an error notify under its IKE SA."""

    address: Address
    group_id: int
    notify_type: int
    reason: str


@dataclass(frozen=True, slots=True)
class PullRateLimited:
    """``address`` started more PULLs than its rate allows; reported once per burst of drops."""

    address: str


@dataclass(frozen=True, slots=True)
class RegistrationNotStored:
    """Message 3 validated but the store could not record the member, so message 4 was not sent."""

    peer: Peer
    group_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """The key store failed while the core was ``doing`` something; what was in hand is dropped."""

    doing: str
    reason: str

    @property
    def text(self) -> str:
        return f"key store failure while {self.doing}: {self.reason}"


ServerEvent = (
    Event
    | MemberRegistered
    | RegistrationRefused
    | PolicyRejected
    | PullRateLimited
    | RegistrationNotStored
    | StoreFailed
    | RekeyEvent
)

# Rekey events each group counts, for `show ... statistics`.
_COUNTED: dict[type, str] = {
    KeyGenerated: "keys generated",
    PushSent: "pushes sent",
    PushRetransmitted: "push retransmissions",
    PushAcknowledged: "push acknowledgements",
    AckDropped: "acknowledgements dropped",
    MemberInactive: "members marked inactive",
    MemberRemoved: "members removed",
}


@dataclass(frozen=True, slots=True)
class ServerOutput:
    datagrams: tuple[Datagram, ...] = ()
    timer: float | None = None
    events: tuple[ServerEvent, ...] = ()


@dataclass
class _Collector:
    datagrams: list[Datagram] = field(default_factory=list)
    events: list[ServerEvent] = field(default_factory=list)


# -- rate limiting ----------------------------------------------------------------------


@dataclass
class _Bucket:
    tokens: float
    at: float
    limited: bool = False


class TokenBuckets:
    """One token bucket per source: ``burst`` deep, refilled at ``rate`` per second of ``now``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, source: str, now: float) -> bool:
        """Spend a token of ``source``; False when it has none."""
        bucket = self._buckets.setdefault(source, _Bucket(float(self.burst), now))
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        bucket.limited = False
        return True

    def first_refusal(self, source: str) -> bool:
        """Mark ``source`` as limited; True the first time since its last accepted request."""
        bucket = self._buckets[source]
        first, bucket.limited = not bucket.limited, True
        return first

    def prune(self, now: float) -> None:
        """Forget sources whose buckets have refilled: they behave exactly like new ones."""
        for source, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.at) * self.rate >= self.burst:
                del self._buckets[source]

    def __len__(self) -> int:
        return len(self._buckets)


# -- groups -------------------------------------------------------------------------------


class UnknownGroup(LookupError):
    """A command or view named a group the key server does not serve."""


@dataclass
class Group:
    """A served group: its settings, its keys, its rekey engine (over the same keys) and what happened to it.

    ``resume_at``: after a store failure the engine is not run before then.
    """

    settings: GroupSettings
    keys: GroupKeys
    rekey: RekeyEngine
    stats: collections.Counter[str] = field(default_factory=collections.Counter)
    resume_at: float = 0.0

    @property
    def group_id(self) -> int:
        return self.settings.group_id

    def policy(self, member: Address | None, now: float) -> GroupPolicy:
        """The current policy and keys for ``member`` (None: as configured, to vet it)."""
        policy = self.keys.current_policy(now)
        kek = policy.kek
        if kek is None or member is None or not self.settings.unicast:
            return policy
        to_member = replace(kek, destination=Endpoint(ip_address(member[0]), member[1]))
        return replace(policy, sa=replace(policy.sa, kek=to_member))


class _Directory:
    """The groups as the PULL responders see them (``GroupDirectory``), at the time of the current call."""

    def __init__(self, server: KeyServer) -> None:
        self._server = server

    def lookup(self, group_id: int, peer: Peer) -> Offer | Refusal:
        server = self._server
        group = server.groups.get(group_id)
        if group is None:
            return Refusal(NotifyType.INVALID_ID_INFORMATION, f"unknown group {group_id}")
        address = peer.address[0]
        if not set(group.settings.gateways) & server.settings.gateways_of(address):
            return Refusal(NotifyType.AUTHENTICATION_FAILED, f"member {address} not authorized for group {group_id}")
        refusal = removal_refusal(server.store, group_id, address)
        if refusal is not None:
            return refusal
        policy = group.policy(peer.address, server.now)
        seq = 0 if policy.kek is None else server.store.last_push_seq(policy.kek.spi)
        return Offer(policy, seq)

    def allocate_sender_ids(self, group_id: int, peer: Peer, count: int) -> SenderIds | Refusal:
        """Fresh SIDs from the group's durable counter, on every PULL (RFC 6407 §3.5 step 4)."""
        member = f"member {peer.address[0]}"
        if count > MAX_SENDER_IDS_PER_PULL:
            reason = f"{member} asked for {count} sender IDs; a registration gets at most {MAX_SENDER_IDS_PER_PULL}"
            return Refusal(NotifyType.ATTRIBUTES_NOT_SUPPORTED, reason)
        try:
            values = self._server.store.allocate_sender_ids(group_id, count)
        except SenderIdsExhausted as err:
            # RFC 6054 §3: with every SID given out, new members are refused.
            return Refusal(NotifyType.ATTRIBUTES_NOT_SUPPORTED, f"{member} needs {count} sender IDs, but {err}")
        return SenderIds(SENDER_ID_BITS, values)


# -- the core -------------------------------------------------------------------------------


class KeyServer:
    """The key server of ``settings.groups`` over ``store``.

    Construction loads or generates every group's signing key, KEK and
    TEKs (before anything is served) and raises ``ValueError`` (a
    ``PolicyError`` among them) or ``StoreError`` when a group cannot be
    served.  Keys generated for a push that a crash kept from leaving are
    pushed at the first ``handle_timer``.
    """

    def __init__(self, settings: ServerSettings, store: KeyStore, now: float, *, rng: Rng = os.urandom) -> None:
        self.store = store
        self.stats: collections.Counter[str] = collections.Counter()
        self.now = now  # the time of the call being processed, for the directory
        self._rng = rng
        self._pulls: dict[tuple[bytes, int], PullResponder] = {}
        self._finished_pull_stats: collections.Counter[str] = collections.Counter()
        self._directory = _Directory(self)
        self.settings = settings
        self.groups = {config.group_id: self._group(config, now) for config in settings.groups}
        self.phase1 = Phase1Responder(
            settings.psks(),
            settings.suites,
            Identification.of(ip_address(settings.address)),
            limits=settings.phase1_limits,
            rng=rng,
        )
        self._buckets = TokenBuckets(settings.pull_limits.rate, settings.pull_limits.burst)

    def _group(self, config: GroupSettings, now: float) -> Group:
        """A served group: keys loaded or generated, its rekey engine over them, its policy vetted.

        The policy is built once here, so a group whose policy members would refuse fails now.
        """
        keys = GroupKeys(self.store, config.keys, self._rng)
        group = Group(config, keys, RekeyEngine(keys, now, config.rekey))
        group.policy(None, now)
        return group

    def reconfigure(self, settings: ServerSettings, now: float) -> ServerOutput:
        """Serve ``settings`` from now on (keys, suites, groups); IKE SAs and PULLs under way stay.

        Every group's policy is vetted before anything changes (raising
        like the constructor).  A group served before keeps its keys,
        engine and counters, and its engine pushes what changed
        (``RekeyEngine.policy_changed``: ATD/DTD, selectors, suites).  A
        group whose push delivery changed gets a new engine, which announces
        the change its new way; retransmissions under the old one end.
        Keys of a changed SA keep their algorithms until they are replaced.
        """
        self.now = now
        for config in settings.groups:
            GroupKeys(self.store, config.keys, self._rng).current_policy(now)
        out = _Collector()
        groups = {}
        for config in settings.groups:
            group = self.groups.get(config.group_id)
            if group is None:
                groups[config.group_id] = self._group(config, now)
                continue
            if group.settings.rekey != config.rekey:
                keys = GroupKeys(self.store, config.keys, self._rng)
                engine = RekeyEngine(keys, now, config.rekey)
                keys.config = group.keys.config  # what members hold, so that the difference is pushed
                group.keys, group.rekey = keys, engine
            group.settings = config
            self._run(out, group, partial(group.rekey.policy_changed, config.keys, now), now)
            groups[config.group_id] = group
        self.settings, self.groups = settings, groups
        self.phase1.configure(settings.psks(), settings.suites)
        self._buckets = TokenBuckets(settings.pull_limits.rate, settings.pull_limits.burst)
        return self._output(out)

    # -- inspection --------------------------------------------------------------------------

    @property
    def timer(self) -> float | None:
        limits = self.settings.pull_limits
        times = [
            (pull.last_activity or 0.0) + (limits.linger if pull.finished else limits.timeout)
            for pull in self._pulls.values()
        ]
        if self.phase1.timer is not None:
            times.append(self.phase1.timer)
        times += [due for group in self.groups.values() if (due := self._rekey_due(group)) is not None]
        return min(times, default=None)

    def _rekey_due(self, group: Group) -> float | None:
        """When the group's engine must run: its deadline, held back after a store failure."""
        try:
            deadline = group.rekey.next_deadline
        except StoreError:
            deadline = self.now  # unknown: run the engine, which reports the failure
        return None if deadline is None else max(deadline, group.resume_at)

    @property
    def pulls_in_progress(self) -> int:
        return sum(1 for pull in self._pulls.values() if not pull.finished)

    def pull_stats(self) -> collections.Counter[str]:
        """What the PULL responders counted (duplicates, bad hashes...), live and forgotten ones."""
        total = collections.Counter(self._finished_pull_stats)
        for pull in self._pulls.values():
            total.update(pull.stats)
        return total

    def ike_peers(self) -> frozenset[str]:
        """Addresses with an established IKE SA."""
        return frozenset(session.sa.peer[0] for session in self.phase1.sessions.values())

    # -- sans-IO entry points -------------------------------------------------------------

    def receive(self, datagram: bytes, addr: Address, now: float) -> ServerOutput:
        self.now = now
        try:
            header = Header.decode(datagram)
        except WireError:
            self.stats["malformed datagrams"] += 1
            return ServerOutput(timer=self.timer)
        out = _Collector()
        if header.exchange == ExchangeType.GROUPKEY_PULL and header.message_id != 0:
            try:
                self._pull(out, header, datagram, addr, now)
            except StoreError as err:
                self._store_failed(out, f"answering a GROUPKEY-PULL from {addr[0]}", err)
        elif header.exchange == ExchangeType.GROUPKEY_PUSH_ACK:
            self._ack(out, header, datagram, addr, now)
        else:
            self._phase1(out, self.phase1.receive(datagram, addr, now))
        return self._output(out)

    def handle_timer(self, now: float) -> ServerOutput:
        self.now = now
        limits = self.settings.pull_limits
        for key, pull in list(self._pulls.items()):
            keep = limits.linger if pull.finished else limits.timeout
            if now >= (pull.last_activity or 0.0) + keep:
                if not pull.finished:
                    self.stats["pulls abandoned by members"] += 1
                self._forget(key)
        self._buckets.prune(now)
        out = _Collector()
        self._phase1(out, self.phase1.handle_timer(now))
        for group in self.groups.values():
            due = self._rekey_due(group)
            if due is not None and now >= due:
                self._run(out, group, partial(group.rekey.handle_timer, now), now)
        return self._output(out)

    # -- operator commands ------------------------------------------------------------------

    def force_rekey(self, group_id: int, now: float) -> ServerOutput:
        """New KEK and TEKs for the group, pushed now (`request security group-vpn server rekey group N`).

        Raises ``UnknownGroup``, or ``StoreError`` (the command failed; the group's timer retries).
        """
        self.now = now
        group = self.group(group_id)
        out = _Collector()
        self._take(out, group, group.rekey.force_rekey(now))
        return self._output(out)

    def remove_member(
        self, address: str, method: RemovalMethod, now: float, group_id: int | None = None
    ) -> ServerOutput:
        """Remove a member from ``group_id``, or from every group it belongs to (see ``ks.removal``).

        Raises ``UnknownGroup``, ``ValueError`` for an address that is no
        (unremoved) member, or ``StoreError``.
        """
        self.now = now
        out = _Collector()
        for group in self._member_groups(address, group_id, removed=False):
            self._take(out, group, group.rekey.remove_member(address, method, now))
        return self._output(out)

    def reauthorize(self, address: str, now: float, group_id: int | None = None) -> ServerOutput:
        """Let a removed member register again to ``group_id``, or to every group it was removed from."""
        self.now = now
        out = _Collector()
        for group in self._member_groups(address, group_id, removed=True):
            self._take(out, group, group.rekey.reauthorize(address, now))
        return self._output(out)

    def group(self, group_id: int) -> Group:
        """The served group ``group_id``; ``UnknownGroup`` if there is none."""
        if group_id not in self.groups:
            raise UnknownGroup(f"group {group_id} is not configured on this key server")
        return self.groups[group_id]

    def _member_groups(self, address: str, group_id: int | None, *, removed: bool) -> list[Group]:
        """The group named, or else every group where ``address`` is a member that is (not) removed."""
        if group_id is not None:
            return [self.group(group_id)]
        address = _address(address)
        groups = [
            self.groups[g]
            for g in sorted(self.groups)
            if (member := self.store.member(g, address)) is not None
            and (member.state is MemberState.REMOVED) is removed
        ]
        if not groups:
            raise ValueError(f"{address} is not a {'removed ' if removed else ''}member of any group")
        return groups

    # -- rekey engines ----------------------------------------------------------------------

    def _run(self, out: _Collector, group: Group, call: Callable[[], RekeyOutput], now: float) -> None:
        """Run an engine call for the timer, an ack or a reload; a store failure holds the group back."""
        try:
            result = call()
        except StoreError as err:
            group.resume_at = now + STORE_RETRY
            self._store_failed(out, f"rekeying group {group.group_id} (next try in {STORE_RETRY:.0f} s)", err)
            return
        self._take(out, group, result)

    def _take(self, out: _Collector, group: Group, result: RekeyOutput) -> None:
        out.datagrams += result.datagrams
        for event in result.events:
            counter = _COUNTED.get(type(event))
            if counter is not None:
                group.stats[counter] += 1
        out.events += result.events

    def _ack(self, out: _Collector, header: Header, datagram: bytes, addr: Address, now: float) -> None:
        """A GROUPKEY-PUSH-ACK goes to the group whose KEK its cookies name."""
        try:
            group_id = self.store.kek_group(header.icookie + header.rcookie)
        except StoreError as err:
            self._store_failed(out, f"reading an acknowledgement from {addr[0]}", err)
            return
        group = None if group_id is None else self.groups.get(group_id)
        if group is None:
            self.stats["acknowledgements under an unknown KEK"] += 1
            return
        self._run(out, group, partial(group.rekey.receive_ack, datagram, addr, now), now)

    def _store_failed(self, out: _Collector, doing: str, err: StoreError) -> None:
        self.stats["store failures"] += 1
        out.events.append(StoreFailed(doing, str(err)))

    # -- Phase 1 ----------------------------------------------------------------------------

    def _phase1(self, out: _Collector, result: Output) -> None:
        out.datagrams += result.datagrams
        for event in result.events:
            if isinstance(event, IkeSaDeleted):
                for key in [k for k in self._pulls if k[0] == event.sa.cookies]:
                    self._forget(key)
                out.events.append(event)
            elif isinstance(event, NotifyReceived) and event.sa is not None and event.notify_type < _ERROR_NOTIFY_LIMIT:
                self._member_notify(out, event)
            else:
                out.events.append(event)

    def _member_notify(self, out: _Collector, event: NotifyReceived) -> None:
        """An authenticated error notify: the member rejects the policy of each PULL awaiting its message 3."""
        assert event.sa is not None
        waiting = [
            (key, pull)
            for key, pull in self._pulls.items()
            if key[0] == event.sa.cookies and not pull.finished and pull.group_id is not None
        ]
        if not waiting:
            out.events.append(event)
            return
        text = "".join(c for c in event.data.decode("utf-8", "replace") if c.isprintable()).strip()[:_REASON_LIMIT]
        name = name_of(NotifyType, event.notify_type)
        for key, pull in waiting:
            assert pull.group_id is not None
            group = self.groups.get(pull.group_id)
            if group is not None:
                group.stats["policy rejected by member"] += 1
            self.stats["policies rejected by members"] += 1
            reason = f"member {event.peer[0]} rejected the policy of group {pull.group_id}: {name}"
            reason = f"{reason} ({text})" if text else reason
            out.events.append(PolicyRejected(event.peer, pull.group_id, event.notify_type, reason))
            self._forget(key)

    # -- GROUPKEY-PULL ------------------------------------------------------------------------

    def _pull(self, out: _Collector, header: Header, datagram: bytes, addr: Address, now: float) -> None:
        cookies = header.icookie + header.rcookie
        sa = self.phase1.sa(cookies)
        if sa is None:
            self.stats["pulls without an IKE SA"] += 1
            return
        if addr != sa.peer:
            self.stats["pulls from a stray source"] += 1
            return
        key = (cookies, header.message_id)
        pull = self._pulls.get(key)
        if pull is None:
            if not self._buckets.take(addr[0], now):
                self.stats["pulls rate limited"] += 1
                if self._buckets.first_refusal(addr[0]):
                    out.events.append(PullRateLimited(addr[0]))
                return
            pull = PullResponder(sa, header.message_id, self._directory, rng=self._rng)
            self._pulls[key] = pull
        try:
            result = pull.receive(datagram, now)
        except StoreError:
            # Its IV has moved past this datagram: the member's retransmission must find a fresh exchange.
            self._forget(key)
            raise
        if pull.group_id is None and not pull.finished and not result.datagrams:
            # Nothing authentic arrived: keep no state for it.
            self._forget(key)
        self._pull_result(out, key, pull, result, now)

    def _pull_result(
        self, out: _Collector, key: tuple[bytes, int], pull: PullResponder, result: PullOutput, now: float
    ) -> None:
        replies = [Datagram(data, pull.peer.address) for data in result.datagrams]
        for event in result.events:
            assert isinstance(event, MemberRegistered | RegistrationRefused)  # a responder's only events
            if isinstance(event, MemberRegistered):
                try:
                    self.store.register_member(event.group_id, event.peer.address[0], now)
                except (StoreError, OSError) as err:
                    self._forget(key)
                    self.stats["registrations not stored"] += 1
                    reason = f"member {event.peer.address[0]} of group {event.group_id} not recorded: {err}"
                    out.events.append(RegistrationNotStored(event.peer, event.group_id, reason))
                    return
                self.stats["registrations"] += 1
                if (group := self.groups.get(event.group_id)) is not None:
                    group.stats["registrations"] += 1
            elif isinstance(event, RegistrationRefused):
                self._count_refusal(event)
            out.events.append(event)
        out.datagrams += replies

    def _count_refusal(self, event: RegistrationRefused) -> None:
        kind = name_of(NotifyType, event.notify_type)
        self.stats[f"refusals: {kind}"] += 1
        group = self.groups.get(event.group_id) if event.group_id is not None else None
        if group is not None:
            group.stats[f"refusals: {kind}"] += 1

    def _forget(self, key: tuple[bytes, int]) -> None:
        pull = self._pulls.pop(key, None)
        if pull is not None:
            self._finished_pull_stats.update(pull.stats)

    def _output(self, out: _Collector) -> ServerOutput:
        return ServerOutput(tuple(out.datagrams), self.timer, tuple(out.events))

