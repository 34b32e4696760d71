"""ISAKMP data attributes (RFC 2408 §3.3): TV ("basic") and TLV ("variable").

An attribute keeps the form it arrived in so that re-encoding is byte
exact; registries decide which classes must be basic (see ``numbers``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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


def decode_attributes(
    data: bytes, payload: str, base_offset: int = 0
) -> tuple[Attribute, ...]:
    """Decode a run of attributes that must fill ``data`` exactly."""
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
            out.append(Attribute(type_, data[pos + 2 : pos + 4], basic=True))
            pos += 4
            continue
        if pos + 4 + second > end:
            raise WireError(
                payload,
                base_offset + pos,
                f"attribute {type_} declares {second} value octets but only {end - pos - 4} remain",
            )
        out.append(Attribute(type_, data[pos + 4 : pos + 4 + second], basic=False))
        pos += 4 + second
    return tuple(out)


def encode_attributes(attrs: tuple[Attribute, ...] | list[Attribute]) -> bytes:
    return b"".join(a.encode() for a in attrs)
