"""The key server's rekey engine for one group (GROUPKEY-PUSH, RFC 6407 §4; acks, RFC 8263), sans-IO.

The engine decides when keys change and who hears of it; ``GroupKeys``
makes and stores the keys, ``gdoi.push.build_push`` frames each message
and ``gdoi.ack.AckVerifier`` checks acknowledgements.  Like every core it
takes ``now`` and returns datagrams, events and its next deadline.

Order of a rekey, each step durable before the next:

1. ``GroupKeys.prepare_rekey`` stores the pending keys (a pending key left
   by a crash is reused, so a restarted server pushes the same key);
2. the SEQ is claimed in the store under the KEK the members hold, so a
   crash can skip a number but the next push always carries a higher one;
3. the push is built -- signed with the group's key, encrypted under that
   KEK -- and handed out as one datagram per member (same bytes);
4. the pushed keys become current, so a member registering after the push
   gets them from its PULL too.

A KEK rollover and a TEK rollover never share a push (RFC 6407 §7.4.1):
the new KEK goes first, under the old KEK, then the new TEKs in a second
push under the new KEK (its SEQ 1).  Forward access control in the RFC's
sense needs a KEK delivery the removed member cannot read (LKH); groupvpn
has no LKH, so after a removal both pushes go by unicast to the remaining
members only, never to the multicast address -- a removed member that can
capture other members' unicast traffic could still read them.

Retransmission (RFC 8263 §5-6): with acks requested, a push is sent again
every ``retransmission_period`` to the members that have not acknowledged
it, at most ``retransmissions`` times; one period after the last copy, and
never before 10 s, the members still silent are judged.  A member that has
acknowledged some push before is marked inactive (no more pushes until it
registers again); one that never has may not implement RFC 8263 and is
only reported, since §6 says not to consider a member gone before it has
acknowledged once.  With multicast delivery the copies go to the multicast
address while some member has not acknowledged.
Without acks every push is sent ``retransmissions + 1`` times.  Members
that register again during a push's retransmissions got the current keys
from their PULL and drop out of it.  Retransmission state is in memory: a
restart ends it (members that missed a push register again before their
keys expire).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address

from ..crypto.gdoi import AckKeyLength
from ..crypto.sig import signature_scheme
from ..gdoi.ack import AckRejected, AckVerifier
from ..gdoi.policy import AckRequest, GroupPolicy
from ..gdoi.push import PushPayloads, build_push
from ..ike.events import Datagram
from ..ike.sa import Address
from ..wire.isakmp import Delete
from ..wire.numbers import GDOI_PORT
from .keys import GroupConfig, GroupKeys, Key, KeySet
from .removal import DEFAULT_REMOVAL_DTD, RemovalMethod, delete_payloads, old_sas_with_dtd, removed_reason
from .store import MemberState, StoredKek, StoredTek

DEFAULT_RETRANSMISSION_PERIOD = 10.0  # seconds, the Junos retransmission-period default
DEFAULT_RETRANSMISSIONS = 2  # the Junos number-of-retransmission default
MIN_ACK_PATIENCE = 10.0  # RFC 8263 §6: SHOULD NOT declare an ack missing before 10 s
MAX_ACK_DELAY = 5.0  # RFC 8263 §6: a member MUST NOT delay its ack by more than 5 s
_LISTED = 8  # member addresses an event's text names before counting the rest


class Delivery(StrEnum):
    """Where pushes go: each member's address, the SA KEK's multicast destination, or both."""

    UNICAST = "unicast"
    MULTICAST = "multicast"
    BOTH = "both"


@dataclass(frozen=True)
class RekeyConfig:
    """How one group's pushes are delivered; fixed for the life of a ``RekeyEngine``.

    ``removal_dtd`` is the deactivation time delay of a removal by DTD, in
    seconds; it must be smaller than the group's own DTD.
    """

    retransmission_period: float = DEFAULT_RETRANSMISSION_PERIOD
    retransmissions: int = DEFAULT_RETRANSMISSIONS
    delivery: Delivery = Delivery.UNICAST
    removal_dtd: int = DEFAULT_REMOVAL_DTD
    ack_key_length: AckKeyLength = AckKeyLength.PRF_BLOCK

    def __post_init__(self) -> None:
        if self.retransmission_period <= 0 or self.retransmissions < 0:
            raise ValueError(
                f"retransmission period {self.retransmission_period} s and count {self.retransmissions}: "
                "the period must be positive and the count at least 0"
            )
        if not 0 <= self.removal_dtd <= 0xFFFF:
            raise ValueError(f"removal DTD of {self.removal_dtd} s does not fit the GAP's 16 bits")

    @property
    def ack_window(self) -> float:
        """From a push's first copy until the members that did not acknowledge it are judged.

        One period after the last copy, but never before RFC 8263 §6's 10 s.
        """
        return max((self.retransmissions + 1) * self.retransmission_period, MIN_ACK_PATIENCE)

    def check(self, group: GroupConfig) -> None:
        """Refuse settings that cannot work with ``group``'s configuration."""
        where = f"group {group.group_id}"
        destination = group.kek.destination.address
        multicast = isinstance(destination, IPv4Address | IPv6Address) and destination.is_multicast
        if self.delivery is not Delivery.UNICAST and not multicast:
            raise ValueError(
                f"{where}: {self.delivery} delivery needs a multicast address as the SA KEK destination, "
                f"not {destination}"
            )
        dtd = _group_dtd(group)
        if dtd and self.removal_dtd >= dtd:
            raise ValueError(
                f"{where}: the removal DTD ({self.removal_dtd} s) must be smaller than the group's ({dtd} s)"
            )


def _group_dtd(group: GroupConfig) -> int | None:
    return None if group.gap is None else group.gap.deactivation_delay


# -- events -------------------------------------------------------------------------------


def _spi(key: Key) -> str:
    return key.spi.hex() if isinstance(key, StoredKek) else f"{key.spi:#010x}"


def _address_order(address: str) -> tuple[int, int]:
    ip = ip_address(address)
    return ip.version, int(ip)


def _listed(members: tuple[str, ...]) -> str:
    if not members:
        return "no member"
    shown = ", ".join(members[:_LISTED])
    more = f" and {len(members) - _LISTED} more" if len(members) > _LISTED else ""
    noun = "member" if len(members) == 1 else "members"
    return f"{len(members)} {noun} ({shown}{more})"


def _recipients(members: tuple[str, ...], multicast: Address | None) -> str:
    group = f"multicast {multicast[0]} port {multicast[1]}" if multicast else ""
    if multicast and not members:
        return group
    return _listed(members) + (f" and {group}" if group else "")


@dataclass(frozen=True, slots=True)
class KeyGenerated:
    """A key for the next rekey exists: just made, or ``recovered`` (made before a restart, never pushed)."""

    at: float
    group_id: int
    kind: str  # "KEK" or "TEK"
    spi: str
    sa: str | None  # the SA a TEK keys
    recovered: bool = False

    @property
    def text(self) -> str:
        what = f"{self.kind} {self.spi}" + (f" for SA {self.sa}" if self.sa else "")
        if self.recovered:
            return f"group {self.group_id}: {what} was generated before a restart and never pushed; pushing it now"
        return f"group {self.group_id}: generated {what}"


@dataclass(frozen=True, slots=True)
class KeysActivated:
    """The key server now serves these keys in PULL replies; the ones they replace are retired."""

    at: float
    group_id: int
    spis: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"group {self.group_id}: now serving {', '.join(self.spis)}"


@dataclass(frozen=True, slots=True)
class PushSent:
    at: float
    group_id: int
    seq: int
    kek_spi: str  # the KEK the push is encrypted under
    purpose: str
    members: tuple[str, ...]
    multicast: Address | None

    @property
    def text(self) -> str:
        return (
            f"group {self.group_id}: push SEQ {self.seq} under KEK {self.kek_spi} ({self.purpose}) "
            f"sent to {_recipients(self.members, self.multicast)}"
        )


@dataclass(frozen=True, slots=True)
class PushRetransmitted:
    at: float
    group_id: int
    seq: int
    kek_spi: str
    attempt: int
    of: int
    members: tuple[str, ...]
    multicast: Address | None

    @property
    def text(self) -> str:
        return (
            f"group {self.group_id}: retransmission {self.attempt} of {self.of} of push SEQ {self.seq} "
            f"under KEK {self.kek_spi} to {_recipients(self.members, self.multicast)}"
        )


@dataclass(frozen=True, slots=True)
class PushAcknowledged:
    """``member`` acknowledged push ``seq``; ``reactivated``: it had been marked inactive."""

    at: float
    group_id: int
    member: str
    seq: int
    kek_spi: str
    source: str
    reactivated: bool = False

    @property
    def text(self) -> str:
        via = f" (from {self.source})" if self.source != self.member else ""
        again = "; active again" if self.reactivated else ""
        return (
            f"group {self.group_id}: member {self.member} acknowledged push SEQ {self.seq} "
            f"under KEK {self.kek_spi}{via}{again}"
        )


@dataclass(frozen=True, slots=True)
class AckDropped:
    at: float
    group_id: int
    source: str
    reason: str

    @property
    def text(self) -> str:
        return f"group {self.group_id}: {self.reason}"


@dataclass(frozen=True, slots=True)
class AckMissing:
    """``member`` never acknowledged push ``seq``; ``outcome`` says why it was not marked inactive."""

    at: float
    group_id: int
    member: str
    seq: int
    kek_spi: str
    retransmissions: int
    outcome: str

    @property
    def text(self) -> str:
        return (
            f"group {self.group_id}: member {self.member} did not acknowledge push SEQ {self.seq} under KEK "
            f"{self.kek_spi} after {self.retransmissions} retransmissions; {self.outcome}"
        )


@dataclass(frozen=True, slots=True)
class MemberInactive:
    at: float
    group_id: int
    member: str
    reason: str

    @property
    def text(self) -> str:
        return f"group {self.group_id}: member {self.member} marked inactive: {self.reason}"


@dataclass(frozen=True, slots=True)
class MemberRemoved:
    at: float
    group_id: int
    member: str
    method: RemovalMethod

    @property
    def text(self) -> str:
        return (
            f"group {self.group_id}: member {self.member} {removed_reason(self.method)}; "
            "its registrations are refused until it is re-authorized"
        )


@dataclass(frozen=True, slots=True)
class MemberReauthorized:
    at: float
    group_id: int
    member: str

    @property
    def text(self) -> str:
        return f"group {self.group_id}: member {self.member} re-authorized; it may register again"


RekeyEvent = (
    KeyGenerated
    | KeysActivated
    | PushSent
    | PushRetransmitted
    | PushAcknowledged
    | AckDropped
    | AckMissing
    | MemberInactive
    | MemberRemoved
    | MemberReauthorized
)


@dataclass(frozen=True, slots=True)
class RekeyOutput:
    """Send ``datagrams``, log ``events`` (each has ``text``), call ``handle_timer`` at ``timer``."""

    datagrams: tuple[Datagram, ...] = ()
    events: tuple[RekeyEvent, ...] = ()
    timer: float | None = None


@dataclass
class _Collector:
    datagrams: list[Datagram] = field(default_factory=list)
    events: list[RekeyEvent] = field(default_factory=list)


# -- the engine ---------------------------------------------------------------------------


@dataclass
class _PushInFlight:
    """One push on its way: the same datagram, again and again, until acknowledged or out of tries.

    ``members`` are its unicast targets, or the members whose acks are
    awaited; they leave it when they acknowledge, register again (after
    ``started``) or change state away from ``audience``.
    """

    seq: int
    kek_spi: bytes
    datagram: bytes
    started: float
    audience: MemberState
    members: set[str]
    unicast: bool
    multicast: Address | None
    tracked: bool  # acks were requested for it
    due: float
    sent: int = 1


class RekeyEngine:
    """Rekeys, pushes and member removal for the group of ``keys`` (its store holds the members)."""

    def __init__(self, keys: GroupKeys, now: float, config: RekeyConfig = RekeyConfig()) -> None:
        config.check(keys.config)
        self.keys = keys
        self.config = config
        self._in_flight: list[_PushInFlight] = []
        # A retired KEK stays known while pushes under it may still be acknowledged.
        self._acks = AckVerifier(key_length=config.ack_key_length, grace=config.ack_window + MAX_ACK_DELAY)
        current = keys.ensure_current(now)
        assert current.kek is not None
        self._admit_acks(current.kek, keys.config.kek.ack, now)

    @property
    def group_id(self) -> int:
        return self.keys.group_id

    @property
    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must run next: the next rekey or (re)transmission."""
        times = [d.due for d in self._in_flight]
        rekey = self.keys.next_rekey_time()
        if rekey is not None:
            times.append(rekey)
        return min(times, default=None)

    # -- entry points ----------------------------------------------------------------------

    def handle_timer(self, now: float) -> RekeyOutput:
        out = _Collector()
        for inflight in list(self._in_flight):
            if now >= inflight.due:
                self._advance(out, inflight, now)
        rekey = self.keys.next_rekey_time()
        if rekey is not None and now >= rekey:
            self._rekey(out, now, "scheduled rekey")
        return self._output(out)

    def force_rekey(self, now: float) -> RekeyOutput:
        """New KEK and TEKs now (``request security group-vpn server rekey group N``)."""
        out = _Collector()
        self._rekey(out, now, "rekey requested by the administrator", force=True)
        return self._output(out)

    def policy_changed(self, config: GroupConfig, now: float) -> RekeyOutput:
        """Serve ``config`` from now on and push what members must learn of it.

        Changed selectors, deny entries or GAP (its ATD and DTD included) go
        out as one push restating every SA with its current key; a changed
        suite gets a new TEK in that push, a changed SA KEK a new KEK before
        it; SAs that left the configuration are deleted in it.
        """
        self.config.check(config)
        before = self.keys.current_policy(now).sa
        self.keys.config = config
        retired = self.keys.retire_unconfigured()
        after = self.keys.current_policy(now).sa
        rekey = self.keys.next_rekey_time()
        out = _Collector()
        if before != after or retired or (rekey is not None and now >= rekey):
            self._rekey(
                out,
                now,
                "configuration changed",
                force_kek=before.kek != after.kek,
                restate=True,
                deletes=delete_payloads(KeySet(None, retired)),
            )
        return self._output(out)

    def receive_ack(self, datagram: bytes, addr: Address, now: float) -> RekeyOutput:
        """A GROUPKEY-PUSH-ACK (exchange 35) that arrived from ``addr``."""
        out = _Collector()
        result = self._acks.receive(datagram, addr, now)
        if isinstance(result, AckRejected):
            out.events.append(AckDropped(now, self.group_id, addr[0], result.text))
            return self._output(out)
        store, address = self.keys.store, str(result.member)
        member = store.member(self.group_id, address)
        if member is None:
            reason = f"acknowledgement of push SEQ {result.seq} from {address}, which is not a member of the group"
            out.events.append(AckDropped(now, self.group_id, addr[0], reason))
            return self._output(out)
        store.record_ack(self.group_id, address, result.kek_spi, result.seq)
        reactivated = member.state is MemberState.INACTIVE
        if reactivated:
            store.set_member_state(self.group_id, address, MemberState.ACTIVE)
        for inflight in list(self._in_flight):
            if (inflight.kek_spi, inflight.seq) == (result.kek_spi, result.seq):
                inflight.members.discard(address)
                if inflight.tracked and not inflight.members:
                    self._in_flight.remove(inflight)
        out.events.append(
            PushAcknowledged(now, self.group_id, address, result.seq, result.kek_spi.hex(), addr[0], reactivated)
        )
        return self._output(out)

    def remove_member(self, address: str, method: RemovalMethod, now: float) -> RekeyOutput:
        """Drop ``address`` from the group by ``method`` (see ``ks.removal``), then rekey the others.

        Raises ``ValueError`` for an address that is not a member, or is removed already.
        """
        address = str(ip_address(address))
        store = self.keys.store
        member = store.member(self.group_id, address)
        if member is None or member.state is MemberState.REMOVED:
            state = "is not a member" if member is None else "is removed already"
            raise ValueError(f"{address} {state} of group {self.group_id}")
        current = self.keys.ensure_current(now)
        assert current.kek is not None
        policy = None
        deletes: tuple[Delete, ...] = ()
        if method is RemovalMethod.DTD:
            if _group_dtd(self.keys.config) == 0:
                raise ValueError(
                    f"group {self.group_id} deactivates replaced SAs at once (DTD 0 s), so a smaller DTD "
                    "cannot remove a member: use method delete"
                )
            policy = old_sas_with_dtd(self.keys, current, self.config.removal_dtd, now)
        else:
            deletes = delete_payloads(current)
        store.set_member_state(self.group_id, address, MemberState.REMOVED, removed_reason(method))
        out = _Collector()
        out.events.append(MemberRemoved(now, self.group_id, address, method))
        self._push(
            out,
            now,
            current.kek,
            policy,
            deletes,
            f"removal of {address} by {method}",
            MemberState.REMOVED,
            {address},
            unicast_only=True,
        )
        self._rekey(out, now, f"member {address} removed", force=True, unicast_only=True)
        return self._output(out)

    def reauthorize(self, address: str, now: float) -> RekeyOutput:
        """Let a removed member register again; it gets pushes once it has."""
        address = str(ip_address(address))
        store = self.keys.store
        member = store.member(self.group_id, address)
        if member is None or member.state is not MemberState.REMOVED:
            raise ValueError(f"{address} is not a removed member of group {self.group_id}")
        store.set_member_state(
            self.group_id, address, MemberState.INACTIVE, "re-authorized by the administrator; not registered since"
        )
        return self._output(_Collector(events=[MemberReauthorized(now, self.group_id, address)]))

    # -- rekeying --------------------------------------------------------------------------

    def _rekey(
        self,
        out: _Collector,
        now: float,
        cause: str,
        *,
        force: bool = False,
        force_kek: bool = False,
        restate: bool = False,
        deletes: tuple[Delete, ...] = (),
        unicast_only: bool = False,
    ) -> None:
        """Push the due (or forced) keys: a new KEK first, then TEKs under it.

        ``restate`` puts every configured SA in the TEK push, with its new
        key where one was made, and sends that push even without new TEKs.
        """
        recovered = self.keys.pending()
        pending = self.keys.prepare_rekey(now, force=force, force_kek=force_kek)
        self._report_keys(out, now, recovered, pending)
        current = self.keys.ensure_current(now)
        kek = current.kek
        assert kek is not None
        members = {m.address for m in self.keys.store.members(self.group_id, MemberState.ACTIVE)}
        if pending.kek is not None:
            rollover = KeySet(pending.kek, ())
            policy = self.keys.policy(rollover, now)
            self._push(out, now, kek, policy, (), f"new KEK, {cause}", MemberState.ACTIVE, members, unicast_only)
            self._activate(out, rollover, now, replaced=kek)
            kek = pending.kek
        if restate:
            new = {tek.name: tek for tek in pending.teks}
            teks = tuple(new.get(tek.name, tek) for tek in current.teks)
        else:
            teks = pending.teks
        if teks or deletes:
            policy = self.keys.policy(KeySet(None, teks), now) if teks else None
            purpose = f"{'policy update' if restate else 'new TEKs'}, {cause}"
            self._push(out, now, kek, policy, deletes, purpose, MemberState.ACTIVE, members, unicast_only)
        if pending.teks:
            self._activate(out, KeySet(None, pending.teks), now)

    def _report_keys(self, out: _Collector, now: float, recovered: KeySet, pending: KeySet) -> None:
        earlier = {_spi(key) for key in (recovered.kek, *recovered.teks) if key is not None}
        for key in (pending.kek, *pending.teks):
            if key is not None:
                kind, sa = ("KEK", None) if isinstance(key, StoredKek) else ("TEK", key.name)
                out.events.append(KeyGenerated(now, self.group_id, kind, _spi(key), sa, _spi(key) in earlier))

    def _activate(self, out: _Collector, keys: KeySet, now: float, replaced: StoredKek | None = None) -> None:
        self.keys.activate(keys, now)
        if keys.kek is not None:
            self._admit_acks(keys.kek, self.keys.config.kek.ack, now)
        if replaced is not None:
            self._acks.retire(replaced.spi, now)
        activated: tuple[StoredKek | StoredTek | None, ...] = (keys.kek, *keys.teks)
        out.events.append(KeysActivated(now, self.group_id, tuple(_spi(k) for k in activated if k is not None)))

    def _admit_acks(self, kek: StoredKek, request: AckRequest | None, now: float) -> None:
        """Verify acks of pushes under ``kek`` as ``request`` asks (None: refuse them)."""
        announced = self.keys.policy(KeySet(kek, ()), now).kek
        assert announced is not None
        self._acks.install(replace(announced, ack=request), kek.kek)

    # -- delivery ---------------------------------------------------------------------------

    def _push(
        self,
        out: _Collector,
        now: float,
        kek: StoredKek,
        policy: GroupPolicy | None,
        deletes: tuple[Delete, ...],
        purpose: str,
        audience: MemberState,
        members: set[str],
        unicast_only: bool,
    ) -> None:
        """Build one push under ``kek`` (the KEK its recipients hold) and send its first copies."""
        # The push's own SA KEK, if it has one, says whether to acknowledge it (RFC 8263 §2).
        config = self.keys.config.kek
        request = policy.kek.ack if policy is not None and policy.kek is not None else config.ack
        self._admit_acks(kek, request, now)
        seq = self.keys.store.next_push_seq(kek.spi)
        sa, kd = (None, None) if policy is None else policy.to_wire()
        scheme = signature_scheme(config.sig_algorithm, config.sig_hash)
        datagram = build_push(kek.kek, kek.spi, PushPayloads(seq, deletes, sa, kd), self.keys.signing_key(now), scheme)
        inflight = _PushInFlight(
            seq,
            kek.spi,
            datagram,
            now,
            audience,
            set(members),
            unicast_only or self.config.delivery is not Delivery.MULTICAST,
            None if unicast_only or self.config.delivery is Delivery.UNICAST else self._multicast,
            request is not None,
            now,
        )
        inflight.due = self._next_due(inflight, now)
        sent = self._transmit(out, inflight)
        out.events.append(PushSent(now, self.group_id, seq, kek.spi.hex(), purpose, sent, inflight.multicast))
        if self._more_to_do(inflight):
            self._in_flight.append(inflight)

    def _advance(self, out: _Collector, inflight: _PushInFlight, now: float) -> None:
        """Retransmit ``inflight`` if it has copies and recipients left, else close and judge it."""
        inflight.members = self._still_addressed(inflight)
        if self._more_to_do(inflight) and inflight.sent <= self.config.retransmissions:
            sent = self._transmit(out, inflight)
            out.events.append(
                PushRetransmitted(
                    now,
                    self.group_id,
                    inflight.seq,
                    inflight.kek_spi.hex(),
                    inflight.sent,
                    self.config.retransmissions,
                    sent,
                    inflight.multicast,
                )
            )
            inflight.sent += 1
            inflight.due = self._next_due(inflight, now)
            if inflight.tracked or inflight.sent <= self.config.retransmissions:
                return
        self._in_flight.remove(inflight)
        if inflight.tracked:
            self._judge(out, inflight, now)

    def _next_due(self, inflight: _PushInFlight, now: float) -> float:
        """A period after the copy just sent; after the last tracked copy, when silent members are judged."""
        due = now + self.config.retransmission_period
        if inflight.tracked and inflight.sent > self.config.retransmissions:
            return max(due, inflight.started + MIN_ACK_PATIENCE)
        return due

    def _more_to_do(self, inflight: _PushInFlight) -> bool:
        """Whether copies remain to send: to members not yet acknowledging, or blindly."""
        if inflight.tracked:
            return bool(inflight.members)
        return self.config.retransmissions > 0 and bool(inflight.members or inflight.multicast)

    def _transmit(self, out: _Collector, inflight: _PushInFlight) -> tuple[str, ...]:
        """One copy to each unicast target and the multicast address; the members addressed."""
        members = tuple(sorted(inflight.members, key=_address_order)) if inflight.unicast else ()
        out.datagrams += [Datagram(inflight.datagram, (member, self._port)) for member in members]
        if inflight.multicast is not None:
            out.datagrams.append(Datagram(inflight.datagram, inflight.multicast))
        return members

    def _still_addressed(self, inflight: _PushInFlight) -> set[str]:
        members = {m.address: m for m in self.keys.store.members(self.group_id)}
        return {
            address
            for address in inflight.members
            if (member := members.get(address)) is not None
            and member.state is inflight.audience
            and member.last_registered <= inflight.started
        }

    def _judge(self, out: _Collector, inflight: _PushInFlight, now: float) -> None:
        """The members still silent one period after the last copy (RFC 8263 §6)."""
        store, retransmissions = self.keys.store, self.config.retransmissions
        for address in sorted(inflight.members, key=_address_order):
            member = store.member(self.group_id, address)
            assert member is not None  # _advance just found it
            if member.state is MemberState.REMOVED:
                outcome = "it is removed"
            elif member.last_ack_seq is None:
                outcome = "not marked inactive: it has never acknowledged a push (RFC 8263 §6)"
            else:
                reason = f"no ack for push SEQ {inflight.seq} after {retransmissions} retransmissions"
                store.set_member_state(self.group_id, address, MemberState.INACTIVE, reason)
                out.events.append(MemberInactive(now, self.group_id, address, reason))
                continue
            out.events.append(
                AckMissing(now, self.group_id, address, inflight.seq, inflight.kek_spi.hex(), retransmissions, outcome)
            )

    @property
    def _port(self) -> int:
        """Pushes go to the SA KEK destination's port, GDOI's 848 when it names none."""
        return self.keys.config.kek.destination.port or GDOI_PORT

    @property
    def _multicast(self) -> Address:
        return (str(self.keys.config.kek.destination.address), self._port)

    def _output(self, out: _Collector) -> RekeyOutput:
        return RekeyOutput(tuple(out.datagrams), tuple(out.events), self.next_deadline)
