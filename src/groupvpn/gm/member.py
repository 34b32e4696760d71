"""The group member core (sans-IO): each group VPN's registration with its key servers.

One ``Member`` serves the VPNs whose gateways share one local address
(one UDP socket).  A VPN registers while the interface its service set is
applied to is up -- never because traffic asks for it (seed, "Registering
a Group Member") -- and its SAs are cleared when that interface goes
down.  Registration is Phase 1 (Main Mode) to the gateway's first key
server, then GROUPKEY-PULL under that IKE SA; the IKE SA stays up for
later PULLs until its lifetime ends.  PULLs under one IKE SA run one at a
time: an error notify names no PULL, so with two under way a refusal of
one would end both.

A failed attempt (no answer, authentication, a refusal, a rejected
policy) is retried on the same server every ``retry_interval`` seconds;
after ``retries`` retries the next server of the list is tried, around
the list until one answers (seed, "Connecting with Multiple Cooperative
GC/KSs").  A failed PULL tears its IKE SA down with an informational
delete (RFC 6407 §3.3), so the next attempt starts from a fresh Phase 1.
A key server that restarted has forgotten the IKE SAs it had and drops
what arrives under them without a word; so when PULL message 1 under an
IKE SA an earlier PULL used goes unanswered, a DPD R-U-THERE asks whether
the SA still exists, and if it goes unanswered too the registration
starts over at once on a fresh Phase 1 instead of failing.

Between registrations each VPN's ``gm.rekey.GroupRekey`` keeps its group
current: a GROUPKEY-PUSH goes to the one holding its KEK (the header's
cookie pair), and when it says so -- a pull rekey point, or a push that
took the keys away -- the VPN registers again as above.  A refusal after
a push took the keys completes a removal from the group.

Installed SAs go to the shared ``SaDatabase``; everything else an
operator or a log needs leaves as typed events.  Times are the driver's
monotonic clock; nothing here reads a clock, a socket or a random source
of its own.
"""

from __future__ import annotations

import collections
import enum
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from types import MappingProxyType

from ..gdoi.events import FailureKind, PullOutput, RegistrationComplete, RegistrationFailed
from ..gdoi.pull import PullInitiator, PullState
from ..ike.events import (
    Datagram,
    DeleteReason,
    FailureReason,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    NotifyReceived,
    Output,
)
from ..ike.initiator import InitiatorState, Phase1Initiator
from ..ike.proposals import Suite
from ..ike.psk import PreSharedKey
from ..ike.retransmit import RetransmitPolicy
from ..ike.sa import Address, IkeSa
from ..wire.errors import WireError
from ..wire.isakmp import Identification
from ..wire.message import Header
from ..wire.numbers import GDOI_PORT, ExchangeType
from .rekey import GroupRekey, RekeyEvent, RekeyOutput
from .sadb import Expired, SaDatabase

Rng = Callable[[int], bytes]

MAX_SERVERS = 4  # seed: "a maximum of four servers in the server list"


# -- settings ----------------------------------------------------------------------


@dataclass(frozen=True)
class GatewaySettings:
    """An IKE gateway: the key servers to try in order, our address, and how Phase 1 is done."""

    name: str
    servers: tuple[str, ...]
    local_address: str
    psk: PreSharedKey
    suites: tuple[Suite, ...]
    routing_instance: str | None = None
    server_port: int = GDOI_PORT

    def __post_init__(self) -> None:
        servers = tuple(str(ip_address(s)) for s in self.servers)
        if not 1 <= len(servers) <= MAX_SERVERS:
            raise ValueError(f"gateway {self.name}: {len(servers)} server addresses; 1 to {MAX_SERVERS} are allowed")
        if len(set(servers)) != len(servers):
            raise ValueError(f"gateway {self.name}: a server address is listed twice")
        if not self.suites:
            raise ValueError(f"gateway {self.name}: no IKE proposal")
        object.__setattr__(self, "servers", servers)
        object.__setattr__(self, "local_address", str(ip_address(self.local_address)))

    def phase1(self) -> tuple[PreSharedKey, tuple[Suite, ...]]:
        """What a Phase 1 with one of the servers depends on."""
        return self.psk, self.suites


@dataclass(frozen=True)
class VpnSettings:
    """A group VPN: the group, its gateway and the interfaces its service set is applied to.

    It registers while one of ``interfaces`` is up; with none it never
    does.  ``traffic`` is how the data plane treats the VPN's packets
    (df-bit, match direction, fail-open rules): opaque here, but a change
    re-registers the VPN like any other (seed: "Most Group VPNv2
    configuration changes result in deleting both existing SAs and
    re-registration").
    """

    name: str
    group_id: int
    gateway: GatewaySettings
    interfaces: frozenset[str]
    traffic: Hashable = None

    def __post_init__(self) -> None:
        if not 0 <= self.group_id <= 0xFFFFFFFF:
            raise ValueError(f"vpn {self.name}: group ID {self.group_id} does not fit 4 octets")


@dataclass(frozen=True)
class Timing:
    """Failover (seed: three retries, ten seconds apart) and retransmission of each exchange.

    ``probe`` paces the R-U-THEREs that check a silent key server still
    knows a reused IKE SA: three, a second apart, so a restarted server
    costs about 4 s rather than the PULL's 23 s and a retry interval.
    """

    retries: int = 3
    retry_interval: float = 10.0
    ike: RetransmitPolicy = RetransmitPolicy()
    pull: RetransmitPolicy = RetransmitPolicy()
    probe: RetransmitPolicy = RetransmitPolicy(initial=1.0, factor=1.0, maximum=1.0, attempts=3)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.retry_interval <= 0:
            raise ValueError(f"unusable failover timing {self}")


def check_vpns(vpns: Sequence[VpnSettings]) -> None:
    """Settings one member (one socket) can serve together; ``ValueError`` says why not."""
    names = [v.name for v in vpns]
    if len(set(names)) != len(names):
        raise ValueError(f"vpn names must be unique: {names}")
    groups = [v.group_id for v in vpns]
    if len(set(groups)) != len(groups):
        raise ValueError(f"each group may be joined by one vpn only: {groups}")
    if len({v.gateway.local_address for v in vpns}) > 1:
        raise ValueError("one member core serves one local address")
    phase1: dict[tuple[str, int], tuple[str, tuple[PreSharedKey, tuple[Suite, ...]]]] = {}
    for vpn in vpns:
        gateway = vpn.gateway
        for server in gateway.servers:
            name, settings = phase1.setdefault((server, gateway.server_port), (gateway.name, gateway.phase1()))
            if settings != gateway.phase1():
                raise ValueError(
                    f"gateways {name} and {gateway.name} reach key server {server} from the same address "
                    "with different IKE policies; one IKE SA serves both, so they must agree"
                )


# -- events -------------------------------------------------------------------------


class Failure(enum.Enum):
    """Why one registration attempt failed."""

    NO_RESPONSE = "no response"
    AUTHENTICATION_FAILED = "authentication failed"
    NO_PROPOSAL_CHOSEN = "no proposal chosen"
    REFUSED = "refused by the key server"
    POLICY_REJECTED = "policy rejected"
    PROTOCOL_ERROR = "protocol error"
    IKE_SA_DELETED = "IKE SA deleted"


_IKE_FAILURES = {
    FailureReason.AUTHENTICATION_FAILED: Failure.AUTHENTICATION_FAILED,
    FailureReason.NO_PROPOSAL_CHOSEN: Failure.NO_PROPOSAL_CHOSEN,
    FailureReason.NO_RESPONSE: Failure.NO_RESPONSE,
}
_PULL_FAILURES = {
    FailureKind.NO_RESPONSE: Failure.NO_RESPONSE,
    FailureKind.REFUSED: Failure.REFUSED,
    FailureKind.POLICY_REJECTED: Failure.POLICY_REJECTED,
    FailureKind.MALFORMED: Failure.PROTOCOL_ERROR,
}


def _spi(spi: bytes) -> str:
    return f"0x{spi.hex()}"


@dataclass(frozen=True, slots=True)
class Registered:
    """``vpn`` joined ``group_id`` through ``server``; its SAs are installed."""

    vpn: str
    group_id: int
    server: str
    kek_spi: bytes | None
    tek_spis: tuple[bytes, ...]
    seq: int | None

    @property
    def message(self) -> str:
        kek = "no KEK" if self.kek_spi is None else f"KEK {self.kek_spi.hex()}"
        teks = ", ".join(_spi(s) for s in self.tek_spis) or "none"
        return f"vpn {self.vpn} registered to group {self.group_id} with key server {self.server}: {kek}, TEKs {teks}"


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """One registration attempt of ``vpn`` with ``server`` failed; the next one is at ``retry_in`` seconds."""

    vpn: str
    group_id: int
    server: str
    failure: Failure
    reason: str
    retry_in: float

    @property
    def message(self) -> str:
        return (
            f"vpn {self.vpn} group {self.group_id}: registration with key server {self.server} failed "
            f"({self.failure.value}): {self.reason}; next attempt in {self.retry_in:g} s"
        )


@dataclass(frozen=True, slots=True)
class ServerSwitched:
    """``previous`` failed ``attempts`` times in a row; ``vpn`` moves on to ``server`` (the next in its list)."""

    vpn: str
    group_id: int
    previous: str
    server: str
    attempts: int

    @property
    def message(self) -> str:
        return (
            f"vpn {self.vpn} group {self.group_id}: key server {self.previous} failed {self.attempts} attempts "
            f"in a row; trying key server {self.server}"
        )


@dataclass(frozen=True, slots=True)
class SasCleared:
    """``vpn``'s SAs were removed and it stopped or restarted registration, for ``reason``."""

    vpn: str
    group_id: int
    reason: str

    @property
    def message(self) -> str:
        return f"vpn {self.vpn} group {self.group_id}: SAs cleared ({self.reason})"


@dataclass(frozen=True, slots=True)
class IkeSaUp:
    sa: IkeSa

    @property
    def message(self) -> str:
        return f"IKE SA with key server {self.sa.peer[0]} established ({self.sa.suite.name})"


@dataclass(frozen=True, slots=True)
class IkeSaDown:
    sa: IkeSa
    reason: DeleteReason

    @property
    def message(self) -> str:
        return f"IKE SA with key server {self.sa.peer[0]} ended: {self.reason.value}"


@dataclass(frozen=True, slots=True)
class SaExpired:
    """A TEK or KEK reached the end of its lifetime and was removed."""

    expired: Expired

    @property
    def message(self) -> str:
        e = self.expired
        return f"group {e.group_id}: {e.kind} {_spi(e.spi)} expired"


MemberEvent = Registered | AttemptFailed | ServerSwitched | SasCleared | IkeSaUp | IkeSaDown | SaExpired | RekeyEvent


@dataclass(frozen=True, slots=True)
class MemberOutput:
    datagrams: tuple[Datagram, ...] = ()
    timer: float | None = None
    events: tuple[MemberEvent, ...] = ()


@dataclass
class _Collector:
    datagrams: list[Datagram] = field(default_factory=list)
    events: list[MemberEvent] = field(default_factory=list)


# -- state ----------------------------------------------------------------------------


class VpnState(enum.Enum):
    DOWN = "interface down"
    CONNECTING = "connecting"  # Phase 1 under way, or waiting for the IKE SA to be free
    REGISTERING = "registering"  # GROUPKEY-PULL under way
    REGISTERED = "registered"
    WAITING = "waiting to retry"


@dataclass
class Registration:
    """One VPN's registration state; views read it, only ``Member`` changes it."""

    settings: VpnSettings
    state: VpnState = VpnState.DOWN
    server_index: int = 0
    failures: int = 0  # consecutive failed attempts with the current server
    retry_at: float | None = None
    registered_at: float | None = None
    last_failure: AttemptFailed | None = None

    @property
    def server(self) -> Address:
        gateway = self.settings.gateway
        return gateway.servers[self.server_index], gateway.server_port


@dataclass
class _Pull:
    vpn: str
    message_id: int
    initiator: PullInitiator
    probed: bool = False  # its silence made us ask whether the key server still knows the IKE SA


@dataclass
class Connection:
    """Phase 1 with one key server and the registrations waiting for or running over its IKE SA."""

    phase1: Phase1Initiator
    settings: tuple[PreSharedKey, tuple[Suite, ...]]  # what the Phase 1 was started with
    queue: collections.deque[str] = field(default_factory=collections.deque)
    pull: _Pull | None = None
    used: bool = False  # a PULL completed under the IKE SA, so the key server may since have forgotten it

    @property
    def server(self) -> Address:
        return self.phase1.peer

    @property
    def timer(self) -> float | None:
        times = [self.phase1.timer, self.pull.initiator.next_deadline if self.pull else None]
        return min((t for t in times if t is not None), default=None)


# -- the core -----------------------------------------------------------------------------


class Member:
    """The registrations of ``vpns`` (one local address), installing into ``sadb``."""

    def __init__(
        self,
        vpns: Sequence[VpnSettings],
        sadb: SaDatabase,
        *,
        timing: Timing = Timing(),
        rng: Rng = os.urandom,
    ) -> None:
        check_vpns(vpns)
        self.sadb = sadb
        self.timing = timing
        self.stats: collections.Counter[str] = collections.Counter()
        self._rng = rng
        self._vpns: dict[str, Registration] = {}
        self._rekeys: dict[str, GroupRekey] = {}
        for settings in vpns:
            self._add(settings)
        self._links: dict[str, bool] = {}
        self._connections: dict[Address, Connection] = {}

    # -- inspection ---------------------------------------------------------------------

    @property
    def registrations(self) -> Mapping[str, Registration]:
        return MappingProxyType(self._vpns)

    @property
    def connections(self) -> Mapping[Address, Connection]:
        return MappingProxyType(self._connections)

    @property
    def multicast_destinations(self) -> frozenset[tuple[IPv4Address | IPv6Address, int]]:
        """The multicast (address, port) pairs the held KEKs name as push destinations: the groups to join."""
        keks = (g.kek for i in self._group_ids if (g := self.sadb.groups.get(i)) is not None and g.kek is not None)
        ends = (k.policy.destination for k in keks)
        return frozenset(
            (e.address, e.port) for e in ends if isinstance(e.address, IPv4Address | IPv6Address) and e.address.is_multicast
        )

    @property
    def _group_ids(self) -> frozenset[int]:
        return frozenset(r.settings.group_id for r in self._vpns.values())

    @property
    def timer(self) -> float | None:
        times = [c.timer for c in self._connections.values()]
        times += [r.retry_at for r in self._vpns.values()]
        times += [r.next_deadline for r in self._rekeys.values()]
        times.append(self.sadb.next_expiry(self._group_ids))
        return min((t for t in times if t is not None), default=None)

    # -- sans-IO entry points ------------------------------------------------------------

    def receive(self, datagram: bytes, addr: Address, now: float) -> MemberOutput:
        out = _Collector()
        try:
            header = Header.decode(datagram)
        except WireError:
            self.stats["malformed datagrams"] += 1
            return self._output(out)
        connection = self._connections.get(addr)
        if header.exchange == ExchangeType.GROUPKEY_PUSH:
            self._push(out, datagram, header, addr, now)
        elif connection is None:
            self.stats["datagrams from unknown peers"] += 1
        elif header.exchange == ExchangeType.GROUPKEY_PULL and header.message_id != 0:
            pull = connection.pull
            if pull is not None and pull.message_id == header.message_id:
                self._pull_result(out, connection, pull.initiator.receive(datagram, now), now)
            else:
                self.stats["PULL replies without a PULL"] += 1
        else:
            self._phase1_result(out, connection, connection.phase1.receive(datagram, addr, now), now)
        return self._output(out)

    def handle_timer(self, now: float) -> MemberOutput:
        out = _Collector()
        for connection in list(self._connections.values()):
            if self._connections.get(connection.server) is not connection:
                continue  # replaced while handling an earlier one
            self._phase1_result(out, connection, connection.phase1.handle_timer(now), now)
            pull = connection.pull
            if pull is not None:
                result = pull.initiator.handle_timer(now)
                self._pull_result(out, connection, result, now)
                if result.datagrams and connection.pull is pull:
                    self._resent(out, connection, pull, now)
        for registration in self._vpns.values():
            due = registration.retry_at is not None and now >= registration.retry_at
            if registration.state is VpnState.WAITING and due:
                self._attempt(out, registration, now)
        for name, rekey in self._rekeys.items():
            self._rekeyed(out, rekey.handle_timer(now))
            registration = self._vpns[name]
            if registration.state is VpnState.REGISTERED and rekey.pull_due(now):
                out.events.append(rekey.pull_started(now))
                self._attempt(out, registration, now)
        out.events += [SaExpired(e) for e in self.sadb.expire(now, self._group_ids)]
        return self._output(out)

    def link_changed(self, interface: str, up: bool, now: float) -> MemberOutput:
        """The interface ``interface`` went up or down (or was seen for the first time)."""
        out = _Collector()
        if self._links.get(interface) != up:
            self._links[interface] = up
            for registration in self._vpns.values():
                if interface not in registration.settings.interfaces:
                    continue
                if self._up(registration.settings) and registration.state is VpnState.DOWN:
                    self._start(out, registration, now)
                elif not self._up(registration.settings) and registration.state is not VpnState.DOWN:
                    self._stop(out, registration, f"interface {interface} down", now)
        return self._output(out)

    def _up(self, settings: VpnSettings) -> bool:
        return any(self._links.get(name, False) for name in settings.interfaces)

    def clear(self, now: float, group_id: int | None = None) -> MemberOutput:
        """Delete the SAs of every registered or registering VPN (or of ``group_id``'s) and register again."""
        out = _Collector()
        for registration in self._vpns.values():
            if registration.state is VpnState.DOWN or group_id not in (None, registration.settings.group_id):
                continue
            self._stop(out, registration, "cleared by the operator; registering again", now)
            self._start(out, registration, now)
        return self._output(out)

    def reconfigure(self, vpns: Sequence[VpnSettings], now: float) -> MemberOutput:
        """Serve ``vpns`` from now on.

        An unchanged VPN keeps its SAs.  A changed one loses its SAs and
        registers again over a fresh Phase 1 (seed: configuration changes
        result in "deleting both existing SAs and re-registration. This
        triggers both phase 1 and SA download"); a removed one loses its SAs.
        """
        check_vpns(vpns)
        out = _Collector()
        wanted = {v.name: v for v in vpns}
        stale: set[Address] = set()
        for name, registration in list(self._vpns.items()):
            settings = registration.settings
            if wanted.get(name) == settings:
                continue
            gateway = settings.gateway
            stale.update((server, gateway.server_port) for server in gateway.servers)
            reason = "configuration changed" if name in wanted else "removed from the configuration"
            self._stop(out, registration, reason, now)
            del self._vpns[name], self._rekeys[name]
        servers = {(s, v.gateway.server_port): v.gateway.phase1() for v in vpns for s in v.gateway.servers}
        for address, connection in list(self._connections.items()):
            config = servers.get(address)
            if address in stale or config != connection.settings:
                self._close(out, connection, now)
        for settings in vpns:
            if settings.name not in self._vpns:
                registration = self._add(settings)
                if self._up(settings):
                    self._start(out, registration, now)
        return self._output(out)

    def close(self, now: float) -> MemberOutput:
        """Stop: delete every IKE SA (telling the key servers) and clear every VPN's SAs."""
        out = _Collector()
        for registration in self._vpns.values():
            if registration.state is not VpnState.DOWN:
                self._stop(out, registration, "member stopping", now)
        for connection in list(self._connections.values()):
            self._close(out, connection, now)
        return self._output(out)

    # -- registrations --------------------------------------------------------------------

    def _add(self, settings: VpnSettings) -> Registration:
        registration = self._vpns[settings.name] = Registration(settings)
        local = ip_address(settings.gateway.local_address)
        self._rekeys[settings.name] = GroupRekey(settings.group_id, self.sadb, local, rng=self._rng)
        return registration

    def _start(self, out: _Collector, registration: Registration, now: float) -> None:
        registration.server_index = registration.failures = 0
        self._attempt(out, registration, now)

    def _attempt(self, out: _Collector, registration: Registration, now: float) -> None:
        registration.state = VpnState.CONNECTING
        registration.retry_at = None
        server = registration.server
        connection = self._connections.get(server)
        if connection is None:
            connection = self._connect(out, registration.settings, now)
        connection.queue.append(registration.settings.name)
        self._next_pull(out, connection, now)

    def _connect(self, out: _Collector, settings: VpnSettings, now: float) -> Connection:
        gateway = settings.gateway
        registration = self._vpns[settings.name]
        phase1 = Phase1Initiator(
            registration.server,
            gateway.psk,
            gateway.suites,
            Identification.of(ip_address(gateway.local_address)),
            retransmit=self.timing.ike,
            dpd_retransmit=self.timing.probe,
            rng=self._rng,
        )
        connection = Connection(phase1, gateway.phase1())
        self._connections[phase1.peer] = connection
        out.datagrams += phase1.start(now).datagrams
        return connection

    def _stop(self, out: _Collector, registration: Registration, reason: str, now: float) -> None:
        """End ``registration``'s attempt or registration and delete its SAs; state DOWN."""
        name = registration.settings.name
        for connection in list(self._connections.values()):
            if name in connection.queue:
                connection.queue.remove(name)
            if connection.pull is not None and connection.pull.vpn == name:
                connection.pull = None  # the key server forgets an unfinished PULL by itself
                self._next_pull(out, connection, now)
        registration.state = VpnState.DOWN
        registration.retry_at = registration.registered_at = None
        if self._rekeys[name].clear():
            out.events.append(SasCleared(name, registration.settings.group_id, reason))

    def _failed(self, out: _Collector, name: str, server: Address, failure: Failure, reason: str, now: float) -> None:
        registration = self._vpns[name]
        group_id = registration.settings.group_id
        interval = self.timing.retry_interval
        event = AttemptFailed(name, group_id, server[0], failure, reason, interval)
        registration.last_failure = event
        registration.failures += 1
        registration.state = VpnState.WAITING
        registration.retry_at = now + interval
        out.events.append(event)
        if failure is Failure.REFUSED and (removed := self._rekeys[name].refused(reason)) is not None:
            out.events.append(removed)
        servers = registration.settings.gateway.servers
        if registration.failures > self.timing.retries:
            attempts = registration.failures
            registration.server_index = (registration.server_index + 1) % len(servers)
            registration.failures = 0
            out.events.append(ServerSwitched(name, group_id, server[0], registration.server[0], attempts))

    def _next_pull(self, out: _Collector, connection: Connection, now: float) -> None:
        """Start the first waiting registration once the IKE SA is up and free."""
        session = connection.phase1.session
        if connection.pull is not None or not connection.queue or session is None or session.closed:
            return
        if session.sa.expired(now):
            return  # its timer deletes it at once; the queue then moves to a fresh Phase 1
        name = connection.queue.popleft()
        registration = self._vpns[name]
        message_id = session.message_id()
        initiator = PullInitiator(
            session.sa,
            registration.settings.group_id,
            message_id,
            last_push=self._rekeys[name].last_push,
            retransmit=self.timing.pull,
            rng=self._rng,
        )
        connection.pull = _Pull(name, message_id, initiator)
        registration.state = VpnState.REGISTERING
        out.datagrams.append(Datagram(initiator.start(now), connection.server))

    # -- results of the protocol cores -------------------------------------------------------

    def _phase1_result(self, out: _Collector, connection: Connection, result: Output, now: float) -> None:
        out.datagrams += result.datagrams
        for event in result.events:
            if isinstance(event, IkeSaEstablished):
                out.events.append(IkeSaUp(event.sa))
                self._next_pull(out, connection, now)
            elif isinstance(event, IkeSaFailed):
                self._forget(connection)
                failure = _IKE_FAILURES.get(event.reason, Failure.PROTOCOL_ERROR)
                for name in connection.queue:
                    self._failed(out, name, connection.server, failure, f"Phase 1: {event.message}", now)
            elif isinstance(event, IkeSaDeleted):
                out.events.append(IkeSaDown(event.sa, event.reason))
                self._forget(connection)
                pull, connection.pull = connection.pull, None
                if pull is not None and pull.probed and event.reason is DeleteReason.DEAD_PEER:
                    self.stats["IKE SAs the key server forgot"] += 1
                    connection.queue.appendleft(pull.vpn)  # never heard: starts over like the waiting ones
                elif pull is not None:
                    reason = f"the IKE SA ended ({event.reason.value}) during GROUPKEY-PULL"
                    self._failed(out, pull.vpn, connection.server, Failure.IKE_SA_DELETED, reason, now)
                for name in connection.queue:  # never asked: try again over a new IKE SA
                    self._attempt(out, self._vpns[name], now)
            elif isinstance(event, NotifyReceived) and event.sa is not None and connection.pull is not None:
                refused = connection.pull.initiator.peer_notify(event.notify_type, event.data, now)
                self._pull_result(out, connection, refused, now)
            else:
                self.stats["ignored IKE events"] += 1

    def _forget(self, connection: Connection) -> None:
        if self._connections.get(connection.server) is connection:
            del self._connections[connection.server]

    def _pull_result(self, out: _Collector, connection: Connection, result: PullOutput, now: float) -> None:
        pull = connection.pull
        assert pull is not None
        out.datagrams += [Datagram(d, connection.server) for d in result.datagrams]
        for event in result.events:
            connection.pull = None
            if isinstance(event, RegistrationComplete):
                connection.used = True
                self._registered(out, pull.vpn, connection.server, event, now)
                self._next_pull(out, connection, now)
            elif isinstance(event, RegistrationFailed):
                self._failed(out, pull.vpn, connection.server, _PULL_FAILURES[event.kind], event.reason, now)
                self._close(out, connection, now)

    def _resent(self, out: _Collector, connection: Connection, pull: _Pull, now: float) -> None:
        """``pull`` retransmitted: on the first resend of message 1 under a used IKE SA, probe the key server.

        A restarted key server drops the PULL and the probe alike, and the
        probe's silence ends the SA within ``timing.probe``; one that is up
        answers and the PULL goes on.  A fresh SA is known to the server, so
        its silence is left to the PULL's own retransmissions.
        """
        if connection.used and not pull.probed and pull.initiator.state is PullState.SENT_1:
            pull.probed = True
            self._phase1_result(out, connection, connection.phase1.probe(now), now)

    def _registered(self, out: _Collector, name: str, server: Address, event: RegistrationComplete, now: float) -> None:
        registration = self._vpns[name]
        policy = event.policy
        self._rekeyed(out, self._rekeys[name].registered(policy, event.seq, now))
        registration.state = VpnState.REGISTERED
        registration.failures = 0
        registration.registered_at = now
        registration.last_failure = None
        spis = tuple(dict.fromkeys(t.spi for t in policy.sa.permits))
        kek = policy.kek.spi if policy.kek is not None else None
        out.events.append(Registered(name, policy.group_id, server[0], kek, spis, event.seq))

    # -- rekeying ------------------------------------------------------------------------------

    def _push(self, out: _Collector, datagram: bytes, header: Header, addr: Address, now: float) -> None:
        """A GROUPKEY-PUSH goes to the group holding its KEK, named by the header's cookie pair."""
        spi = header.icookie + header.rcookie
        rekey = next((r for r in self._rekeys.values() if r.holds(spi)), None)
        if rekey is None:
            self.stats["GROUPKEY-PUSH under unknown KEKs"] += 1
        else:
            self._rekeyed(out, rekey.receive_push(datagram, addr, now))

    def _rekeyed(self, out: _Collector, result: RekeyOutput) -> None:
        out.datagrams += result.datagrams
        out.events += result.events

    def _close(self, out: _Collector, connection: Connection, now: float) -> None:
        """Delete the IKE SA (or drop Phase 1 in progress); registrations waiting or under way start over."""
        self._forget(connection)
        if connection.pull is not None:
            connection.queue.appendleft(connection.pull.vpn)
            connection.pull = None
        if connection.phase1.state is InitiatorState.ESTABLISHED:
            self._phase1_result(out, connection, connection.phase1.delete(now), now)
        else:
            for name in connection.queue:
                self._attempt(out, self._vpns[name], now)

    def _output(self, out: _Collector) -> MemberOutput:
        return MemberOutput(tuple(out.datagrams), self.timer, tuple(out.events))
