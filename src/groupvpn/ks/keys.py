"""Key lifecycle of one group on the key server: current keys, the rekey schedule, rollover.

Sans-IO: every method takes ``now`` (seconds since the epoch, from the
caller's clock) and SPIs come from an injected ``rng``; the only side
effects go to the ``KeyStore``, and every key is committed there before it
is returned, so a restarted key server serves the same keys and never
issues an SPI twice.  Key material itself always comes from the crypto
layer's CSPRNG.

A group has one KEK slot and one TEK slot per SA of its configuration.
Each slot holds at most one active key (served in PULL replies) and one
pending key (generated for the next GROUPKEY-PUSH).  A key's lifetime
starts when it becomes active.  The keys leave as a ``GroupPolicy`` (the
``gdoi.policy`` model), whose constructors also vet the configuration.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..crypto.cbc import kek_cipher
from ..crypto.errors import CryptoError
from ..crypto.gdoi import Kek
from ..crypto.sig import DEFAULT_RSA_BITS, SigningKey, signature_scheme
from ..crypto.suites import EspSuite
from ..gdoi.policy import (
    MIN_LIFETIME,
    AckRequest,
    Endpoint,
    GroupAssociatedPolicy,
    GroupPolicy,
    KekKeys,
    KekPolicy,
    SaPolicy,
    TekKeys,
    TekPolicy,
    TrafficSelector,
)
from ..wire.gdoi import KEK_SPI_SIZE, TEK_SPI_SIZE
from ..wire.numbers import AddressPreservation, KekAlgorithm, SaDirection, SigAlgorithm, SigHashAlgorithm
from .store import KeyState, KeyStore, KeyTimes, SpiReused, StoredKek, StoredTek

DEFAULT_REKEY_FRACTION = 0.1  # rekey when this share of a key's lifetime remains
SPI_DRAWS = 64  # SPIs drawn before giving up; only a broken rng or a nearly full space gets there

# Stand-in SPIs for vetting a configuration through the policy constructors.
_PROBE_KEK_SPI = b"\x01" * KEK_SPI_SIZE
_FIRST_TEK_SPI = 256


@dataclass(frozen=True)
class KekConfig:
    """The group's rekey SA: KEK cipher and lifetime, PUSH addressing and signing, acks.

    Defaults are RFC 6407's MUSTs: AES-128-CBC, RSA 2048 with SHA-256 (§5.3.2, §5.3.5-6).
    ``source`` is the key server, ``destination`` where pushes go.
    """

    lifetime: int
    source: Endpoint
    destination: Endpoint
    algorithm: KekAlgorithm = KekAlgorithm.AES
    key_bits: int | None = 128
    sig_algorithm: SigAlgorithm = SigAlgorithm.RSA
    sig_hash: SigHashAlgorithm | None = SigHashAlgorithm.SHA256
    rsa_bits: int = DEFAULT_RSA_BITS
    ack: AckRequest | None = None

    def __post_init__(self) -> None:
        try:
            self.key_size
        except CryptoError as err:
            raise ValueError(f"KEK: {err}") from None

    @property
    def key_size(self) -> int:
        """KEK key octets."""
        return kek_cipher(self.algorithm).key_size(self.key_bits)

    def fits(self, kek: Kek) -> bool:
        """Whether an existing KEK is of the configured cipher and size."""
        return kek.algorithm == self.algorithm and len(kek.key) == self.key_size

    def policy(
        self,
        spi: bytes,
        algorithm: KekAlgorithm,
        key_bits: int | None,
        lifetime: int,
        sig_key_bits: int | None,
    ) -> KekPolicy:
        """The SA KEK for a KEK of ``algorithm`` / ``key_bits`` (it may predate a config change)."""
        return KekPolicy(
            spi,
            algorithm,
            key_bits,
            lifetime,
            self.sig_algorithm,
            self.sig_hash,
            self.source,
            self.destination,
            sig_key_bits,
            self.ack,
        )


@dataclass(frozen=True)
class TekConfig:
    """One SA of the group: a TEK and the selectors it covers (two only as mirror images)."""

    name: str
    suite: EspSuite
    lifetime: int
    selectors: tuple[TrafficSelector, ...]
    lifetime_kilobytes: int | None = None
    preservation: AddressPreservation = AddressPreservation.SOURCE_AND_DESTINATION
    direction: SaDirection = SaDirection.SYMMETRIC

    def policies(self, spi: bytes, suite: EspSuite, lifetime: int) -> tuple[TekPolicy, ...]:
        """One SA TEK per selector, all keyed by the TEK under ``spi``."""
        return tuple(
            TekPolicy(
                spi, selector, suite, lifetime, self.lifetime_kilobytes, self.preservation, self.direction
            )
            for selector in self.selectors
        )


@dataclass(frozen=True)
class GroupConfig:
    """What the key server needs to know about one group to key it.

    ``deny`` lists selectors the group leaves unencrypted (deny entries);
    ``gap`` is sent with every SA payload.
    """

    group_id: int
    kek: KekConfig
    teks: tuple[TekConfig, ...]
    gap: GroupAssociatedPolicy | None = None
    deny: tuple[TrafficSelector, ...] = ()
    rekey_fraction: float = DEFAULT_REKEY_FRACTION

    def __post_init__(self) -> None:
        if not 0 < self.rekey_fraction < 1:
            raise ValueError(f"rekey fraction must be between 0 and 1, got {self.rekey_fraction}")
        names = [tek.name for tek in self.teks]
        if len(set(names)) != len(names):
            raise ValueError(f"SA names must be unique within a group: {names}")
        if any(not tek.selectors for tek in self.teks):
            raise ValueError("every SA needs at least one selector")
        if not 0 <= self.group_id <= 0xFFFFFFFF:
            raise ValueError(f"group ID {self.group_id} does not fit 4 octets (ID_KEY_ID)")
        # An unusable combination fails here, not in a PULL: the policy model's
        # constructors hold every rule a member checks (lifetimes, suites, pairing).
        teks = tuple(
            policy
            for i, tek in enumerate(self.teks)
            for policy in tek.policies(
                (_FIRST_TEK_SPI + i).to_bytes(TEK_SPI_SIZE, "big"), tek.suite, tek.lifetime
            )
        )
        kek = self.kek.policy(
            _PROBE_KEK_SPI, self.kek.algorithm, self.kek.key_bits, self.kek.lifetime, None
        )
        SaPolicy(teks + self.deny_policies, kek, self.gap)

    @property
    def deny_policies(self) -> tuple[TekPolicy, ...]:
        return tuple(TekPolicy.deny(selector) for selector in self.deny)


@dataclass(frozen=True)
class KeySet:
    """A KEK and TEKs that go out together: the current set, or the pending one of a rekey."""

    kek: StoredKek | None
    teks: tuple[StoredTek, ...]


class NoFreeSpi(Exception):
    """Every SPI drawn was reserved or already issued."""


Key = StoredKek | StoredTek
K = TypeVar("K", StoredKek, StoredTek)


@dataclass(frozen=True)
class _Slot:
    """The live keys of one slot and how to make its next key."""

    active: Key | None
    pending: Key | None
    generate: Callable[[float], Key]
    stale: bool  # the active key no longer matches the configuration: rekey at once


def _seconds_left(times: KeyTimes, now: float) -> int:
    """A lifetime attribute for a key: what remains of it, so members expire it with us.

    Never below the policy minimum; the rekey point comes well before that.
    """
    return max(MIN_LIFETIME, math.ceil(times.remaining(now)))


class GroupKeys:
    """The keys of one group, over a ``KeyStore`` that may hold other groups too."""

    def __init__(
        self, store: KeyStore, config: GroupConfig, rng: Callable[[int], bytes] = os.urandom
    ) -> None:
        self._store = store
        self.config = config
        self._rng = rng
        self._signing_key: SigningKey | None = None

    @property
    def group_id(self) -> int:
        return self.config.group_id

    @property
    def store(self) -> KeyStore:
        return self._store

    def signing_key(self, now: float) -> SigningKey:
        """The group's GROUPKEY-PUSH signing key, generated and stored on first use."""
        if self._signing_key is None:
            kek = self.config.kek
            pem = self._store.signing_key_pem(self.group_id)
            if pem is None:
                key = SigningKey.generate(kek.sig_algorithm, kek.rsa_bits)
                self._store.create_group(self.group_id, key.to_pem(), now)
            else:
                key = SigningKey.from_pem(pem)
                # A stored key that cannot sign this group's PUSHes fails now, not at the first rekey.
                key.sign(signature_scheme(kek.sig_algorithm, kek.sig_hash), b"")
            self._signing_key = key
        return self._signing_key

    def ensure_current(self, now: float) -> KeySet:
        """The active KEK and TEKs, first filling any slot that is empty or expired.

        A pending key is promoted before a new one is made: it may already
        have gone out in a PUSH that the key server crashed after sending.
        """
        self.signing_key(now)
        for slot in self._slots():
            if slot.active is None or slot.active.times.remaining(now) <= 0:
                self._activate(slot.pending or slot.generate(now), now)
        return self._keys(KeyState.ACTIVE)

    def current_policy(self, now: float) -> GroupPolicy:
        """The group policy with the current keys, for GROUPKEY-PULL messages 2 and 4."""
        return self.policy(self.ensure_current(now), now)

    def policy(self, keys: KeySet, now: float) -> GroupPolicy:
        """The policy delivering ``keys`` (current or pending) with their remaining lifetimes.

        The GAP always goes along; deny entries go with TEKs, so a KEK-only
        rekey does not restate the traffic policy.
        """
        public = self.signing_key(now).public
        configs = {tek.name: tek for tek in self.config.teks}
        teks = tuple(
            policy
            for tek in keys.teks
            for policy in configs[tek.name].policies(
                tek.spi.to_bytes(TEK_SPI_SIZE, "big"), tek.suite, _seconds_left(tek.times, now)
            )
        )
        if keys.teks:
            teks += self.config.deny_policies
        kek = None
        if keys.kek is not None:
            lifetime = _seconds_left(keys.kek.times, now)
            stored = keys.kek.kek
            kek = self.config.kek.policy(
                keys.kek.spi, stored.algorithm, len(stored.key) * 8, lifetime, public.key_bits
            )
        return GroupPolicy(
            self.group_id,
            SaPolicy(teks, kek, self.config.gap),
            tuple(TekKeys(t.spi.to_bytes(TEK_SPI_SIZE, "big"), t.keys) for t in keys.teks),
            None if keys.kek is None else KekKeys(keys.kek.kek, public),
        )

    def next_rekey_time(self) -> float | None:
        """When the first active key reaches its rekey point; None before ``ensure_current``.

        The rekey point is activation + (1 - rekey_fraction) * lifetime, or
        activation itself for a key the configuration has since changed.  A
        slot holding a pending key is due since that key was made: it has
        not gone out yet (a crash came between generating and pushing it).
        """
        return min(
            (
                slot.pending.times.created_at if slot.pending is not None else self._rekey_at(slot)
                for slot in self._slots()
                if slot.active is not None
            ),
            default=None,
        )

    def pending(self) -> KeySet:
        """The keys generated for the next rekey and not yet active."""
        return self._keys(KeyState.PENDING)

    def prepare_rekey(self, now: float, *, force: bool = False, force_kek: bool = False) -> KeySet:
        """The pending keys of the next rekey, generating them for every slot that is due.

        Idempotent: a slot's existing pending key is returned, never replaced,
        so after a crash between generating and pushing the same keys go out.
        ``force`` makes every slot due (e.g. a KEK change after a member is removed),
        ``force_kek`` the KEK slot (the SA KEK members hold no longer says what is configured).
        """
        self.ensure_current(now)
        for slot in self._slots():
            forced = force or (force_kek and isinstance(slot.active, StoredKek))
            if slot.pending is None and (forced or now >= self._rekey_at(slot)):
                slot.generate(now)
        return self.pending()

    def retire_unconfigured(self) -> tuple[StoredTek, ...]:
        """Retire the active TEKs of SAs no longer in the configuration; the ones retired."""
        names = {tek.name for tek in self.config.teks}
        gone = tuple(t for t in self._store.teks(self.group_id, KeyState.ACTIVE) if t.name not in names)
        for tek in gone:
            self._store.retire_tek(tek.spi)
        return gone

    def activate(self, keys: KeySet, now: float) -> None:
        """Make these pending keys current, retire what they replace, forget expired old keys."""
        for key in (keys.kek, *keys.teks):
            if key is not None:
                self._activate(key, now)
        self._store.forget_retired(self.group_id, now)

    # -- slots -------------------------------------------------------------------------------

    def _slots(self) -> list[_Slot]:
        """The KEK slot, then one slot per configured SA."""
        keks = self._store.keks(self.group_id)
        active_kek = _in(keks, KeyState.ACTIVE)
        slots = [
            _Slot(
                active_kek,
                _in(keks, KeyState.PENDING),
                self._new_kek,
                active_kek is not None and not self.config.kek.fits(active_kek.kek),
            )
        ]
        teks = self._store.teks(self.group_id)
        for config in self.config.teks:
            mine = [t for t in teks if t.name == config.name]
            active = _in(mine, KeyState.ACTIVE)
            slots.append(
                _Slot(
                    active,
                    _in(mine, KeyState.PENDING),
                    lambda now, config=config: self._new_tek(config, now),
                    active is not None and active.suite != config.suite,
                )
            )
        return slots

    def _rekey_at(self, slot: _Slot) -> float:
        assert slot.active is not None and slot.active.times.activated_at is not None
        times = slot.active.times
        if slot.stale:
            return times.activated_at
        return times.activated_at + (1 - self.config.rekey_fraction) * times.lifetime

    def _keys(self, state: KeyState) -> KeySet:
        teks = {t.name: t for t in self._store.teks(self.group_id, state)}
        return KeySet(
            _in(self._store.keks(self.group_id), state),
            tuple(teks[c.name] for c in self.config.teks if c.name in teks),
        )

    def _activate(self, key: Key, now: float) -> None:
        if isinstance(key, StoredKek):
            self._store.activate_kek(key.spi, now)
        else:
            self._store.activate_tek(key.spi, now)

    def _new_kek(self, now: float) -> StoredKek:
        config = self.config.kek
        kek = Kek.generate(config.algorithm, config.key_bits)
        times = KeyTimes(config.lifetime, now)
        return self._issue(
            lambda: StoredKek(self.group_id, self._rng(KEK_SPI_SIZE), kek, times), self._store.add_kek
        )

    def _new_tek(self, config: TekConfig, now: float) -> StoredTek:
        keys = config.suite.generate_keys()
        times = KeyTimes(config.lifetime, now)
        return self._issue(
            lambda: StoredTek(
                self.group_id,
                config.name,
                int.from_bytes(self._rng(TEK_SPI_SIZE), "big"),
                config.suite,
                keys,
                times,
            ),
            self._store.add_tek,
        )

    def _issue(self, draw: Callable[[], K], add: Callable[[K], None]) -> K:
        """Draw SPIs until one is legal and unused, and store the key under it."""
        for _ in range(SPI_DRAWS):
            try:
                key = draw()
            except ValueError:  # a reserved SPI (TEK 0-255, a zero KEK cookie half)
                continue
            try:
                add(key)
            except SpiReused:
                continue
            return key
        raise NoFreeSpi(f"no usable SPI in {SPI_DRAWS} draws for group {self.group_id}")


def _in(keys: list[K], state: KeyState) -> K | None:
    return next((key for key in keys if key.times.state is state), None)
