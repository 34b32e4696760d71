"""Hashes and the IKEv1 prf, keyed by the Phase 1 Hash Algorithm registry.

IKEv1 negotiates no separate PRF in practice: prf is HMAC with the
negotiated hash (RFC 2409 §5, App. B), and GDOI/RFC 8263 reuse it.
"""

from __future__ import annotations

import hashlib
import hmac

from ..wire.numbers import HashAlgorithm
from .errors import UnsupportedAlgorithm

_NAMES = {
    HashAlgorithm.MD5: "md5",
    HashAlgorithm.SHA1: "sha1",
    HashAlgorithm.SHA2_256: "sha256",
    HashAlgorithm.SHA2_384: "sha384",
    HashAlgorithm.SHA2_512: "sha512",
}

SUPPORTED_HASHES = frozenset(_NAMES)


def hash_name(algorithm: HashAlgorithm) -> str:
    """The hashlib name of a Phase 1 hash; UnsupportedAlgorithm for Tiger and unknowns."""
    try:
        return _NAMES[algorithm]
    except KeyError:
        raise UnsupportedAlgorithm(f"hash algorithm {algorithm} is not supported") from None


def digest_size(algorithm: HashAlgorithm) -> int:
    """Octets of the hash (and prf) output."""
    return hashlib.new(hash_name(algorithm)).digest_size


def digest(algorithm: HashAlgorithm, *parts: bytes) -> bytes:
    """H(parts[0] | parts[1] | ...): the plain hash, used for IVs."""
    return hashlib.new(hash_name(algorithm), b"".join(parts)).digest()


def prf(algorithm: HashAlgorithm, key: bytes, *parts: bytes) -> bytes:
    """prf(key, parts[0] | parts[1] | ...) = HMAC with the negotiated hash."""
    return hmac.digest(key, b"".join(parts), hash_name(algorithm))
