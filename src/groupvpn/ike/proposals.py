"""Phase 1 suites: what one ISAKMP transform offers, by name and as attributes.

A ``Suite`` is the unit both sides negotiate (RFC 2409 §5, App. A):
cipher (+ key length), hash, Diffie-Hellman group and lifetime, always with
pre-shared-key authentication.  Names follow strongSwan's
(``aes128-sha256-modp2048``) so one string means the same thing in our
configuration, in error messages and in a charon ``proposals =`` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from ..crypto.cbc import BlockCipher, ike_cipher
from ..crypto.dh import SUPPORTED_GROUPS, Group, group
from ..crypto.prf import SUPPORTED_HASHES
from ..wire.attributes import Attribute
from ..wire.numbers import (
    AuthMethod,
    DhGroup,
    EncryptionAlgorithm,
    HashAlgorithm,
    IkeAttribute,
    LifeType,
    name_of,
)

# RFC 2407 §4.5's default for an absent lifetime; IKE implementations use it for Phase 1 too.
DEFAULT_ABSENT_LIFETIME = 28800
DEFAULT_LIFETIME = 86400

_CIPHERS: dict[str, tuple[EncryptionAlgorithm, int | None]] = {
    "des": (EncryptionAlgorithm.DES_CBC, None),
    "3des": (EncryptionAlgorithm.TRIPLE_DES_CBC, None),
    "aes128": (EncryptionAlgorithm.AES_CBC, 128),
    "aes192": (EncryptionAlgorithm.AES_CBC, 192),
    "aes256": (EncryptionAlgorithm.AES_CBC, 256),
}
_HASHES: dict[str, HashAlgorithm] = {
    "md5": HashAlgorithm.MD5,
    "sha1": HashAlgorithm.SHA1,
    "sha256": HashAlgorithm.SHA2_256,
    "sha384": HashAlgorithm.SHA2_384,
    "sha512": HashAlgorithm.SHA2_512,
}
_GROUPS: dict[str, DhGroup] = {
    "modp768": DhGroup.MODP_768,
    "modp1024": DhGroup.MODP_1024,
    "modp1536": DhGroup.MODP_1536,
    "modp2048": DhGroup.MODP_2048,
    "modp3072": DhGroup.MODP_3072,
    "modp4096": DhGroup.MODP_4096,
    "ecp256": DhGroup.ECP_256,
    "ecp384": DhGroup.ECP_384,
    "ecp521": DhGroup.ECP_521,
}
_CIPHER_NAMES = {v: k for k, v in _CIPHERS.items()}
_HASH_NAMES = {v: k for k, v in _HASHES.items()}
_GROUP_NAMES = {v: k for k, v in _GROUPS.items()}
_SUPPORTED_CIPHERS = frozenset(e for e, _ in _CIPHERS.values())
_SUPPORTED_HASHES = frozenset(_HASHES.values()) & SUPPORTED_HASHES
_SUPPORTED_GROUPS = frozenset(_GROUPS.values()) & SUPPORTED_GROUPS
_FIXED_KEY_BITS = {EncryptionAlgorithm.DES_CBC: 64, EncryptionAlgorithm.TRIPLE_DES_CBC: 192}

E = TypeVar("E", bound=IntEnum)


class ProposalError(ValueError):
    """A proposal string in the configuration that names no suite we implement."""


class TransformRejected(ValueError):
    """A peer's transform we cannot accept; the message says which attribute and why."""


@dataclass(frozen=True, slots=True)
class Suite:
    """One Phase 1 transform: algorithms plus lifetime in seconds."""

    encryption: EncryptionAlgorithm
    key_length: int | None  # bits; only for variable-length ciphers (AES)
    hash: HashAlgorithm
    group: DhGroup
    lifetime: int = DEFAULT_LIFETIME

    @classmethod
    def parse(cls, text: str, lifetime: int = DEFAULT_LIFETIME) -> Suite:
        """``cipher-hash-group``, e.g. ``aes128-sha256-modp2048`` or ``3des-sha1-modp1024``."""
        parts = text.strip().lower().split("-")
        if len(parts) != 3:
            raise ProposalError(f"proposal {text!r} is not cipher-hash-group (e.g. aes128-sha256-modp2048)")
        cipher, hash_, dh = parts
        for token, table, what in ((cipher, _CIPHERS, "cipher"), (hash_, _HASHES, "hash"), (dh, _GROUPS, "group")):
            if token not in table:
                raise ProposalError(f"proposal {text!r}: unknown {what} {token!r} (known: {', '.join(table)})")
        if lifetime <= 0:
            raise ProposalError(f"lifetime must be positive, got {lifetime}")
        encryption, key_length = _CIPHERS[cipher]
        return cls(encryption, key_length, _HASHES[hash_], _GROUPS[dh], lifetime)

    @property
    def name(self) -> str:
        return "-".join(
            (_CIPHER_NAMES[(self.encryption, self.key_length)], _HASH_NAMES[self.hash], _GROUP_NAMES[self.group])
        )

    @property
    def cipher(self) -> BlockCipher:
        return ike_cipher(self.encryption)

    @property
    def key_size(self) -> int:
        """Cipher key octets."""
        return self.cipher.key_size(self.key_length)

    @property
    def dh(self) -> Group:
        return group(self.group)

    def same_algorithms(self, other: Suite) -> bool:
        """Equal apart from the lifetime, which the responder may shorten locally."""
        return (self.encryption, self.key_length, self.hash, self.group) == (
            other.encryption,
            other.key_length,
            other.hash,
            other.group,
        )

    def attributes(self) -> tuple[Attribute, ...]:
        """Transform attributes in the usual order; Life Duration right after its Life Type (RFC 2407 §4.5)."""
        out = [Attribute.tv(IkeAttribute.ENCRYPTION_ALGORITHM, self.encryption)]
        if self.key_length is not None:
            out.append(Attribute.tv(IkeAttribute.KEY_LENGTH, self.key_length))
        out += [
            Attribute.tv(IkeAttribute.HASH_ALGORITHM, self.hash),
            Attribute.tv(IkeAttribute.AUTHENTICATION_METHOD, AuthMethod.PRE_SHARED_KEY),
            Attribute.tv(IkeAttribute.GROUP_DESCRIPTION, self.group),
            Attribute.tv(IkeAttribute.LIFE_TYPE, LifeType.SECONDS),
            Attribute.lifetime(IkeAttribute.LIFE_DURATION, self.lifetime),
        ]
        return tuple(out)

    @classmethod
    def from_attributes(cls, attributes: Sequence[Attribute]) -> Suite:
        """The suite a peer's transform describes, or ``TransformRejected`` saying why not.

        A kilobyte lifetime is accepted and not enforced: an IKE SA carries
        a few hundred octets per exchange.  An absent seconds lifetime means
        ``DEFAULT_ABSENT_LIFETIME``.
        """
        values: dict[int, int] = {}
        lifetime: int | None = None
        life_type: int | None = None
        for attr in attributes:
            if attr.type == IkeAttribute.LIFE_TYPE:
                if attr.int not in (LifeType.SECONDS, LifeType.KILOBYTES):
                    raise TransformRejected(f"unknown life type {attr.int}")
                life_type = attr.int
                continue
            if attr.type == IkeAttribute.LIFE_DURATION:
                if life_type is None:
                    raise TransformRejected("life duration without a preceding life type")
                if life_type == LifeType.SECONDS:
                    if attr.int == 0:
                        raise TransformRejected("life duration of 0 seconds")
                    lifetime = attr.int
                life_type = None
                continue
            if attr.type not in _UNDERSTOOD:
                raise TransformRejected(f"attribute {name_of(IkeAttribute, attr.type)} is not supported")
            if attr.type in values:
                raise TransformRejected(f"attribute {name_of(IkeAttribute, attr.type)} appears twice")
            values[attr.type] = attr.int
        for required in (
            IkeAttribute.ENCRYPTION_ALGORITHM,
            IkeAttribute.HASH_ALGORITHM,
            IkeAttribute.AUTHENTICATION_METHOD,
            IkeAttribute.GROUP_DESCRIPTION,
        ):
            if required not in values:
                raise TransformRejected(f"attribute {required.name} is missing")
        auth = values[IkeAttribute.AUTHENTICATION_METHOD]
        if auth != AuthMethod.PRE_SHARED_KEY:
            raise TransformRejected(f"authentication method {name_of(AuthMethod, auth)} is not supported")
        encryption = _supported(
            EncryptionAlgorithm, values[IkeAttribute.ENCRYPTION_ALGORITHM], _SUPPORTED_CIPHERS, "encryption algorithm"
        )
        return cls(
            encryption,
            _key_length(encryption, values.get(IkeAttribute.KEY_LENGTH)),
            _supported(HashAlgorithm, values[IkeAttribute.HASH_ALGORITHM], _SUPPORTED_HASHES, "hash algorithm"),
            _supported(DhGroup, values[IkeAttribute.GROUP_DESCRIPTION], _SUPPORTED_GROUPS, "Diffie-Hellman group"),
            DEFAULT_ABSENT_LIFETIME if lifetime is None else lifetime,
        )


_UNDERSTOOD = frozenset(
    {
        IkeAttribute.ENCRYPTION_ALGORITHM,
        IkeAttribute.HASH_ALGORITHM,
        IkeAttribute.AUTHENTICATION_METHOD,
        IkeAttribute.GROUP_DESCRIPTION,
        IkeAttribute.KEY_LENGTH,
    }
)


def _supported(enum: type[E], value: int, supported: frozenset[E], what: str) -> E:
    try:
        member = enum(value)
    except ValueError:
        raise TransformRejected(f"unknown {what} {value}") from None
    if member not in supported:
        raise TransformRejected(f"{what} {member.name} is not supported")
    return member


def _key_length(encryption: EncryptionAlgorithm, bits: int | None) -> int | None:
    """The Key Length attribute checked against the cipher (RFC 2409 App. A; RFC 3602 §5.3)."""
    if encryption in _FIXED_KEY_BITS:
        if bits is not None and bits != _FIXED_KEY_BITS[encryption]:
            raise TransformRejected(f"key length {bits} given for fixed-length {encryption.name}")
        return None
    if bits is None:
        raise TransformRejected(f"{encryption.name} without a key length")
    if bits not in (128, 192, 256):
        raise TransformRejected(f"{encryption.name} key length {bits} is not 128, 192 or 256")
    return bits


def describe(suites: Sequence[Suite]) -> str:
    """``a, b, c`` for error messages."""
    return ", ".join(s.name for s in suites) or "none"
