"""Diffie-Hellman for IKEv1 Phase 1: MODP groups (RFC 2409 §6, RFC 3526) and ECP groups (RFC 5903).

Every value crossing this API is octets in the wire form: a MODP public
value is left-padded to the prime length (RFC 2409 §5), an ECP public value
is x | y with each coordinate padded to the field length (RFC 5903 §7).
Shared secrets keep the same fixed length; stripping a leading zero octet
would break SKEYID about once in 256 exchanges (digest §4.4).

Peer values are validated before use.  The MODP primes are safe primes, so
the only small subgroup is {1, p-1}; rejecting 0, 1, p-1 and anything
>= p rules out small-subgroup confinement without a costly order check.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..wire.numbers import DhGroup
from .errors import InvalidKey, InvalidPublicValue, UnsupportedAlgorithm

# Primes as printed in RFC 2409 §6.1-6.2 and RFC 3526 §2-5 (checked against the digest §5).
_PRIMES_HEX = {
    DhGroup.MODP_768: """
    FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
    29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
    EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
    E485B576 625E7EC6 F44C42E9 A63A3620 FFFFFFFF FFFFFFFF
    """,
    DhGroup.MODP_1024: """
    FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
    29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
    EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
    E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
    EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE65381
    FFFFFFFF FFFFFFFF
    """,
    DhGroup.MODP_1536: """
    FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
    29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
    EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
    E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
    EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
    C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
    83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
    670C354E 4ABC9804 F1746C08 CA237327 FFFFFFFF FFFFFFFF
    """,
    DhGroup.MODP_2048: """
    FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
    29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
    EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
    E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
    EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
    C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
    83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
    670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
    E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
    DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
    15728E5A 8AACAA68 FFFFFFFF FFFFFFFF
    """,
    DhGroup.MODP_3072: """
    FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
    29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
    EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
    E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
    EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
    C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
    83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
    670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
    E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
    DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
    15728E5A 8AAAC42D AD33170D 04507A33 A85521AB DF1CBA64
    ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7
    ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B
    F12FFA06 D98A0864 D8760273 3EC86A64 521F2B18 177B200C
    BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31
    43DB5BFC E0FD108E 4B82D120 A93AD2CA FFFFFFFF FFFFFFFF
    """,
    DhGroup.MODP_4096: """
    FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
    29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
    EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
    E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
    EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
    C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
    83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
    670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
    E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
    DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
    15728E5A 8AAAC42D AD33170D 04507A33 A85521AB DF1CBA64
    ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7
    ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B
    F12FFA06 D98A0864 D8760273 3EC86A64 521F2B18 177B200C
    BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31
    43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7
    88719A10 BDBA5B26 99C32718 6AF4E23C 1A946834 B6150BDA
    2583E9CA 2AD44CE8 DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6
    287C5947 4E6BC05D 99B2964F A090C3A2 233BA186 515BE7ED
    1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9
    93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34063199
    FFFFFFFF FFFFFFFF
    """,
}

# Private exponent lengths: RFC 3526 §8's larger estimate for groups 5-16,
# and RFC 2409 §8's floor of 160 bits for the old groups.  Full-length
# exponents would cost up to 10x more (4096-bit: ~200 ms) for no gain.
_EXPONENT_BITS = {
    DhGroup.MODP_768: 160,
    DhGroup.MODP_1024: 160,
    DhGroup.MODP_1536: 240,
    DhGroup.MODP_2048: 320,
    DhGroup.MODP_3072: 420,
    DhGroup.MODP_4096: 480,
}


class KeyPair(Protocol):
    """One side of a Diffie-Hellman exchange."""

    @property
    def group(self) -> Group: ...

    @property
    def public_value(self) -> bytes:
        """The KE payload data."""
        ...

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^xy in its fixed-length form; raises InvalidPublicValue for a bad peer value."""
        ...


@dataclass(frozen=True)
class ModpGroup:
    """A MODP group with generator 2."""

    number: DhGroup
    prime: int = field(repr=False)
    exponent_bits: int
    generator: int = 2

    @property
    def public_size(self) -> int:
        """Octets of a KE value (and of the shared secret): the prime's length."""
        return (self.prime.bit_length() + 7) // 8

    def validate(self, public: bytes) -> int:
        """The peer's public value as an integer, if acceptable."""
        if len(public) != self.public_size:
            raise InvalidPublicValue(
                f"group {self.number}: public value is {len(public)} octets, "
                f"expected {self.public_size}"
            )
        y = int.from_bytes(public, "big")
        if y >= self.prime:
            raise InvalidPublicValue(f"group {self.number}: public value is not below the prime")
        if y in (0, 1, self.prime - 1):
            raise InvalidPublicValue(f"group {self.number}: public value is 0, 1 or p-1")
        return y

    def generate(self) -> ModpKeyPair:
        """A fresh key pair with a random exponent of ``exponent_bits`` bits."""
        low = 1 << (self.exponent_bits - 1)
        return self.keypair(low | secrets.randbits(self.exponent_bits - 1))

    def keypair(self, private: int) -> ModpKeyPair:
        """A key pair for a given private exponent (tests, known-answer vectors)."""
        if not 1 < private < self.prime - 1:
            raise InvalidKey(f"group {self.number}: private exponent out of range")
        public = pow(self.generator, private, self.prime).to_bytes(self.public_size, "big")
        return ModpKeyPair(self, private, public)


@dataclass(frozen=True)
class ModpKeyPair:
    group: ModpGroup
    private: int = field(repr=False)
    public_value: bytes

    def shared_secret(self, peer_public: bytes) -> bytes:
        y = self.group.validate(peer_public)
        return pow(y, self.private, self.group.prime).to_bytes(self.group.public_size, "big")


@dataclass(frozen=True)
class EcpGroup:
    """A NIST prime curve as an IKE group (RFC 5903)."""

    number: DhGroup
    curve: ec.EllipticCurve
    coordinate_size: int

    @property
    def public_size(self) -> int:
        """Octets of a KE value: x | y."""
        return 2 * self.coordinate_size

    def validate(self, public: bytes) -> ec.EllipticCurvePublicKey:
        """The peer's point, if it has the right length and lies on the curve."""
        if len(public) != self.public_size:
            raise InvalidPublicValue(
                f"group {self.number}: public value is {len(public)} octets, "
                f"expected {self.public_size} (x | y)"
            )
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(self.curve, b"\x04" + public)
        except ValueError:
            raise InvalidPublicValue(
                f"group {self.number}: public value is not a point on {self.curve.name}"
            ) from None

    def generate(self) -> EcpKeyPair:
        return self._wrap(ec.generate_private_key(self.curve))

    def keypair(self, private: int) -> EcpKeyPair:
        """A key pair for a given private scalar (tests, known-answer vectors)."""
        try:
            return self._wrap(ec.derive_private_key(private, self.curve))
        except ValueError:
            raise InvalidKey(f"group {self.number}: private scalar out of range") from None

    def _wrap(self, key: ec.EllipticCurvePrivateKey) -> EcpKeyPair:
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return EcpKeyPair(self, key, point[1:])


@dataclass(frozen=True)
class EcpKeyPair:
    group: EcpGroup
    private: ec.EllipticCurvePrivateKey = field(repr=False)
    public_value: bytes

    def shared_secret(self, peer_public: bytes) -> bytes:
        """The x coordinate of the shared point, field-length (RFC 5903 §7)."""
        secret = self.private.exchange(ec.ECDH(), self.group.validate(peer_public))
        return secret.rjust(self.group.coordinate_size, b"\x00")


Group = ModpGroup | EcpGroup

_GROUPS: dict[DhGroup, Group] = {
    number: ModpGroup(number, int("".join(text.split()), 16), _EXPONENT_BITS[number])
    for number, text in _PRIMES_HEX.items()
}
_GROUPS.update(
    {
        DhGroup.ECP_256: EcpGroup(DhGroup.ECP_256, ec.SECP256R1(), 32),
        DhGroup.ECP_384: EcpGroup(DhGroup.ECP_384, ec.SECP384R1(), 48),
        DhGroup.ECP_521: EcpGroup(DhGroup.ECP_521, ec.SECP521R1(), 66),
    }
)

SUPPORTED_GROUPS = frozenset(_GROUPS)


def group(number: int) -> Group:
    """The group for an IKE Group Description value."""
    try:
        return _GROUPS[DhGroup(number)]
    except (ValueError, KeyError):
        raise UnsupportedAlgorithm(f"Diffie-Hellman group {number} is not supported") from None
