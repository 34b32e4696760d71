"""The key server core (GCKS, RFC 6407 §3.4), sans-IO: Phase 1, GROUPKEY-PULL and admission to groups.

One ``KeyServer`` answers every member on one socket.  Datagrams are
dispatched by their ISAKMP header: a GROUPKEY-PULL (exchange 32) under an
established IKE SA goes to the ``PullResponder`` of that SA and Message
ID, created on its first message if the source is within its PULL rate;
everything else (Main Mode, informationals, DPD, deletes) belongs to the
``Phase1Responder``.

Admission follows the configuration: a member may join a group when one
of the group's gateways admits its address -- listed there, or not listed
anywhere when the gateway holds the group-wide key.  Group state changes
only once a member's message 3 validates (RFC 6407 §3.4): the member is
written to the store before message 4 leaves this object, so a crash can
lose a registration the member never saw complete, never one it did.

All times are seconds since the epoch: keys and members live in the
store across restarts, so the driver passes the wall clock.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
from .store import KeyStore, StoreError

Rng = Callable[[int], bytes]

_ERROR_NOTIFY_LIMIT = 16384  # RFC 2408 §3.14.1: notify types below are errors
_REASON_LIMIT = 200  # characters of a member's notify text we repeat


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
    """One group as the key server serves it: its keys and policy, and who may join.

    ``unicast`` sends pushes to each member's Phase 1 address and port, so
    the SA KEK a member receives names that as its destination instead of
    ``keys.kek.destination`` (the multicast rekey address).
    """

    keys: GroupConfig
    gateways: tuple[str, ...]
    unicast: bool = True

    def __post_init__(self) -> None:
        where = f"group {self.group_id}"
        for tek in self.keys.teks:
            if tek.suite.counter_mode:
                raise ValueError(
                    f"{where}: SA {tek.name} uses {tek.suite.name}, a counter mode; its sender IDs need a "
                    "persistent allocator in the key store, which this key server does not have yet"
                )
        if not self.gateways:
            raise ValueError(f"{where} names no IKE gateway, so no member could join it")

    @property
    def group_id(self) -> int:
        return self.keys.group_id


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


ServerEvent = Event | MemberRegistered | RegistrationRefused | PolicyRejected | PullRateLimited | RegistrationNotStored


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


@dataclass
class Group:
    """A served group: its settings, its keys and what happened to it."""

    settings: GroupSettings
    keys: GroupKeys
    stats: collections.Counter[str] = field(default_factory=collections.Counter)

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
        policy = group.policy(peer.address, server.now)
        seq = 0 if policy.kek is None else server.store.last_push_seq(policy.kek.spi)
        return Offer(policy, seq)

    def allocate_sender_ids(self, group_id: int, peer: Peer, count: int) -> SenderIds | Refusal:
        # GroupSettings refuses counter-mode SAs, so no offer ever needs sender IDs.
        return Refusal(NotifyType.ATTRIBUTES_NOT_SUPPORTED, f"group {group_id} has no sender IDs to give")


# -- the core -------------------------------------------------------------------------------


class KeyServer:
    """The key server of ``settings.groups`` over ``store``.

    Construction loads or generates every group's signing key, KEK and
    TEKs (before anything is served) and raises ``ValueError`` (a
    ``PolicyError`` among them) or ``StoreError`` when a group cannot be
    served.
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
        self.groups = self._groups(settings, now, {})
        self.phase1 = Phase1Responder(
            settings.psks(),
            settings.suites,
            Identification.of(ip_address(settings.address)),
            limits=settings.phase1_limits,
            rng=rng,
        )
        self._buckets = TokenBuckets(settings.pull_limits.rate, settings.pull_limits.burst)

    def _groups(self, settings: ServerSettings, now: float, old: dict[int, Group]) -> dict[int, Group]:
        """A ``Group`` per configured group, keeping the counters of groups served before.

        Every policy is built once here, so keys exist (loaded or generated)
        and a group whose policy members would refuse fails now.
        """
        groups = {}
        for config in settings.groups:
            previous = old.get(config.group_id)
            group = Group(config, GroupKeys(self.store, config.keys, self._rng))
            if previous is not None:
                group.stats = previous.stats
            group.policy(None, now)
            groups[config.group_id] = group
        return groups

    def reconfigure(self, settings: ServerSettings, now: float) -> None:
        """Serve ``settings`` from now on (keys, suites, groups); IKE SAs and PULLs under way stay.

        Keys of a changed SA keep their algorithms until they are replaced.
        """
        groups = self._groups(settings, now, self.groups)
        self.settings, self.groups = settings, groups
        self.phase1.configure(settings.psks(), settings.suites)
        self._buckets = TokenBuckets(settings.pull_limits.rate, settings.pull_limits.burst)

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
        return min(times, default=None)

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
        if header.exchange == ExchangeType.GROUPKEY_PULL and header.message_id != 0:
            out = _Collector()
            self._pull(out, header, datagram, addr, now)
            return self._output(out)
        return self._phase1(self.phase1.receive(datagram, addr, now))

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
        return self._phase1(self.phase1.handle_timer(now))

    # -- Phase 1 ----------------------------------------------------------------------------

    def _phase1(self, result: Output) -> ServerOutput:
        out = _Collector(list(result.datagrams))
        for event in result.events:
            if isinstance(event, IkeSaDeleted):
                for key in [k for k in self._pulls if k[0] == event.sa.cookies]:
                    self._forget(key)
                out.events.append(event)
            elif isinstance(event, NotifyReceived) and event.sa is not None and event.notify_type < _ERROR_NOTIFY_LIMIT:
                self._member_notify(out, event)
            else:
                out.events.append(event)
        return self._output(out)

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
            out.events.append(PolicyRejected(event.peer, pull.group_id, event.notify_type, f"{reason} ({text})" if text else reason))
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
        result = pull.receive(datagram, now)
        if pull.group_id is None and not pull.finished and not result.datagrams:
            # Nothing authentic arrived: keep no state for it.
            self._forget(key)
        self._pull_result(out, key, pull, result, now)

    def _pull_result(
        self, out: _Collector, key: tuple[bytes, int], pull: PullResponder, result: PullOutput, now: float
    ) -> None:
        replies = [Datagram(data, pull.peer.address) for data in result.datagrams]
        for event in result.events:
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

