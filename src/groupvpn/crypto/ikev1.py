"""IKEv1 Phase 1 computations (RFC 2409 §5, App. B) for pre-shared-key Main Mode.

Everything here is a pure function of octet strings so that the Phase 1
state machines on both sides compute exactly the same thing; the argument
names follow the RFC's so a reader can check them against it.  Message IDs
are the 32-bit header field as an integer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..wire.numbers import HashAlgorithm
from .errors import InvalidKey
from .prf import digest, prf


def _mid(message_id: int) -> bytes:
    return message_id.to_bytes(4, "big")


@dataclass(frozen=True)
class Phase1Keys:
    """SKEYID and its three derivatives; repr shows only the hash."""

    hash: HashAlgorithm
    skeyid: bytes = field(repr=False)
    skeyid_d: bytes = field(repr=False)
    skeyid_a: bytes = field(repr=False)
    skeyid_e: bytes = field(repr=False)

    def cipher_key(self, key_size: int) -> bytes:
        """The Phase 1 encryption key of ``key_size`` octets (see ``encryption_key``)."""
        return encryption_key(self.hash, self.skeyid_e, key_size)


def psk_skeyid(hash_: HashAlgorithm, psk: bytes, ni_b: bytes, nr_b: bytes) -> bytes:
    """SKEYID = prf(pre-shared-key, Ni_b | Nr_b)."""
    return prf(hash_, psk, ni_b, nr_b)


def derive_keys(
    hash_: HashAlgorithm, skeyid: bytes, g_xy: bytes, cky_i: bytes, cky_r: bytes
) -> Phase1Keys:
    """SKEYID_d, _a and _e from SKEYID and the fixed-length shared secret."""
    if len(cky_i) != 8 or len(cky_r) != 8:
        raise InvalidKey("ISAKMP cookies must be 8 octets each")
    skeyid_d = prf(hash_, skeyid, g_xy, cky_i, cky_r, b"\x00")
    skeyid_a = prf(hash_, skeyid, skeyid_d, g_xy, cky_i, cky_r, b"\x01")
    skeyid_e = prf(hash_, skeyid, skeyid_a, g_xy, cky_i, cky_r, b"\x02")
    return Phase1Keys(hash_, skeyid, skeyid_d, skeyid_a, skeyid_e)


def psk_keys(
    hash_: HashAlgorithm,
    psk: bytes,
    ni_b: bytes,
    nr_b: bytes,
    g_xy: bytes,
    cky_i: bytes,
    cky_r: bytes,
) -> Phase1Keys:
    """All Phase 1 keys for the pre-shared-key method."""
    return derive_keys(hash_, psk_skeyid(hash_, psk, ni_b, nr_b), g_xy, cky_i, cky_r)


def encryption_key(hash_: HashAlgorithm, skeyid_e: bytes, key_size: int) -> bytes:
    """The cipher key from SKEYID_e (RFC 2409 App. B).

    Leading octets of SKEYID_e when it is long enough; otherwise the leading
    octets of Ka = K1 | K2 | ... with K1 = prf(SKEYID_e, 0x00) and
    Kn = prf(SKEYID_e, Kn-1) -- note Ka replaces SKEYID_e entirely.
    """
    if key_size <= len(skeyid_e):
        return skeyid_e[:key_size]
    blocks = [prf(hash_, skeyid_e, b"\x00")]
    while sum(map(len, blocks)) < key_size:
        blocks.append(prf(hash_, skeyid_e, blocks[-1]))
    return b"".join(blocks)[:key_size]


def phase1_iv(hash_: HashAlgorithm, g_xi: bytes, g_xr: bytes, block_size: int) -> bytes:
    """IV of the first encrypted Main Mode message: H(g^xi | g^xr), truncated."""
    return digest(hash_, g_xi, g_xr)[:block_size]


def phase2_iv(hash_: HashAlgorithm, last_block: bytes, message_id: int, block_size: int) -> bytes:
    """First IV of a Phase 2 / Informational / GROUPKEY-PULL exchange.

    H(last CBC block of Phase 1 | M-ID), truncated; later messages of the
    same exchange chain from the previous message's last ciphertext block.
    """
    return digest(hash_, last_block, _mid(message_id))[:block_size]


def hash_i(
    hash_: HashAlgorithm,
    skeyid: bytes,
    *,
    g_xi: bytes,
    g_xr: bytes,
    cky_i: bytes,
    cky_r: bytes,
    sai_b: bytes,
    idii_b: bytes,
) -> bytes:
    """HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b)."""
    return prf(hash_, skeyid, g_xi, g_xr, cky_i, cky_r, sai_b, idii_b)


def hash_r(
    hash_: HashAlgorithm,
    skeyid: bytes,
    *,
    g_xi: bytes,
    g_xr: bytes,
    cky_i: bytes,
    cky_r: bytes,
    sai_b: bytes,
    idir_b: bytes,
) -> bytes:
    """HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b).

    Takes the same named inputs as ``hash_i`` and does the swapping itself;
    SAi_b is the initiator's offer on both sides.
    """
    return prf(hash_, skeyid, g_xr, g_xi, cky_r, cky_i, sai_b, idir_b)


def exchange_hash(hash_: HashAlgorithm, skeyid_a: bytes, message_id: int, *parts: bytes) -> bytes:
    """prf(SKEYID_a, M-ID | parts...): the shape of every post-Phase-1 HASH payload."""
    return prf(hash_, skeyid_a, _mid(message_id), *parts)


def informational_hash(
    hash_: HashAlgorithm, skeyid_a: bytes, message_id: int, payload: bytes
) -> bytes:
    """HASH(1) of an Informational exchange: prf(SKEYID_a, M-ID | N/D).

    ``payload`` is the whole Notify or Delete payload, generic header included.
    """
    return exchange_hash(hash_, skeyid_a, message_id, payload)
