"""ISAKMP data attributes (RFC 2408 §3.3): TV ("basic") and TLV ("variable").

An attribute keeps the form it arrived in so that re-encoding is byte
exact; registries decide which classes must be basic (see ``numbers``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum

from . import numbers as n
from .errors import WireError

_AF = 0x8000


@dataclass(frozen=True, slots=True)
class Attribute:
    """One data attribute.

    ``basic`` attributes carry exactly two value octets; variable ones any
    number up to 65535.  ``value`` is always the raw octets.
    """

    type: int
    value: bytes
    basic: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 0x7FFF:
            raise ValueError(f"attribute type {self.type} out of range 0..32767")
        if self.basic and len(self.value) != 2:
            raise ValueError("a basic attribute carries exactly 2 octets")
        if len(self.value) > 0xFFFF:
            raise ValueError("attribute value longer than 65535 octets")

    @classmethod
    def tv(cls, type_: int, value: int) -> Attribute:
        """A basic (TV) attribute holding a 16-bit integer."""
        return cls(int(type_), value.to_bytes(2, "big"), basic=True)

    @classmethod
    def tlv(cls, type_: int, value: bytes) -> Attribute:
        """A variable (TLV) attribute."""
        return cls(int(type_), bytes(value), basic=False)

    @classmethod
    def number(cls, type_: int, value: int) -> Attribute:
        """An integer for a class defined as variable: basic when it fits, else 4+ octets.

        RFC 2409 App. A lets variable attributes travel as basic when the
        value fits in 16 bits; we only use that for values that fit, and we
        always send lifetimes as 4-octet TLVs (see ``lifetime``).
        """
        if 0 <= value <= 0xFFFF:
            return cls.tv(type_, value)
        length = max(4, (value.bit_length() + 7) // 8)
        return cls.tlv(type_, value.to_bytes(length, "big"))

    @classmethod
    def lifetime(cls, type_: int, value: int) -> Attribute:
        """A Life Duration style value as the usual 4-octet TLV."""
        length = max(4, (value.bit_length() + 7) // 8)
        return cls.tlv(type_, value.to_bytes(length, "big"))

    @property
    def int(self) -> int:
        """The value read as an unsigned big-endian integer."""
        return int.from_bytes(self.value, "big")

    def encode(self) -> bytes:
        if self.basic:
            return struct.pack("!H", _AF | self.type) + self.value
        return struct.pack("!HH", self.type, len(self.value)) + self.value


@dataclass(frozen=True, slots=True)
class AttributeRegistry:
    """What one context (IKE, KEK, GAP, IPsec, a KD key packet type) defines.

    Decoding checks the form of known classes (a class defined as basic must
    not arrive variable, RFC 2409 App. A) and, when ``strict``, rejects
    unknown classes below ``private_from``: RFC 6407 §5.3.2/§5.4 say a GDOI
    implementation MUST abort on attributes it does not understand, while
    IKE proposals keep them so the negotiation can refuse just that
    transform.  Private-use classes are always kept.
    """

    name: str
    classes: type[IntEnum]
    variable: frozenset[int]
    strict: bool
    private_from: int = n.PRIVATE_USE
    values: Mapping[int, type[IntEnum]] = field(default_factory=dict)
    secret: frozenset[int] = frozenset()
    opaque: bool = False  # show no value at all (private key packets may hold keys)

    def known(self, type_: int) -> bool:
        return type_ in self.classes._value2member_map_

    def check(self, attr: Attribute, payload: str, offset: int) -> None:
        """Raise ``WireError`` when ``attr`` is not acceptable in this context."""
        if self.known(attr.type):
            if not attr.basic and attr.type not in self.variable:
                raise WireError(
                    payload,
                    offset,
                    f"{self.name} attribute {self.classes(attr.type).name} must be basic (TV)",
                )
        elif self.strict and attr.type < self.private_from:
            raise WireError(payload, offset, f"unknown {self.name} attribute class {attr.type}")

    def describe(self, attr: Attribute) -> dict[str, object]:
        """Display form: class and value names from this registry; secrets show only a length."""
        out: dict[str, object] = {"class": n.name_of(self.classes, attr.type)}
        if self.opaque or attr.type in self.secret:
            out["value"] = f"<{len(attr.value)} octets>"
        elif attr.type in self.values:
            out["value"] = n.name_of(self.values[attr.type], attr.int)
        elif attr.basic or len(attr.value) <= 8:
            out["value"] = attr.int
        else:
            out["value"] = attr.value.hex()
        return out


IKE_REGISTRY = AttributeRegistry(
    "IKE",
    n.IkeAttribute,
    n.IKE_VARIABLE_ATTRIBUTES,
    strict=False,
    private_from=n.IKE_PRIVATE_USE,
    values={
        n.IkeAttribute.ENCRYPTION_ALGORITHM: n.EncryptionAlgorithm,
        n.IkeAttribute.HASH_ALGORITHM: n.HashAlgorithm,
        n.IkeAttribute.AUTHENTICATION_METHOD: n.AuthMethod,
        n.IkeAttribute.GROUP_DESCRIPTION: n.DhGroup,
        n.IkeAttribute.LIFE_TYPE: n.LifeType,
    },
)
IPSEC_REGISTRY = AttributeRegistry(
    "IPsec",
    n.IpsecAttribute,
    n.IPSEC_VARIABLE_ATTRIBUTES,
    strict=True,
    values={
        n.IpsecAttribute.SA_LIFE_TYPE: n.LifeType,
        n.IpsecAttribute.ENCAPSULATION_MODE: n.EncapsulationMode,
        n.IpsecAttribute.AUTHENTICATION_ALGORITHM: n.AuthAlgorithm,
        n.IpsecAttribute.ADDRESS_PRESERVATION: n.AddressPreservation,
        n.IpsecAttribute.SA_DIRECTION: n.SaDirection,
    },
)
# IPsec attributes in an IKE-style proposal are negotiated, not policy: keep unknowns.
IPSEC_PROPOSAL_REGISTRY = replace(IPSEC_REGISTRY, strict=False)
KEK_REGISTRY = AttributeRegistry(
    "KEK",
    n.KekAttribute,
    n.KEK_VARIABLE_ATTRIBUTES,
    strict=True,
    values={
        n.KekAttribute.KEK_MANAGEMENT_ALGORITHM: n.KekManagementAlgorithm,
        n.KekAttribute.KEK_ALGORITHM: n.KekAlgorithm,
        n.KekAttribute.SIG_HASH_ALGORITHM: n.SigHashAlgorithm,
        n.KekAttribute.SIG_ALGORITHM: n.SigAlgorithm,
        n.KekAttribute.KEK_ACK_REQUESTED: n.KekAckType,
    },
)
GAP_REGISTRY = AttributeRegistry("GAP", n.GapAttribute, frozenset(), strict=True)


def _key_registry(name: str, classes: type[IntEnum], public: frozenset[int] = frozenset()) -> AttributeRegistry:
    """Key packet attributes are all variable; all but ``public`` ones carry secrets."""
    every = frozenset(classes)
    return AttributeRegistry(name, classes, every, strict=True, secret=every - public)


TEK_KEY_REGISTRY = _key_registry("TEK key", n.TekKeyAttribute)
KEK_KEY_REGISTRY = _key_registry(
    "KEK key", n.KekKeyAttribute, frozenset({n.KekKeyAttribute.SIG_ALGORITHM_KEY})
)
LKH_KEY_REGISTRY = _key_registry(
    "LKH key", n.LkhKeyAttribute, frozenset({n.LkhKeyAttribute.SIG_ALGORITHM_KEY})
)
SID_KEY_REGISTRY = AttributeRegistry(
    "SID", n.SidKeyAttribute, frozenset({n.SidKeyAttribute.SID_VALUE}), strict=True
)


def decode_attributes(
    data: bytes, payload: str, base_offset: int = 0, registry: AttributeRegistry | None = None
) -> tuple[Attribute, ...]:
    """Decode a run of attributes that must fill ``data`` exactly.

    With a ``registry`` every attribute is also checked against it, and the
    error names the offset of the offending attribute.
    """
    out: list[Attribute] = []
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < 4:
            raise WireError(
                payload, base_offset + pos, f"{end - pos} trailing octets are too short for an attribute"
            )
        word, second = struct.unpack_from("!HH", data, pos)
        type_ = word & 0x7FFF
        if word & _AF:
            attr = Attribute(type_, data[pos + 2 : pos + 4], basic=True)
            size = 4
        else:
            if pos + 4 + second > end:
                raise WireError(
                    payload,
                    base_offset + pos,
                    f"attribute {type_} declares {second} value octets but only {end - pos - 4} remain",
                )
            attr = Attribute(type_, data[pos + 4 : pos + 4 + second], basic=False)
            size = 4 + second
        if registry is not None:
            registry.check(attr, payload, base_offset + pos)
        out.append(attr)
        pos += size
    return tuple(out)


def encode_attributes(attrs: tuple[Attribute, ...] | list[Attribute]) -> bytes:
    return b"".join(a.encode() for a in attrs)
