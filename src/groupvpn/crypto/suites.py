"""ESP cipher suites for the data plane (RFC 4303 §3.3-3.4; RFC 2403, 2404, 3602, 4106, 4868).

A suite is the static description of a TEK's algorithms; ``prepare`` turns
it and the TEK keys into a context that is built once per SA and then
reused for every packet.  Building a ``Cipher`` costs ~10 µs, several times
the rest of a packet (lab-notes/perf-baseline.md), so the CBC contexts keep
one long-lived encryptor and decryptor and steer their chaining instead:

* encrypt: the encryptor's state is the last ciphertext block C it emitted;
  XOR-ing ``C ^ IV`` into the first plaintext block makes it compute
  E(P1 ^ IV), i.e. plain CBC under the caller's IV.
* decrypt: feeding ``IV | ciphertext`` makes the IV the chaining value for
  the first real block; the first output block is discarded.

Contexts therefore carry state and are not thread-safe: one per worker.
ICVs cover SPI | Seq | IV | ciphertext (``header8`` is SPI | Seq) and are
compared in constant time; AES-GCM uses the same header as AAD.
"""

from __future__ import annotations

import hmac as _stdlib_hmac
import os
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..wire.numbers import AuthAlgorithm, EspTransform
from .cbc import AES, DES, TRIPLE_DES, BlockCipher
from .errors import CryptoError, IntegrityError, InvalidKey, IvSpaceExhausted, UnsupportedAlgorithm

HEADER_SIZE = 8  # SPI (4) | Sequence Number (4)
GCM_SALT_SIZE = 4
GCM_IV_SIZE = 8


@dataclass(frozen=True)
class Integrity:
    """An HMAC-based ESP integrity algorithm with its truncated ICV."""

    name: str
    hash: type[hashes.HashAlgorithm]
    key_size: int
    icv_size: int

    def keyed(self, key: bytes) -> Mac:
        if len(key) != self.key_size:
            raise InvalidKey(f"{self.name} key must be {self.key_size} octets, got {len(key)}")
        return Mac(hmac.HMAC(key, self.hash()), self.icv_size)


class Mac:
    """A pre-keyed HMAC; each ICV costs one ``copy()`` instead of a re-keying."""

    __slots__ = ("_keyed", "_size")

    def __init__(self, keyed: hmac.HMAC, size: int) -> None:
        self._keyed = keyed
        self._size = size

    def icv(self, data: bytes) -> bytes:
        """The truncated HMAC of ``data``: one ``update`` (each call into the binding costs ~0.3 µs)."""
        h = self._keyed.copy()
        h.update(data)
        return h.finalize()[: self._size]


INTEGRITY = {
    AuthAlgorithm.HMAC_MD5: Integrity("HMAC-MD5-96", hashes.MD5, 16, 12),
    AuthAlgorithm.HMAC_SHA1: Integrity("HMAC-SHA1-96", hashes.SHA1, 20, 12),
    AuthAlgorithm.HMAC_SHA2_256: Integrity("HMAC-SHA-256-128", hashes.SHA256, 32, 16),
    AuthAlgorithm.HMAC_SHA2_384: Integrity("HMAC-SHA-384-192", hashes.SHA384, 48, 24),
    AuthAlgorithm.HMAC_SHA2_512: Integrity("HMAC-SHA-512-256", hashes.SHA512, 64, 32),
}


class EspContext(Protocol):
    """Per-SA packet protection, prepared once."""

    def seal(self, header8: bytes, plaintext: bytes, iv: bytes) -> bytes:
        """IV | ciphertext | ICV for a plaintext that already carries the ESP trailer."""
        ...

    def seal_after(self, prefix: bytes, header8: bytes, plaintext: bytes, iv: bytes) -> bytes:
        """``prefix`` | IV | ciphertext | ICV in one copy; the arguments are trusted (the packet path builds them)."""
        ...

    def open(self, header8: bytes, body: bytes) -> bytes:
        """The plaintext (with ESP trailer) of IV | ciphertext | ICV; IntegrityError if forged."""
        ...

    def open_from(self, packet: bytes, offset: int) -> bytes:
        """``open`` of the ESP header and body at ``packet[offset:]``, without copying them out first."""
        ...


@dataclass(frozen=True)
class EspKeys:
    """TEK key material as the KD payload carries it (TEK_ALGORITHM_KEY, TEK_INTEGRITY_KEY)."""

    encryption: bytes = field(repr=False)
    integrity: bytes = field(repr=False, default=b"")


@dataclass(frozen=True)
class EspSuite:
    """One ESP transform / key length / authentication algorithm combination."""

    name: str
    transform: EspTransform
    key_bits: int
    auth: AuthAlgorithm | None
    iv_size: int
    icv_size: int
    alignment: int  # the padded plaintext is a multiple of this (RFC 4303 §2.4)
    encryption_key_size: int  # TEK_ALGORITHM_KEY octets, salt included for GCM
    integrity_key_size: int  # TEK_INTEGRITY_KEY octets, 0 for combined modes
    counter_mode: bool  # IV must be unique, not unpredictable (use CounterIvSource)
    cipher: BlockCipher | None = field(default=None, repr=False)
    integrity: Integrity | None = field(default=None, repr=False)

    def pad_length(self, payload_size: int) -> int:
        """Padding octets so that payload | padding | Pad Length | Next Header is aligned."""
        return -(payload_size + 2) % self.alignment

    def generate_keys(self) -> EspKeys:
        """Fresh random TEK keys of the right sizes (for the key server)."""
        return EspKeys(os.urandom(self.encryption_key_size), os.urandom(self.integrity_key_size))

    def prepare(self, keys: EspKeys) -> EspContext:
        if len(keys.encryption) != self.encryption_key_size:
            raise InvalidKey(
                f"{self.name} encryption key must be {self.encryption_key_size} octets, "
                f"got {len(keys.encryption)}"
            )
        if self.counter_mode:
            if keys.integrity:
                raise InvalidKey(f"{self.name} takes no integrity key")
            return GcmContext(keys.encryption, self.icv_size)
        assert self.cipher is not None and self.integrity is not None
        return CbcHmacContext(
            self.cipher, keys.encryption, self.integrity.keyed(keys.integrity), self.icv_size
        )


def _check_header(header8: bytes) -> None:
    if len(header8) != HEADER_SIZE:
        raise CryptoError(f"ESP header must be SPI | Seq ({HEADER_SIZE} octets), got {len(header8)}")


class CbcHmacContext:
    """CBC encryption + truncated HMAC on long-lived cipher contexts (see module docstring)."""

    __slots__ = ("_bs", "_icv", "_mac", "_encryptor", "_decryptor", "_chain")

    def __init__(self, cipher: BlockCipher, key: bytes, mac: Mac, icv_size: int) -> None:
        zero = bytes(cipher.block_size)
        self._bs = cipher.block_size
        self._icv = icv_size
        self._mac = mac
        self._encryptor = Cipher(cipher.algorithm(key), modes.CBC(zero)).encryptor()
        self._decryptor = Cipher(cipher.algorithm(key), modes.CBC(zero)).decryptor()
        self._chain = 0  # last ciphertext block the encryptor emitted, as an integer

    def seal(self, header8: bytes, plaintext: bytes, iv: bytes) -> bytes:
        _check_header(header8)
        bs = self._bs
        if len(iv) != bs:
            raise CryptoError(f"CBC IV must be {bs} octets, got {len(iv)}")
        if not plaintext or len(plaintext) % bs:
            raise CryptoError(
                f"padded plaintext of {len(plaintext)} octets is not a positive multiple of {bs}"
            )
        return self.seal_after(b"", header8, plaintext, iv)

    def seal_after(self, prefix: bytes, header8: bytes, plaintext: bytes, iv: bytes) -> bytes:
        bs = self._bs
        steer = self._chain ^ int.from_bytes(iv, "big")
        first = (int.from_bytes(plaintext[:bs], "big") ^ steer).to_bytes(bs, "big")
        ciphertext = self._encryptor.update(first + plaintext[bs:])
        self._chain = int.from_bytes(ciphertext[-bs:], "big")
        return b"".join((prefix, iv, ciphertext, self._mac.icv(b"".join((header8, iv, ciphertext)))))

    def open(self, header8: bytes, body: bytes) -> bytes:
        _check_header(header8)
        return self.open_from(header8 + body, 0)

    def open_from(self, packet: bytes, offset: int) -> bytes:
        bs, icv = self._bs, self._icv
        body = len(packet) - offset - HEADER_SIZE
        if body < 2 * bs + icv or (body - icv) % bs:
            raise CryptoError(
                f"ESP payload of {body} octets cannot be IV | whole blocks | {icv}-octet ICV"
            )
        end = len(packet) - icv
        if not _stdlib_hmac.compare_digest(self._mac.icv(packet[offset:end]), packet[end:]):
            raise IntegrityError("ESP ICV mismatch")
        return self._decryptor.update(packet[offset + HEADER_SIZE : end])[bs:]


class GcmContext:
    """AES-GCM ESP (RFC 4106): nonce = salt | 8-octet IV, AAD = SPI | Seq.

    ``AESGCM`` always produces a 16-octet tag; the 8- and 12-octet ICV
    variants send its prefix and verify through a per-packet GCM cipher that
    accepts short tags, which is slower but these variants are only MAY.
    """

    __slots__ = ("_aead", "_aes", "_salt", "_icv")

    def __init__(self, keymat: bytes, icv_size: int) -> None:
        key, self._salt = keymat[:-GCM_SALT_SIZE], keymat[-GCM_SALT_SIZE:]
        self._aead = AESGCM(key)
        self._aes = algorithms.AES(key)
        self._icv = icv_size

    def seal(self, header8: bytes, plaintext: bytes, iv: bytes) -> bytes:
        _check_header(header8)
        if len(iv) != GCM_IV_SIZE:
            raise CryptoError(f"GCM IV must be {GCM_IV_SIZE} octets, got {len(iv)}")
        return self.seal_after(b"", header8, plaintext, iv)

    def seal_after(self, prefix: bytes, header8: bytes, plaintext: bytes, iv: bytes) -> bytes:
        sealed = self._aead.encrypt(self._salt + iv, plaintext, header8)
        if self._icv != 16:
            sealed = sealed[: len(plaintext) + self._icv]
        return b"".join((prefix, iv, sealed))

    def open(self, header8: bytes, body: bytes) -> bytes:
        _check_header(header8)
        return self.open_from(header8 + body, 0)

    def open_from(self, packet: bytes, offset: int) -> bytes:
        start = offset + HEADER_SIZE + GCM_IV_SIZE  # of the ciphertext
        if len(packet) < start + self._icv:
            raise CryptoError(f"ESP payload of {len(packet) - offset - HEADER_SIZE} octets is shorter than IV and ICV")
        nonce = self._salt + packet[offset + HEADER_SIZE : start]
        header8 = packet[offset : offset + HEADER_SIZE]
        try:
            if self._icv == 16:
                return self._aead.decrypt(nonce, packet[start:], header8)
            decryptor = Cipher(self._aes, modes.GCM(nonce, packet[-self._icv :], min_tag_length=self._icv)).decryptor()
            decryptor.authenticate_additional_data(header8)
            return decryptor.update(packet[start : -self._icv]) + decryptor.finalize()
        except InvalidTag:
            raise IntegrityError("ESP AES-GCM tag mismatch") from None


def _cbc_suite(
    transform: EspTransform, cipher: BlockCipher, key_size: int, auth: AuthAlgorithm
) -> EspSuite:
    integrity = INTEGRITY[auth]
    return EspSuite(
        name=f"{cipher.name.replace('-CBC', '')}-{key_size * 8}-CBC/{integrity.name}",
        transform=transform,
        key_bits=key_size * 8,
        auth=auth,
        iv_size=cipher.block_size,
        icv_size=integrity.icv_size,
        alignment=max(cipher.block_size, 4),
        encryption_key_size=key_size,
        integrity_key_size=integrity.key_size,
        counter_mode=False,
        cipher=cipher,
        integrity=integrity,
    )


def _gcm_suite(transform: EspTransform, key_size: int, icv_size: int) -> EspSuite:
    return EspSuite(
        name=f"AES-{key_size * 8}-GCM-{icv_size}",
        transform=transform,
        key_bits=key_size * 8,
        auth=None,
        iv_size=GCM_IV_SIZE,
        icv_size=icv_size,
        alignment=4,
        encryption_key_size=key_size + GCM_SALT_SIZE,
        integrity_key_size=0,
        counter_mode=True,
    )


_CBC_CIPHERS = {EspTransform.DES: DES, EspTransform.TRIPLE_DES: TRIPLE_DES, EspTransform.AES_CBC: AES}
_GCM_ICV = {EspTransform.AES_GCM_8: 8, EspTransform.AES_GCM_12: 12, EspTransform.AES_GCM_16: 16}

SUITES: dict[tuple[EspTransform, int, AuthAlgorithm | None], EspSuite] = {
    (suite.transform, suite.key_bits, suite.auth): suite
    for suite in [
        _cbc_suite(transform, cipher, key_size, auth)
        for transform, cipher in _CBC_CIPHERS.items()
        for key_size in cipher.key_sizes
        for auth in INTEGRITY
    ]
    + [
        _gcm_suite(transform, key_size, icv)
        for transform, icv in _GCM_ICV.items()
        for key_size in AES.key_sizes
    ]
}


def esp_suite(transform: int, key_bits: int | None = None, auth: int | None = None) -> EspSuite:
    """The suite for SA TEK attributes: ESP transform ID, Key Length (bits), Authentication Algorithm.

    Key Length may be absent for the fixed-length DES and 3DES; AES needs
    it (RFC 3602 §5.3, RFC 4106 §8.1).  GCM takes no Authentication Algorithm.
    """
    try:
        transform = EspTransform(transform)
        cipher = _CBC_CIPHERS.get(transform, AES)
        bits = cipher.key_size(key_bits) * 8
        return SUITES[(transform, bits, None if auth is None else AuthAlgorithm(auth))]
    except (ValueError, KeyError, InvalidKey) as problem:
        detail = f" ({problem})" if isinstance(problem, InvalidKey) else ""
        raise UnsupportedAlgorithm(
            f"ESP transform {transform} with key length {key_bits} "
            f"and authentication algorithm {auth} is not supported{detail}"
        ) from None


class CbcIvSource:
    """Unpredictable CBC IVs (RFC 3602 §3): a per-SA counter encrypted under a random key.

    Cheaper than ``os.urandom`` and, unlike the previous ciphertext block,
    not known to an attacker before the packet is built (NIST SP 800-38A App. C).
    """

    __slots__ = ("_ecb", "_counter", "_size")

    def __init__(self, iv_size: int) -> None:
        self._ecb = Cipher(algorithms.AES(os.urandom(16)), modes.ECB()).encryptor()
        self._counter = 0
        self._size = iv_size

    def next(self) -> bytes:
        self._counter += 1
        return self._ecb.update(self._counter.to_bytes(16, "big"))[: self._size]


class CounterIvSource:
    """Unique 8-octet counter-mode IVs for group SAs: SID | SSIV (RFC 6054 §3).

    ``sid_bits`` is the group's NUMBER_OF_SID_BITS and ``sid`` this sender's
    value from the key server; without SIDs (single sender) use sid_bits=0.
    """

    __slots__ = ("_prefix", "_counter", "_limit")

    def __init__(self, sid: int = 0, sid_bits: int = 0) -> None:
        if not 0 <= sid_bits < 64 or not 0 <= sid < 1 << sid_bits:
            raise InvalidKey(f"SID {sid} does not fit in {sid_bits} bits")
        ssiv_bits = 64 - sid_bits
        self._prefix = sid << ssiv_bits
        self._counter = 0
        self._limit = (1 << ssiv_bits) - 1

    def next(self) -> bytes:
        if self._counter == self._limit:
            raise IvSpaceExhausted("sender-specific IV space exhausted; re-register for a new SID")
        self._counter += 1
        return (self._prefix | self._counter).to_bytes(GCM_IV_SIZE, "big")
