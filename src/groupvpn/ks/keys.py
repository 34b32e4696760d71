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
starts when it becomes active.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from ipaddress import IPv4Network, IPv6Network, ip_network

from ..crypto.cbc import kek_cipher
from ..crypto.gdoi import Kek
from ..crypto.sig import DEFAULT_RSA_BITS, SignatureScheme, SigningKey, signature_scheme
from ..crypto.suites import EspSuite, esp_suite
from ..wire.numbers import AuthAlgorithm, EspTransform, KekAlgorithm, SigAlgorithm, SigHashAlgorithm
from ..wire.gdoi import KEK_SPI_SIZE
from .store import (
    KeyState,
    KeyStore,
    KeyTimes,
    SpiReused,
    StoredKek,
    StoredTek,
)

DEFAULT_REKEY_FRACTION = 0.1  # rekey when this share of a key's lifetime remains
MAX_LIFETIME = 0xFFFFFFFF  # KEK_KEY_LIFETIME and SA Life Duration are 4 octets here
SPI_DRAWS = 64  # SPIs drawn before giving up; only a broken rng or a full space gets there

Network = IPv4Network | IPv6Network
ANY_V4 = ip_network("0.0.0.0/0")


def _check_lifetime(lifetime: int) -> None:
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValueError(f"lifetime must be 1..{MAX_LIFETIME} seconds, got {lifetime}")


@dataclass(frozen=True)
class KekConfig:
    """The group's rekey SA: KEK cipher and lifetime, and how PUSH messages are signed.

    Defaults are RFC 6407's MUSTs: AES-128-CBC, RSA 2048 with SHA-256 (§5.3.2, §5.3.5-6).
    """

    lifetime: int
    algorithm: KekAlgorithm = KekAlgorithm.AES
    key_bits: int = 128
    sig_algorithm: SigAlgorithm = SigAlgorithm.RSA
    sig_hash: SigHashAlgorithm = SigHashAlgorithm.SHA256
    rsa_bits: int = DEFAULT_RSA_BITS

    def __post_init__(self) -> None:
        _check_lifetime(self.lifetime)
        kek_cipher(self.algorithm).key_size(self.key_bits)
        self.scheme  # noqa: B018 -- an unusable combination fails here, not at the first PUSH

    @property
    def scheme(self) -> SignatureScheme:
        return signature_scheme(self.sig_algorithm, self.sig_hash)


@dataclass(frozen=True)
class TekConfig:
    """One SA of the group: its ESP suite, lifetime and traffic selectors (one SA TEK)."""

    name: str
    transform: EspTransform
    key_bits: int | None
    auth: AuthAlgorithm | None
    lifetime: int
    source: Network = ANY_V4
    destination: Network = ANY_V4
    protocol: int = 0
    source_port: int = 0
    destination_port: int = 0

    def __post_init__(self) -> None:
        _check_lifetime(self.lifetime)
        self.suite  # noqa: B018 -- an unsupported suite fails here, not at the first PULL

    @property
    def suite(self) -> EspSuite:
        return esp_suite(self.transform, self.key_bits, self.auth)


@dataclass(frozen=True)
class GroupConfig:
    """What the key server needs to know about one group to key it."""

    group_id: int
    kek: KekConfig
    teks: tuple[TekConfig, ...]
    rekey_fraction: float = DEFAULT_REKEY_FRACTION

    def __post_init__(self) -> None:
        if not 0 <= self.group_id <= 0xFFFFFFFF:
            raise ValueError(f"group ID must fit in 4 octets (ID_KEY_ID), got {self.group_id}")
        if not 0 < self.rekey_fraction < 1:
            raise ValueError(f"rekey fraction must be between 0 and 1, got {self.rekey_fraction}")
        names = [tek.name for tek in self.teks]
        if len(set(names)) != len(names):
            raise ValueError(f"SA names must be unique within a group: {names}")


@dataclass(frozen=True)
class KeySet:
    """A KEK and TEKs that go out together: the current set, or the pending one of a rekey."""

    kek: StoredKek | None
    teks: tuple[StoredTek, ...]


class NoFreeSpi(Exception):
    """Every SPI drawn was reserved or already issued."""


Key = StoredKek | StoredTek
K = TypeVar("K", StoredKek, StoredTek)


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

    def signing_key(self, now: float) -> SigningKey:
        """The group's GROUPKEY-PUSH signing key, generated and stored on first use."""
        if self._signing_key is None:
            pem = self._store.signing_key_pem(self.group_id)
            if pem is None:
                key = SigningKey.generate(self.config.kek.sig_algorithm, self.config.kek.rsa_bits)
                self._store.create_group(self.group_id, key.to_pem(), now)
            else:
                key = SigningKey.from_pem(pem)
                # A stored key that cannot sign this group's PUSHes fails now, not at the first rekey.
                key.sign(self.config.kek.scheme, b"")
            self._signing_key = key
        return self._signing_key

    def ensure_current(self, now: float) -> KeySet:
        """The active KEK and TEKs, first replacing any slot that is empty or expired.

        A pending key is promoted before a new one is made: it may already
        have gone out in a PUSH that the key server crashed after sending.
        """
        self.signing_key(now)
        for active, pending, generate in self._slots():
            if active is None or active.times.remaining(now) <= 0:
                self._activate(pending or generate(now), now)
        return self._keys(KeyState.ACTIVE)

    def next_rekey_time(self) -> float | None:
        """When the first active key reaches its rekey point; None before ``ensure_current``.

        The rekey point is activation + (1 - rekey_fraction) * lifetime.
        """
        keep = 1 - self.config.rekey_fraction
        times = [
            active.times.activated_at + keep * active.times.lifetime
            for active, _, _ in self._slots()
            if active is not None and active.times.activated_at is not None
        ]
        return min(times, default=None)

    def prepare_rekey(self, now: float, *, force: bool = False) -> KeySet:
        """The pending keys of the next rekey, generating them for every slot that is due.

        Idempotent: a slot's existing pending key is returned, never replaced,
        so after a crash between generating and pushing the same keys go out.
        ``force`` makes every slot due (e.g. a KEK change after a member is removed).
        """
        self.ensure_current(now)
        keep = 1 - self.config.rekey_fraction
        for active, pending, generate in self._slots():
            assert active is not None and active.times.activated_at is not None
            due = force or now >= active.times.activated_at + keep * active.times.lifetime
            if pending is None and due:
                generate(now)
        return self._keys(KeyState.PENDING)

    def activate(self, keys: KeySet, now: float) -> None:
        """Make these pending keys current, retire what they replace, forget expired old keys."""
        for key in (keys.kek, *keys.teks):
            if key is not None:
                self._activate(key, now)
        self._store.forget_retired(self.group_id, now)

    # -- slots -------------------------------------------------------------------------------

    def _slots(self) -> list[tuple[Key | None, Key | None, Callable[[float], Key]]]:
        """(active, pending, generator) for the KEK and for each configured SA."""
        keks = self._store.keks(self.group_id)
        teks = self._store.teks(self.group_id)
        slots: list[tuple[Key | None, Key | None, Callable[[float], Key]]] = [
            (_in(keks, KeyState.ACTIVE), _in(keks, KeyState.PENDING), self._new_kek)
        ]
        for tek in self.config.teks:
            mine = [t for t in teks if t.name == tek.name]
            slots.append(
                (
                    _in(mine, KeyState.ACTIVE),
                    _in(mine, KeyState.PENDING),
                    lambda now, tek=tek: self._new_tek(tek, now),
                )
            )
        return slots

    def _keys(self, state: KeyState) -> KeySet:
        names = [tek.name for tek in self.config.teks]
        teks = {t.name: t for t in self._store.teks(self.group_id, state)}
        return KeySet(
            _in(self._store.keks(self.group_id), state),
            tuple(teks[name] for name in names if name in teks),
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
        suite = config.suite
        keys = suite.generate_keys()
        times = KeyTimes(config.lifetime, now)
        return self._issue(
            lambda: StoredTek(
                self.group_id, config.name, int.from_bytes(self._rng(4), "big"), suite, keys, times
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
