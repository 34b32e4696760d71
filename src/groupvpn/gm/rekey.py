"""A member's side of rekeying, sans-IO: pushes applied to the SA database, pull rekeys, removal.

One ``GroupRekey`` per registered group keeps that group's SAs current
between registrations.  It verifies GROUPKEY-PUSH datagrams with
``gdoi.push.PushReceiver``, applies what they carry to the SA database,
returns the RFC 8263 acknowledgement as a datagram, and says when the
member must re-register with GROUPKEY-PULL.  Like every core it takes
``now`` and returns datagrams, events and its next deadline.

What a push does (seed, "Rekeying a Group Member (groupkey-push Method)";
RFC 6407 §4, §5.4, §5.9; RFC 5374 §4.2.1):

* Delete payloads first, in the push's order: a TEK or KEK by SPI, SPI 0
  meaning every one of that protocol the member holds at that moment.  The
  push's own GAP DTD, when it has one, delays them; otherwise they take
  effect at once.
* New TEKs decrypt at once and take over encryption from the TEKs they
  replace (the older ones covering the same traffic) after the GAP's ATD,
  at once without one.  The replaced TEKs are deleted after the DTD, or
  live to their end without one.  A TEK the member already holds under the
  same SPI and keys is restated: it keeps its place and history.
* A new KEK becomes the group's rekey SA; the old one still opens pushes
  (retransmissions under it) until its lifetime ends or a push deletes it.
* A push restating only TEKs the member already holds, with a DTD smaller
  than the one in force, is how a key server removes a member (seed): those
  TEKs are deleted after that DTD and the member re-registers at once.  So
  does a push that leaves the group without a KEK or without any TEK.  If
  that re-registration is refused, the member was removed: its SAs go and
  ``refused`` says why.
* A counter-mode TEK pushed to a member holding no sender ID is not
  installed (RFC 6407 §4.4); the member re-registers to get one.

Which TEK encrypts: the SA database's rule (the one expiring first
encrypts until 30 s of it remain, then the next, seed "groupkey-pull
Method") among the TEKs not yet replaced by an activated push.
``RolloverGroupSas`` carries the activation times so that
``SaDatabase.snapshot`` answers for pushes too.

Pull rekey (seed): for every SA without a successor -- the current KEK,
and each TEK no later TEK fully covers -- the member re-registers when
between 7 % and 5 % of its lifetime (as delivered) is left, at a point
drawn once per SA from the injected rng, so that members spread their
PULLs.  The answer replaces the group: SAs absent from it are deleted.

Acknowledgements go out with the push's result, with no jitter: RFC 8263
§6 allows jitter for multicast pushes only as a MAY, and an immediate
acknowledgement keeps within its 5-s bound.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from types import MappingProxyType
from typing import TypeVar

from ..gdoi.policy import GroupAssociatedPolicy, GroupPolicy
from ..gdoi.pull import LastPush
from ..gdoi.push import PushAccepted, PushReceiver, PushRejected, PushRejection
from ..ike.events import Datagram
from ..ike.mainmode import Rng
from ..ike.sa import Address
from ..wire.numbers import GdoiProtocol, PolicyAction
from .sadb import GroupSas, KekSa, Rule, SaDatabase, TekSa

PULL_WINDOW = (0.05, 0.07)  # share of an SA's lifetime left when the member re-registers (seed)

# -- which TEK encrypts, with pushes ----------------------------------------------------------


@dataclass(frozen=True)
class RolloverGroupSas(GroupSas):
    """A group's SAs plus, for TEKs a push delivered, when each takes over encryption (its ATD).

    An activated pushed TEK supersedes for encryption every TEK installed
    before it that covers the same rule; they still decrypt.  TEKs with no
    activation time follow the 30-s handover of ``GroupSas``.
    """

    activations: Mapping[bytes, float] = field(default_factory=lambda: MappingProxyType({}))

    def encrypting(self, rule: Rule, now: float) -> TekSa | None:
        covering = [t for t in self.teks if rule.selector in t.selectors and t.expires_at > now]
        pending = {t.spi for t in covering if self.activations.get(t.spi, t.installed_at) > now}
        active = [t for t in covering if t.spi not in pending]
        pushed = [t.installed_at for t in active if t.spi in self.activations]
        if pushed:
            active = [t for t in active if t.installed_at >= max(pushed)]
        return GroupSas.encrypting(replace(self, teks=tuple(active)), rule, now)

    def changes_after(self, now: float) -> float | None:
        times = [t for t in (super().changes_after(now), *self.activations.values()) if t is not None and t > now]
        return min(times, default=None)


def _as_sas(policy: GroupPolicy, now: float) -> GroupSas:
    """The SAs ``policy`` describes, built by the database's own rules without touching a real one."""
    return SaDatabase().install(policy, None, now)


def _sorted(teks: Iterable[TekSa]) -> tuple[TekSa, ...]:
    return tuple(sorted(teks, key=lambda t: t.expires_at))


Sa = TypeVar("Sa", TekSa, KekSa)


def _known_end(sa: Sa, held: Sa | None) -> Sa:
    """An SA delivered again with the same keys ends no later than the member knew.

    Key servers send the remaining lifetime in whole seconds, rounded up
    (and at least 10 s), so taking it as given would stretch the SA past
    the end every other member keeps.
    """
    if held is None or held.keys != sa.keys:
        return sa
    return replace(sa, installed_at=held.installed_at, expires_at=min(sa.expires_at, held.expires_at))


# -- events ----------------------------------------------------------------------------------


def _name(kind: str, spi: bytes) -> str:
    return f"TEK 0x{spi.hex()}" if kind == "TEK" else f"KEK {spi.hex()}"


def _names(sas: Iterable[tuple[str, bytes]]) -> str:
    names = [_name(kind, spi) for kind, spi in sas]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


@dataclass(frozen=True, slots=True)
class PushApplied:
    """A push passed every check and was applied; ``changes`` says what it did, one phrase each."""

    group_id: int
    seq: int
    kek_spi: bytes
    source: str
    changes: tuple[str, ...]

    @property
    def text(self) -> str:
        done = "; ".join(self.changes) or "nothing to change"
        return f"group {self.group_id}: push SEQ {self.seq} under KEK {self.kek_spi.hex()} from {self.source}: {done}"


@dataclass(frozen=True, slots=True)
class PushDropped:
    """A push that failed a check; ``count`` is how many were dropped for ``reason`` so far."""

    group_id: int
    reason: PushRejection
    detail: str
    count: int

    @property
    def text(self) -> str:
        return f"group {self.group_id}: push dropped ({self.reason.value}, {self.count} so far): {self.detail}"


@dataclass(frozen=True, slots=True)
class SaActivated:
    """A pushed TEK started encrypting (at its ATD, or on arrival without one)."""

    group_id: int
    spi: bytes
    seq: int

    @property
    def text(self) -> str:
        return f"group {self.group_id}: {_name('TEK', self.spi)} from push SEQ {self.seq} now encrypts"


@dataclass(frozen=True, slots=True)
class SaDeactivated:
    """A TEK or KEK was removed before its lifetime ended, or a replaced KEK reached its end."""

    group_id: int
    kind: str  # "TEK" or "KEK"
    spi: bytes
    reason: str

    @property
    def text(self) -> str:
        return f"group {self.group_id}: {_name(self.kind, self.spi)} deactivated: {self.reason}"


@dataclass(frozen=True, slots=True)
class PullRekeyStarted:
    group_id: int
    reason: str

    @property
    def text(self) -> str:
        return f"group {self.group_id}: re-registering with GROUPKEY-PULL: {self.reason}"


@dataclass(frozen=True, slots=True)
class Removed:
    """The key server took the member's keys away and refused it again: its SAs are gone."""

    group_id: int
    cause: str
    refusal: str

    @property
    def text(self) -> str:
        return (
            f"removed from group {self.group_id} by the key server: {self.cause}; "
            f"re-registration refused: {self.refusal}"
        )


RekeyEvent = PushApplied | PushDropped | SaActivated | SaDeactivated | PullRekeyStarted | Removed


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


# -- the core ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Removal:
    """An SA a push said to delete, due at ``at``; ``cause`` is what a forced re-registration reports."""

    at: float
    kind: str
    spi: bytes
    reason: str
    cause: str


@dataclass(frozen=True, slots=True)
class _Activation:
    at: float
    spi: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class _PullPoint:
    """When an SA without a successor makes the member re-register; ``lifetime`` as first delivered."""

    at: float
    lifetime: float


@dataclass(frozen=True, slots=True)
class _Pull:
    """The next re-registration: forced by a push (``forced`` says why) or at the pull point of an SA."""

    at: float
    forced: str | None = None
    kind: str = ""
    spi: bytes = b""


def _has_successor(group: GroupSas, tek: TekSa) -> bool:
    """Whether every selector of ``tek`` is also covered by a TEK that outlives it."""
    return all(any(t.expires_at > tek.expires_at and s in t.selectors for t in group.teks) for s in tek.selectors)


def _gap_text(gap: GroupAssociatedPolicy) -> str:
    parts = [
        f"{name} {value} s"
        for name, value in (
            ("ATD", gap.activation_delay),
            ("DTD", gap.deactivation_delay),
            ("anti-replay window", gap.anti_replay_window),
        )
        if value is not None
    ]
    return f"GAP {', '.join(parts) or 'empty'}"


class GroupRekey:
    """Rekeying of group ``group_id`` for the member that registers from ``member_address``.

    ``sadb`` is shared with the member core; between registrations, which
    go through ``registered``, this object is the only writer of the group.
    """

    def __init__(
        self,
        group_id: int,
        sadb: SaDatabase,
        member_address: IPv4Address | IPv6Address,
        *,
        rng: Rng = os.urandom,
    ) -> None:
        self.group_id = group_id
        self.sadb = sadb
        self.receiver = PushReceiver(group_id, member_address)
        self._rng = rng
        self._reset()

    def _reset(self) -> None:
        self._removals: list[_Removal] = []
        self._activations: list[_Activation] = []
        self._kek_ends: dict[bytes, float] = {}  # every KEK the receiver holds
        self._replaced_keks: dict[bytes, bytes] = {}  # a KEK a push replaced -> its successor
        self._points: dict[bytes, _PullPoint | None] = {}  # None: its re-registration happened
        self._forced: _Pull | None = None
        self._cause: str | None = None  # how a push took the keys away: a refusal now means removal
        self._kek_expected = False
        self._pulling = False

    # -- inspection ------------------------------------------------------------------------

    @property
    def group(self) -> GroupSas | None:
        return self.sadb.groups.get(self.group_id)

    @property
    def last_push(self) -> LastPush | None:
        """The newest push accepted, for ``PullInitiator(last_push=...)``."""
        return self.receiver.last_push

    def holds(self, kek_spi: bytes) -> bool:
        """Whether pushes under ``kek_spi`` (a PUSH header's cookie pair) are this group's."""
        return kek_spi in self.receiver.rekey_sas

    @property
    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must run or a re-registration is due, whichever comes first."""
        times = [r.at for r in self._removals] + [a.at for a in self._activations] + list(self._kek_ends.values())
        pull = self._next_pull()
        if pull is not None:
            times.append(pull.at)
        return min(times, default=None)

    @property
    def pull_deadline(self) -> float | None:
        """When the member should next re-register (None while it is re-registering)."""
        pull = self._next_pull()
        return None if pull is None else pull.at

    def pull_due(self, now: float) -> bool:
        """Whether the member should re-register now; it calls ``pull_started`` when it does."""
        pull = self._next_pull()
        return pull is not None and pull.at <= now

    def _next_pull(self) -> _Pull | None:
        group = self.group
        if self._pulling or group is None:
            return None
        if self._forced is not None:
            return self._forced
        candidates = [("TEK", t.spi) for t in group.teks if not _has_successor(group, t)]
        if group.kek is not None:
            candidates.append(("KEK", group.kek.spi))
        due = [_Pull(p.at, None, kind, spi) for kind, spi in candidates if (p := self._points.get(spi)) is not None]
        return min(due, default=None, key=lambda p: p.at)

    # -- entry points ---------------------------------------------------------------------

    def registered(self, policy: GroupPolicy, seq: int | None, now: float) -> RekeyOutput:
        """Install a registration's ``policy`` (PULL message 4, its SEQ ``seq``) in place of the group's.

        SAs absent from it are deleted (seed), and so are removals a push
        scheduled: the answer says what is valid now.  An answer whose SEQ is
        below the one last accepted under its KEK was made before a push the
        member has applied since (they raced, RFC 6407 §3.3): it changes
        nothing, so neither that push's SAs nor its SEQ are lost.
        """
        out = _Collector()
        before = self.group
        held = dict(self.receiver.rekey_sas)
        holding = held.get(policy.kek.spi) if policy.kek is not None else None
        self._pulling = False
        if holding is not None and holding.seq > (seq or 0):
            return self._output(out)
        group = self.sadb.install(policy, seq, now)
        activations: dict[bytes, float] = {}
        if before is not None:
            for tek in before.teks:
                if group.tek(tek.spi) is None:
                    reason = "absent from the registration answer"
                    out.events.append(SaDeactivated(self.group_id, "TEK", tek.spi, reason))
            kek = group.kek
            if kek is not None and before.kek is not None and before.kek.spi == kek.spi:
                kek = _known_end(kek, before.kek)
            teks = [_known_end(t, before.tek(t.spi)) for t in group.teks]
            group = replace(group, teks=_sorted(teks), kek=kek)
            if isinstance(before, RolloverGroupSas):
                known = {t.spi for t in teks if t.installed_at < now}  # kept by spi and keys
                activations = {spi: at for spi, at in before.activations.items() if spi in known}
        self.sadb.put(_with_activations(group, activations))
        for spi in held:
            if policy.kek is None or spi != policy.kek.spi:
                self._drop_kek(spi)
                out.events.append(SaDeactivated(self.group_id, "KEK", spi, "absent from the registration answer"))
        self._removals = []
        self._activations = [a for a in self._activations if a.spi in activations]
        self._points = {s: p for s, p in self._points.items() if group.tek(s) is not None or s in self._kek_ends}
        if policy.kek is not None and policy.kek_keys is not None and group.kek is not None:
            if holding is None or holding.kek != policy.kek_keys.kek or holding.seq < (seq or 0):
                self.receiver.install(policy.kek, policy.kek_keys, seq or 0)  # else its duplicate cache stays
            self._kek_ends[policy.kek.spi] = group.kek.expires_at
            self._draw(policy.kek.spi, group.kek.expires_at, now)
        for tek in group.teks:
            self._draw(tek.spi, tek.expires_at, now)
        self._forced = self._cause = None
        self._kek_expected = policy.kek is not None
        return self._output(out)

    def receive_push(self, datagram: bytes, source: Address, now: float) -> RekeyOutput:
        """A GROUPKEY-PUSH (exchange 33) that arrived from ``source``: verify, apply, acknowledge."""
        out = _Collector()
        result = self.receiver.receive(datagram, source, now)
        if isinstance(result, PushRejected):
            count = self.receiver.rejected[result.reason]
            out.events.append(PushDropped(self.group_id, result.reason, result.text, count))
        else:
            applied = _Collector()
            changes = self._apply(applied, result, now)
            seq, spi = result.payloads.seq, result.kek_spi
            out.events += [PushApplied(self.group_id, seq, spi, result.source[0], changes), *applied.events]
        # RFC 8263 §3-4: back to where the push came from, once it is processed; a duplicate's again.
        if result.datagram_for_ack is not None:
            out.datagrams.append(Datagram(result.datagram_for_ack, source))
        return self._output(out)

    def handle_timer(self, now: float) -> RekeyOutput:
        out = _Collector()
        self._activate_due(out, now)
        due = [r for r in self._removals if r.at <= now]
        self._removals = [r for r in self._removals if r.at > now]
        self._check_keys(now, self._delete(out, due))
        for spi, end in list(self._kek_ends.items()):
            if end <= now:
                successor = self._replaced_keks.get(spi)
                self._drop_kek(spi)
                if successor is not None:  # the current KEK's end is the SA database's expiry
                    reason = f"replaced by KEK {successor.hex()}, its lifetime ended"
                    out.events.append(SaDeactivated(self.group_id, "KEK", spi, reason))
        return self._output(out)

    def pull_started(self, now: float) -> PullRekeyStarted:
        """The member starts re-registering now; the event says why."""
        pull = self._next_pull()
        assert pull is not None and pull.at <= now, "no re-registration is due"
        reason = pull.forced
        if reason is None:
            group = self.group
            assert group is not None
            sa = group.kek if pull.kind == "KEK" else group.tek(pull.spi)
            point = self._points[pull.spi]
            assert sa is not None and point is not None
            left = 100 * sa.remaining(now) / point.lifetime
            reason = f"{_name(pull.kind, pull.spi)} has {left:.1f} % of its lifetime left and no successor"
        for spi, point in self._points.items():
            if point is not None and point.at <= now:
                self._points[spi] = None
        self._forced = None
        self._pulling = True
        return PullRekeyStarted(self.group_id, reason)

    def refused(self, reason: str) -> Removed | None:
        """The key server refused a registration for ``reason``; the removal this completes, if any.

        After a push took the member's keys away, a refusal means it was
        removed from the group (seed): every SA of the group goes.  Any
        other refusal leaves the SAs to their lifetimes while the member
        retries.
        """
        if self._cause is None:
            return None
        removed = Removed(self.group_id, self._cause, reason)
        self.clear()
        return removed

    def clear(self) -> bool:
        """Forget the group: its SAs, rekey SAs and schedules; False when nothing was installed."""
        for spi in list(self.receiver.rekey_sas):
            self.receiver.remove(spi)
        self._reset()
        return self.sadb.clear(self.group_id)

    # -- applying a push -------------------------------------------------------------------

    def _apply(self, out: _Collector, accepted: PushAccepted, now: float) -> tuple[str, ...]:
        """Deletes, then the SA and KD; what changed, one phrase each."""
        group = self.group
        assert group is not None, "rekey SAs are only held while the group is installed"
        payloads, policy, seq = accepted.payloads, accepted.policy, accepted.payloads.seq
        gap = policy.gap if policy is not None else None
        dtd = gap.deactivation_delay if gap is not None else None
        if group.kek is not None and group.kek.spi == accepted.kek_spi:
            self.sadb.put(replace(group, kek=replace(group.kek, seq=seq)))
        changes: list[str] = []
        targets: list[tuple[str, bytes]] = []
        for delete in payloads.deletes:
            kind = "KEK" if delete.protocol == GdoiProtocol.KEK else "TEK"
            if kind == "KEK":
                held = list(self.receiver.rekey_sas)
            else:  # the member's TEKs are all ESP
                held = [t.spi for t in group.teks] if delete.protocol == GdoiProtocol.IPSEC_ESP else []
            for spi in delete.spis:
                found = [s for s in held if s == spi or not any(spi)]
                if not found:
                    changes.append(f"Delete of unknown {_name(kind, spi)} ignored")
                targets += [(kind, s) for s in found if (kind, s) not in targets]
        causes: list[str] = []
        if targets:
            cause = f"{_names(targets)} deleted by push SEQ {seq}"
            if dtd:
                self._schedule(targets, now + dtd, f"deleted by push SEQ {seq} after its DTD of {dtd} s", cause)
                changes.append(f"{_names(targets)} to be deleted in {dtd} s (DTD)")
            else:
                reason = f"deleted by push SEQ {seq}"
                causes = self._delete(out, [_Removal(now, k, s, reason, cause) for k, s in targets])
                changes.append(f"deleted {_names(targets)}")
        if policy is not None:
            changes += self._install(out, policy, seq, now)
        self._check_keys(now, causes)
        return tuple(changes)

    def _install(self, out: _Collector, policy: GroupPolicy, seq: int, now: float) -> list[str]:
        """The SA and KD of push ``seq``: new and restated TEKs, a new KEK, the GAP."""
        group = self.group
        assert group is not None
        changes: list[str] = []
        pushed = _as_sas(policy, now)
        gap = policy.gap
        atd = gap.activation_delay if gap is not None else None
        dtd = gap.deactivation_delay if gap is not None else None
        teks = {t.spi: t for t in group.teks}
        new: list[TekSa] = []
        restated: list[TekSa] = []
        for tek in pushed.teks:
            held = teks.get(tek.spi)
            if held is not None and held.keys == tek.keys:
                restated.append(_known_end(tek, held))
            elif tek.suite.counter_mode and group.sender_ids is None:
                name = _name("TEK", tek.spi)
                self._force(now, f"push SEQ {seq} brought counter-mode {name} and the member holds no sender ID")
                changes.append(f"{name} not installed: counter mode without a sender ID (RFC 6407 §4.4)")
            else:
                new.append(tek)
        teks.update((t.spi, t) for t in (*restated, *new))
        activations = dict(group.activations) if isinstance(group, RolloverGroupSas) else {}
        activations.update((t.spi, now + (atd or 0)) for t in new)
        known = {(r.selector, r.action) for r in group.rules}
        rules = group.rules + tuple(r for r in pushed.rules if (r.selector, r.action) not in known)
        kek = group.kek
        if pushed.kek is not None:
            kek = self._new_kek(policy, pushed.kek, group.kek, now)
            changes.append(f"new KEK {kek.spi.hex()} ({round(kek.remaining(now))} s)")
        updated = replace(group, rules=rules, teks=_sorted(teks.values()), kek=kek, gap=gap or group.gap)
        self.sadb.put(_with_activations(updated, activations))
        if new:
            when = f"encrypting in {atd} s (ATD)" if atd else "encrypting at once"
            changes.append(f"new {_names(('TEK', t.spi) for t in new)}, {when}")
            self._activations += [_Activation(now + (atd or 0), t.spi, seq) for t in new]
            for tek in new:
                self._draw(tek.spi, tek.expires_at, now)
            in_push = {t.spi for t in pushed.teks}
            replaced = [
                ("TEK", t.spi)
                for t in group.teks
                if t.spi not in in_push and any(s in n.selectors for n in new for s in t.selectors)
            ]
            if replaced and dtd is not None:
                reason = f"replaced by push SEQ {seq}, its DTD of {dtd} s elapsed"
                self._schedule(replaced, now + dtd, reason, f"{_names(replaced)} replaced by push SEQ {seq}")
                changes.append(f"{_names(replaced)} replaced, deleted in {dtd} s (DTD)")
        elif restated and pushed.kek is None and dtd is not None and dtd < _dtd_in_force(group):
            sas = [("TEK", t.spi) for t in restated]
            cause = f"push SEQ {seq} brought no new keys and deactivates {_names(sas)} after a DTD of {dtd} s"
            self._schedule(sas, now + dtd, f"DTD of {dtd} s from push SEQ {seq} elapsed without new keys", cause)
            self._force(now, cause, removal=True)
            changes.append(f"{_names(sas)} to be deleted in {dtd} s (DTD), no new keys")
        elif restated:
            changes.append(f"restated {_names(('TEK', t.spi) for t in restated)}")
        if gap is not None and gap != group.gap:
            changes.append(_gap_text(gap))
        self._activate_due(out, now)
        return changes

    def _new_kek(self, policy: GroupPolicy, kek: KekSa, previous: KekSa | None, now: float) -> KekSa:
        """Install the push's KEK as the group's rekey SA; the previous one opens pushes until its end."""
        assert policy.kek is not None and policy.kek_keys is not None
        self.receiver.install(policy.kek, policy.kek_keys)
        self._kek_ends[kek.spi] = kek.expires_at
        self._draw(kek.spi, kek.expires_at, now)
        if previous is not None and previous.spi in self._kek_ends:
            self._replaced_keks[previous.spi] = kek.spi
        return kek

    def _activate_due(self, out: _Collector, now: float) -> None:
        for activation in [a for a in self._activations if a.at <= now]:
            self._activations.remove(activation)
            out.events.append(SaActivated(self.group_id, activation.spi, activation.seq))

    # -- deleting ---------------------------------------------------------------------------

    def _schedule(self, sas: Iterable[tuple[str, bytes]], at: float, reason: str, cause: str) -> None:
        self._removals += [_Removal(at, kind, spi, reason, cause) for kind, spi in sas]

    def _delete(self, out: _Collector, removals: Iterable[_Removal]) -> list[str]:
        """Remove SAs a push said to delete; the causes of those that were still there."""
        causes: list[str] = []
        for removal in removals:
            if self._remove(removal.kind, removal.spi):
                out.events.append(SaDeactivated(self.group_id, removal.kind, removal.spi, removal.reason))
                if removal.cause not in causes:
                    causes.append(removal.cause)
        return causes

    def _remove(self, kind: str, spi: bytes) -> bool:
        if kind == "TEK":
            return self.sadb.delete_tek(self.group_id, spi)
        group = self.group
        if group is not None and group.kek is not None and group.kek.spi == spi:
            self.sadb.put(replace(group, kek=None))
        known = spi in self.receiver.rekey_sas
        self._drop_kek(spi)
        return known

    def _drop_kek(self, spi: bytes) -> None:
        self.receiver.remove(spi)
        self._kek_ends.pop(spi, None)
        self._replaced_keks.pop(spi, None)
        self._points.pop(spi, None)

    def _check_keys(self, now: float, causes: list[str]) -> None:
        """After deletes: re-register at once if the group lost its KEK or its last TEK (seed, removal)."""
        group = self.group
        if not causes or group is None:
            return
        lost_kek = self._kek_expected and group.kek is None
        permits = any(r.action is PolicyAction.PERMIT for r in group.rules)
        if lost_kek or (permits and not group.teks):
            self._force(now, "; ".join(causes), removal=True)

    def _force(self, now: float, cause: str, *, removal: bool = False) -> None:
        """Re-register at once; with ``removal``, a refusal then means the member was removed."""
        if self._forced is None:
            self._forced = _Pull(now, cause)
        if removal and self._cause is None:
            self._cause = cause

    # -- pull rekey ---------------------------------------------------------------------------

    def _draw(self, spi: bytes, expires_at: float, now: float) -> None:
        """The re-registration point of an SA seen for the first time: 7 % to 5 % of its life before its end."""
        if spi in self._points:
            return
        low, high = PULL_WINDOW
        share = low + (high - low) * int.from_bytes(self._rng(8), "big") / (1 << 64)
        lifetime = expires_at - now
        self._points[spi] = _PullPoint(expires_at - share * lifetime, lifetime)

    def _output(self, out: _Collector) -> RekeyOutput:
        return RekeyOutput(tuple(out.datagrams), tuple(out.events), self.next_deadline)


def _dtd_in_force(group: GroupSas) -> float:
    """The group's DTD before a push; none at all counts as forever (any DTD is then shorter)."""
    dtd = group.gap.deactivation_delay if group.gap is not None else None
    return float("inf") if dtd is None else dtd


def _with_activations(group: GroupSas, activations: Mapping[bytes, float]) -> RolloverGroupSas:
    return RolloverGroupSas(
        group.group_id,
        group.rules,
        group.teks,
        group.kek,
        group.gap,
        group.sender_ids,
        MappingProxyType(dict(activations)),
    )
