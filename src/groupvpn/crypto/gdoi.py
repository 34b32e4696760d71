"""GDOI computations: GROUPKEY-PULL hashes, the KEK, and RFC 8263 acknowledgement hashes.

The PULL hashes have the shape of every post-Phase-1 hash,
prf(SKEYID_a, M-ID | ...), but each message covers a different mix of
nonce bodies (``_b``) and complete payloads; the four named helpers take
keyword arguments so a caller cannot put them in the wrong order
(RFC 6407 §3.2, digest §8.2).  Complete payloads include their generic
header and never the encryption padding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum

from ..wire.numbers import HashAlgorithm, KekAckType, KekAlgorithm
from .cbc import kek_cipher
from .errors import InvalidKey, UnsupportedAlgorithm
from .ikev1 import exchange_hash
from .prf import prf


def pull_hash1(
    hash_: HashAlgorithm, skeyid_a: bytes, message_id: int, *, ni: bytes, id_: bytes
) -> bytes:
    """HASH(1) = prf(SKEYID_a, M-ID | Ni | ID): Nonce and ID payloads, headers included."""
    return exchange_hash(hash_, skeyid_a, message_id, ni, id_)


def pull_hash2(
    hash_: HashAlgorithm, skeyid_a: bytes, message_id: int, *, ni_b: bytes, nr: bytes, sa: bytes
) -> bytes:
    """HASH(2) = prf(SKEYID_a, M-ID | Ni_b | Nr | SA); SA includes its SAK/GAP/SAT payloads."""
    return exchange_hash(hash_, skeyid_a, message_id, ni_b, nr, sa)


def pull_hash3(
    hash_: HashAlgorithm,
    skeyid_a: bytes,
    message_id: int,
    *,
    ni_b: bytes,
    nr_b: bytes,
    gap: bytes = b"",
) -> bytes:
    """HASH(3) = prf(SKEYID_a, M-ID | Ni_b | Nr_b [| GAP]) -- no leading 0x00, unlike Quick Mode."""
    return exchange_hash(hash_, skeyid_a, message_id, ni_b, nr_b, gap)


def pull_hash4(
    hash_: HashAlgorithm,
    skeyid_a: bytes,
    message_id: int,
    *,
    ni_b: bytes,
    nr_b: bytes,
    kd: bytes,
    seq: bytes = b"",
) -> bytes:
    """HASH(4) = prf(SKEYID_a, M-ID | Ni_b | Nr_b [| SEQ] | KD)."""
    return exchange_hash(hash_, skeyid_a, message_id, ni_b, nr_b, seq, kd)


@dataclass(frozen=True)
class Kek:
    """A key encryption key as KEK_ALGORITHM_KEY carries it: IV first, then the key.

    RFC 6407 §5.6.2.1 delivers one explicit IV with the key and says
    nothing about per-message IVs; every GROUPKEY-PUSH under this KEK uses
    that IV, as the reference implementation does (digest §8.10).
    """

    algorithm: KekAlgorithm
    iv: bytes = field(repr=False)
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        cipher = kek_cipher(self.algorithm)
        cipher.check_iv(self.iv)
        cipher.check_key(self.key)

    @classmethod
    def generate(cls, algorithm: KekAlgorithm, key_bits: int | None = None) -> Kek:
        cipher = kek_cipher(algorithm)
        return cls(algorithm, os.urandom(cipher.block_size), os.urandom(cipher.key_size(key_bits)))

    @classmethod
    def from_material(
        cls, algorithm: KekAlgorithm, material: bytes, key_bits: int | None = None
    ) -> Kek:
        """Split a KEK_ALGORITHM_KEY value.

        ``key_bits`` is KEK_KEY_LENGTH when the SA KEK carried it; without it
        the key is whatever follows the IV, if that is a legal key size.
        """
        cipher = kek_cipher(algorithm)
        bs = cipher.block_size
        if key_bits is not None and len(material) != bs + cipher.key_size(key_bits):
            raise InvalidKey(
                f"KEK_ALGORITHM_KEY for {key_bits}-bit {cipher.name} must be "
                f"{bs + cipher.key_size(key_bits)} octets (IV | key), got {len(material)}"
            )
        return cls(algorithm, material[:bs], material[bs:])

    @property
    def material(self) -> bytes:
        """The KEK_ALGORITHM_KEY value: IV | key."""
        return self.iv + self.key

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt the payloads of a GROUPKEY-PUSH, zero-padded like ISAKMP."""
        return kek_cipher(self.algorithm).encrypt(self.key, self.iv, plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypt the payloads of a GROUPKEY-PUSH; padding is left for the parser."""
        return kek_cipher(self.algorithm).decrypt(self.key, self.iv, ciphertext)


ACK_LABEL = b"GROUPKEY-PUSH ACK\x00"


class AckKeyLength(Enum):
    """Which reading of RFC 8263 §3.2's L to use (AMBIGUOUS, digest §8.11).

    PRF_BLOCK follows the literal MUST ("L MUST match the length of the
    base_key (i.e., 512 bits for PRF-HMAC-SHA-256)"): 512 / 1024.
    PRF_OUTPUT reads L as the ack_key length: 256 / 512.
    """

    PRF_BLOCK = "prf-block"
    PRF_OUTPUT = "prf-output"


_ACK_PRF = {
    KekAckType.KEK_SHA256: HashAlgorithm.SHA2_256,
    KekAckType.LKH_SHA256: HashAlgorithm.SHA2_256,
    KekAckType.KEK_SHA512: HashAlgorithm.SHA2_512,
    KekAckType.LKH_SHA512: HashAlgorithm.SHA2_512,
}
_ACK_L = {
    (HashAlgorithm.SHA2_256, AckKeyLength.PRF_BLOCK): 512,
    (HashAlgorithm.SHA2_256, AckKeyLength.PRF_OUTPUT): 256,
    (HashAlgorithm.SHA2_512, AckKeyLength.PRF_BLOCK): 1024,
    (HashAlgorithm.SHA2_512, AckKeyLength.PRF_OUTPUT): 512,
}


def ack_prf(ack_type: int) -> HashAlgorithm:
    """The prf hash of a KEK_ACK_REQUESTED value."""
    try:
        return _ACK_PRF[KekAckType(ack_type)]
    except (ValueError, KeyError):
        raise UnsupportedAlgorithm(f"KEK_ACK_REQUESTED type {ack_type} is not supported") from None


def ack_key(
    ack_type: int,
    base_key: bytes,
    spi: bytes,
    length: AckKeyLength = AckKeyLength.PRF_BLOCK,
) -> bytes:
    """ack_key = prf(base_key, "GROUPKEY-PUSH ACK\\0" | SPI | L) (RFC 8263 §3.2).

    ``base_key`` is the KEK cipher key without its IV (or the GM's LKH leaf
    key for the LKH types); ``spi`` is CKY-I | CKY-R of the PUSH.
    """
    if len(spi) != 16:
        raise InvalidKey(f"KEK SPI must be 16 octets (CKY-I | CKY-R), got {len(spi)}")
    hash_ = ack_prf(ack_type)
    return prf(hash_, base_key, ACK_LABEL, spi, _ACK_L[hash_, length].to_bytes(2, "big"))


def ack_hash(ack_type: int, key: bytes, *, seq: bytes, id_: bytes) -> bytes:
    """HASH = prf(ack_key, SEQ | ID) over the complete SEQ and ID payloads of the ACK.

    "The bytes comprising" those payloads is read as header included, like
    every GDOI hash (AMBIGUOUS, digest §8.11).
    """
    return prf(ack_prf(ack_type), key, seq, id_)
