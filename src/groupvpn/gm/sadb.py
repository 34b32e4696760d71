"""The member's SA database: per group, the rekey SA (KEK), the TEKs and the policy rules.

The control plane writes it (a registration installs a group's whole
policy; later, pushes add and delete SAs by SPI); the data plane reads it
through ``snapshot(now)``: an immutable view saying, for every rule of
every group, which TEK encrypts its traffic at that moment, and which
TEKs decrypt.  Every write bumps ``version``; a snapshot also says until
when it stays true without a write (``valid_until``: the next expiry or
encryption handover), so a reader re-reads on a new version or at that
time and never has to guess.

Which TEK encrypts (seed, "Rekeying a Group Member"): after a new key
arrives "both the old key and the new key can be used for decryption.
However, the new key is not used for encryption until 30 seconds of
lifetime of the old key is remaining."  Among the live TEKs covering a
rule, the one expiring first encrypts until ``HANDOVER`` seconds before
its end, then the next; the longest-lived one encrypts to its end.  Every
live TEK decrypts.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from ..crypto.suites import EspKeys, EspSuite
from ..gdoi.policy import GroupAssociatedPolicy, GroupPolicy, KekKeys, KekPolicy, SenderIds, TekPolicy, TrafficSelector
from ..wire.numbers import PolicyAction

HANDOVER = 30.0  # seconds of an old TEK's life left when a newer one takes over encryption


@dataclass(frozen=True, slots=True)
class KekSa:
    """The group's rekey SA: the KEK opening GROUPKEY-PUSH messages and the key server's verifying key.

    ``seq`` is the highest push sequence number accepted so far (PULL
    message 4 seeds it); only greater ones may be accepted (RFC 6407 §3.2).
    """

    policy: KekPolicy
    keys: KekKeys
    seq: int
    installed_at: float
    expires_at: float

    @property
    def spi(self) -> bytes:
        return self.policy.spi

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


@dataclass(frozen=True, slots=True)
class TekSa:
    """One ESP SA of the group: keys, the selectors it protects, its lifetime (``policy`` holds the rest)."""

    policy: TekPolicy
    selectors: tuple[TrafficSelector, ...]
    keys: EspKeys
    installed_at: float
    expires_at: float

    @property
    def spi(self) -> bytes:
        return self.policy.spi

    @property
    def suite(self) -> EspSuite:
        assert self.policy.suite is not None  # only permit entries become SAs
        return self.policy.suite

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of a group's policy, in the key server's order: PERMIT encrypts, DENY passes in clear.

    ``name`` is stable while the selector and action stay, so a reader
    can keep per-rule state across rekeys.
    """

    name: str
    selector: TrafficSelector
    action: PolicyAction


def _rules(teks: Iterable[TekPolicy]) -> tuple[Rule, ...]:
    """One rule per distinct (selector, action), first occurrence first."""
    seen: dict[tuple[TrafficSelector, PolicyAction], Rule] = {}
    for tek in teks:
        key = (tek.selector, tek.action)
        if key not in seen:
            name = str(tek.selector) if tek.permits else f"deny {tek.selector}"
            seen[key] = Rule(name, tek.selector, tek.action)
    return tuple(seen.values())


@dataclass(frozen=True)
class GroupSas:
    """Everything installed for one group; replaced whole on every change, so it can be shared freely."""

    group_id: int
    rules: tuple[Rule, ...]
    teks: tuple[TekSa, ...]  # ordered by expiry, soonest first
    kek: KekSa | None = None
    gap: GroupAssociatedPolicy | None = None
    sender_ids: SenderIds | None = None

    def tek(self, spi: bytes) -> TekSa | None:
        return next((t for t in self.teks if t.spi == spi), None)

    def encrypting(self, rule: Rule, now: float) -> TekSa | None:
        """The TEK that encrypts ``rule``'s traffic at ``now`` (None for deny rules or without a live TEK)."""
        if rule.action is not PolicyAction.PERMIT:
            return None
        live = [t for t in self.teks if rule.selector in t.selectors and t.expires_at > now]
        for tek in live[:-1]:
            if tek.expires_at - HANDOVER > now:
                return tek
        return live[-1] if live else None

    def changes_after(self, now: float) -> float | None:
        """When ``encrypting`` or the live set next changes without a write."""
        times = [t.expires_at for t in self.teks if t.expires_at > now]
        times += [t.expires_at - HANDOVER for t in self.teks if t.expires_at - HANDOVER > now]
        if self.kek is not None and self.kek.expires_at > now:
            times.append(self.kek.expires_at)
        return min(times, default=None)


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    """A group as the data plane uses it at one moment.

    ``encrypt`` pairs each rule (in order) with the TEK encrypting it;
    ``decrypt`` holds every live TEK by SPI.
    """

    group_id: int
    encrypt: tuple[tuple[Rule, TekSa | None], ...]
    decrypt: Mapping[bytes, TekSa]
    anti_replay_window: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole database at ``taken_at``: true until ``valid_until`` or until ``version`` moves on."""

    version: int
    taken_at: float
    valid_until: float | None
    groups: Mapping[int, GroupSnapshot]


@dataclass(frozen=True, slots=True)
class Expired:
    """An SA that reached its lifetime and was removed; ``kind`` is "TEK" or "KEK"."""

    group_id: int
    kind: str
    spi: bytes


class SaDatabase:
    """The SAs of every group this member belongs to, keyed by group ID."""

    def __init__(self) -> None:
        self.version = 0
        self._groups: dict[int, GroupSas] = {}

    @property
    def groups(self) -> Mapping[int, GroupSas]:
        return MappingProxyType(self._groups)

    def _put(self, group: GroupSas | None, group_id: int) -> None:
        if group is None:
            del self._groups[group_id]
        else:
            self._groups[group_id] = group
        self.version += 1

    def install(self, policy: GroupPolicy, seq: int | None, now: float) -> GroupSas:
        """A registration's policy replaces the group's: SAs it leaves out are deleted (seed).

        A TEK or KEK the group already holds under the same SPI and keys
        keeps its install time and gets the delivered (remaining) lifetime;
        the rekey SA keeps the higher of its push sequence number and ``seq``.
        """
        old = self._groups.get(policy.group_id)
        keys = {k.spi: k.material for k in policy.tek_keys}
        by_spi: dict[bytes, list[TekPolicy]] = {}
        for tek in policy.sa.permits:
            by_spi.setdefault(tek.spi, []).append(tek)
        teks = []
        for spi, entries in by_spi.items():
            first = entries[0]
            kept = old.tek(spi) if old is not None else None
            since = kept.installed_at if kept is not None and kept.keys == keys[spi] else now
            teks.append(TekSa(first, tuple(t.selector for t in entries), keys[spi], since, now + first.lifetime))
        kek = None
        if policy.kek is not None and policy.kek_keys is not None:
            kek = KekSa(policy.kek, policy.kek_keys, seq or 0, now, now + policy.kek.lifetime)
            previous = old.kek if old is not None else None
            if previous is not None and previous.spi == kek.spi and previous.keys.kek == kek.keys.kek:
                kek = replace(kek, seq=max(kek.seq, previous.seq), installed_at=previous.installed_at)
        group = GroupSas(
            policy.group_id,
            _rules(policy.teks),
            tuple(sorted(teks, key=lambda t: t.expires_at)),
            kek,
            policy.gap,
            policy.sender_ids,
        )
        self._put(group, policy.group_id)
        return group

    def put(self, group: GroupSas) -> None:
        """Replace one group whole: how a push adds TEKs, replaces the KEK or changes the GAP (``gm.rekey``)."""
        self._put(group, group.group_id)

    def delete_tek(self, group_id: int, spi: bytes) -> bool:
        """Remove one TEK; False when the group has none by that SPI."""
        group = self._groups.get(group_id)
        if group is None or group.tek(spi) is None:
            return False
        self._put(replace(group, teks=tuple(t for t in group.teks if t.spi != spi)), group_id)
        return True

    def clear(self, group_id: int) -> bool:
        """Forget everything of one group; False when nothing was installed."""
        if group_id not in self._groups:
            return False
        self._put(None, group_id)
        return True

    def _selected(self, group_ids: Collection[int] | None) -> list[GroupSas]:
        return [g for i, g in self._groups.items() if group_ids is None or i in group_ids]

    def next_expiry(self, group_ids: Collection[int] | None = None) -> float | None:
        """When the first SA (of ``group_ids``, default all groups) reaches its lifetime."""
        groups = self._selected(group_ids)
        times = [t.expires_at for g in groups for t in g.teks]
        times += [g.kek.expires_at for g in groups if g.kek is not None]
        return min(times, default=None)

    def expire(self, now: float, group_ids: Collection[int] | None = None) -> tuple[Expired, ...]:
        """Remove every SA (of ``group_ids``) whose lifetime is over at ``now``; the groups' rules stay.

        Each member core expires its own groups, so each reports its own.
        """
        gone: list[Expired] = []
        for group in self._selected(group_ids):
            group_id = group.group_id
            dead = [t for t in group.teks if t.expires_at <= now]
            kek_dead = group.kek is not None and group.kek.expires_at <= now
            if not dead and not kek_dead:
                continue
            gone += [Expired(group_id, "TEK", t.spi) for t in dead]
            if kek_dead:
                assert group.kek is not None
                gone.append(Expired(group_id, "KEK", group.kek.spi))
            live = tuple(t for t in group.teks if t.expires_at > now)
            self._put(replace(group, teks=live, kek=None if kek_dead else group.kek), group_id)
        return tuple(gone)

    def snapshot(self, now: float) -> Snapshot:
        groups = {}
        for group_id, group in self._groups.items():
            live = {t.spi: t for t in group.teks if t.expires_at > now}
            window = group.gap.anti_replay_window if group.gap is not None else None
            encrypt = tuple((rule, group.encrypting(rule, now)) for rule in group.rules)
            groups[group_id] = GroupSnapshot(group_id, encrypt, MappingProxyType(live), window)
        times = [t for g in self._groups.values() if (t := g.changes_after(now)) is not None]
        return Snapshot(self.version, now, min(times, default=None), MappingProxyType(groups))
