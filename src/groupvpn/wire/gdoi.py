"""GDOI payloads (RFC 6407 §5): SA (GDOI form), SA KEK, GAP, SA TEK, KD, SEQ.

Same conventions as ``isakmp``: frozen dataclasses, ``encode_body`` /
``decode_body(body, offset)``, lengths and next-payload fields computed on
encode and checked on decode.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from . import numbers as n
from .attributes import (
    GAP_REGISTRY,
    IPSEC_REGISTRY,
    KEK_KEY_REGISTRY,
    KEK_REGISTRY,
    LKH_KEY_REGISTRY,
    SID_KEY_REGISTRY,
    TEK_KEY_REGISTRY,
    Attribute,
    AttributeRegistry,
    decode_attributes,
    encode_attributes,
)
from .errors import WireError
from .ident import TrafficId
from .isakmp import (
    GENERIC_HEADER,
    PayloadBase,
    describe_attributes,
    need,
    read_generic_header,
    zero,
)

KEK_SPI_SIZE = 16
TEK_SPI_SIZE = 4


@dataclass(frozen=True, slots=True)
class SequenceNumber(PayloadBase):
    """SEQ (RFC 6407 §5.7): the GROUPKEY-PUSH sequence number; Payload Length MUST be 8."""

    payload_type: ClassVar[int] = n.PayloadType.SEQ
    NAME: ClassVar[str] = "SEQ"

    number: int

    def encode_body(self) -> bytes:
        return struct.pack("!I", self.number)

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> SequenceNumber:
        if len(body) != 4:
            raise WireError(cls.NAME, offset - 2, f"payload length is {len(body) + 4}, must be 8")
        return cls(struct.unpack("!I", body)[0])


@dataclass(frozen=True, slots=True)
class Gap(PayloadBase):
    """Group Associated Policy (RFC 6407 §5.4): inside the SA, or alone in PULL message 3."""

    payload_type: ClassVar[int] = n.PayloadType.GAP
    NAME: ClassVar[str] = "GAP"

    attributes: tuple[Attribute, ...]

    def encode_body(self) -> bytes:
        return encode_attributes(self.attributes)

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> Gap:
        return cls(decode_attributes(body, cls.NAME, offset, GAP_REGISTRY))

    def describe(self) -> dict[str, object]:
        return {"attributes": describe_attributes(GAP_REGISTRY, self.attributes)}


@dataclass(frozen=True, slots=True)
class SaKek(PayloadBase):
    """SA KEK (RFC 6407 §5.3), figure layout: no DST ID Prot octet, SPI (16) + RESERVED2 (4).

    ``spi`` is CKY-I | CKY-R of the GROUPKEY-PUSH headers it protects.
    """

    payload_type: ClassVar[int] = n.PayloadType.SAK
    NAME: ClassVar[str] = "SA KEK"

    protocol: int
    src: TrafficId
    dst: TrafficId
    spi: bytes
    attributes: tuple[Attribute, ...] = ()

    def __post_init__(self) -> None:
        if len(self.spi) != KEK_SPI_SIZE:
            raise ValueError("the KEK SPI is 16 octets (CKY-I | CKY-R)")

    def encode_body(self) -> bytes:
        return (
            bytes([self.protocol])
            + self.src.encode()
            + self.dst.encode()
            + self.spi
            + bytes(4)
            + encode_attributes(self.attributes)
        )

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> SaKek:
        need(body, 1, cls.NAME, offset)
        src, pos = TrafficId.decode(body, 1, cls.NAME, offset)
        dst, pos = TrafficId.decode(body, pos, cls.NAME, offset)
        need(body, pos + KEK_SPI_SIZE + 4, cls.NAME, offset)
        spi = bytes(body[pos : pos + KEK_SPI_SIZE])
        pos += KEK_SPI_SIZE
        zero(struct.unpack_from("!I", body, pos)[0], cls.NAME, offset + pos, "RESERVED2")
        attrs = decode_attributes(body[pos + 4 :], cls.NAME, offset + pos + 4, KEK_REGISTRY)
        return cls(body[0], src, dst, spi, attrs)

    def describe(self) -> dict[str, object]:
        return {
            "protocol": self.protocol,
            "src": self.src.to_dict(),
            "dst": self.dst.to_dict(),
            "spi": self.spi.hex(),
            "attributes": describe_attributes(KEK_REGISTRY, self.attributes),
        }


@dataclass(frozen=True, slots=True)
class IpsecTek:
    """The ESP/AH TEK protocol-specific part of an SA TEK (RFC 6407 §5.5.1, figure layout)."""

    protocol: int
    src: TrafficId
    dst: TrafficId
    transform_id: int
    spi: bytes
    attributes: tuple[Attribute, ...] = ()

    def __post_init__(self) -> None:
        if len(self.spi) != TEK_SPI_SIZE:
            raise ValueError("a TEK SPI is 4 octets")

    def encode(self) -> bytes:
        return (
            bytes([self.protocol])
            + self.src.encode()
            + self.dst.encode()
            + bytes([self.transform_id])
            + self.spi
            + encode_attributes(self.attributes)
        )

    @classmethod
    def decode(cls, data: bytes, offset: int) -> IpsecTek:
        name = SaTek.NAME
        need(data, 1, name, offset)
        src, pos = TrafficId.decode(data, 1, name, offset)
        dst, pos = TrafficId.decode(data, pos, name, offset)
        need(data, pos + 1 + TEK_SPI_SIZE, name, offset)
        transform_id, spi, pos = data[pos], bytes(data[pos + 1 : pos + 1 + TEK_SPI_SIZE]), pos + 1 + TEK_SPI_SIZE
        attrs = decode_attributes(data[pos:], name, offset + pos, IPSEC_REGISTRY)
        return cls(data[0], src, dst, transform_id, spi, attrs)

    def to_dict(self) -> dict[str, object]:
        return {
            "protocol": self.protocol,
            "src": self.src.to_dict(),
            "dst": self.dst.to_dict(),
            "transform_id": n.name_of(n.EspTransform, self.transform_id),
            "spi": self.spi.hex(),
            "attributes": describe_attributes(IPSEC_REGISTRY, self.attributes),
        }


_IPSEC_TEK_PROTOCOLS = frozenset({n.GdoiProtocol.IPSEC_ESP, n.GdoiProtocol.IPSEC_AH})


@dataclass(frozen=True, slots=True)
class SaTek(PayloadBase):
    """SA TEK (RFC 6407 §5.5): an ``IpsecTek`` for ESP/AH, raw octets for other Protocol-IDs."""

    payload_type: ClassVar[int] = n.PayloadType.SAT
    NAME: ClassVar[str] = "SA TEK"

    protocol_id: int
    policy: IpsecTek | bytes

    def __post_init__(self) -> None:
        if (self.protocol_id in _IPSEC_TEK_PROTOCOLS) != isinstance(self.policy, IpsecTek):
            raise ValueError("ESP/AH SA TEKs carry an IpsecTek, other protocols raw octets")

    def encode_body(self) -> bytes:
        policy = self.policy.encode() if isinstance(self.policy, IpsecTek) else self.policy
        return bytes([self.protocol_id]) + policy

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> SaTek:
        need(body, 1, cls.NAME, offset)
        protocol_id = body[0]
        if protocol_id == n.GdoiProtocol.KEK:
            raise WireError(cls.NAME, offset, "Protocol-ID 0 is reserved")
        if protocol_id in _IPSEC_TEK_PROTOCOLS:
            return cls(protocol_id, IpsecTek.decode(body[1:], offset + 1))
        return cls(protocol_id, bytes(body[1:]))

    def describe(self) -> dict[str, object]:
        policy = self.policy.to_dict() if isinstance(self.policy, IpsecTek) else self.policy.hex()
        return {"protocol_id": n.name_of(n.GdoiProtocol, self.protocol_id), "policy": policy}


class _NoClasses(IntEnum):
    """A private-use key packet type defines no attribute class we know."""


_PRIVATE_KEY_REGISTRY = AttributeRegistry("private key", _NoClasses, frozenset(), strict=False, opaque=True)

# KD type -> (attribute registry, required SPI size: the SAT/SAK SPI it matches; SID has none).
_KEY_PACKETS: dict[int, tuple[AttributeRegistry, int]] = {
    n.KeyPacketType.TEK: (TEK_KEY_REGISTRY, TEK_SPI_SIZE),
    n.KeyPacketType.KEK: (KEK_KEY_REGISTRY, KEK_SPI_SIZE),
    n.KeyPacketType.LKH: (LKH_KEY_REGISTRY, KEK_SPI_SIZE),
    n.KeyPacketType.SID: (SID_KEY_REGISTRY, 0),
}
_KEY_PACKET_HEADER = struct.Struct("!BBHB")  # KD Type, RESERVED, KD Length, SPI Size


def _key_packet_registry(kd_type: int) -> AttributeRegistry:
    return _KEY_PACKETS[kd_type][0] if kd_type in _KEY_PACKETS else _PRIVATE_KEY_REGISTRY


@dataclass(frozen=True, slots=True)
class KeyPacket:
    """One key packet of a KD payload (RFC 6407 §5.6, Figure 10).

    KD Length includes the 4-octet packet header.  Private-use types
    (128-255) keep their attributes without interpreting them.
    """

    kd_type: int
    spi: bytes
    attributes: tuple[Attribute, ...]

    def __post_init__(self) -> None:
        size = _KEY_PACKETS.get(self.kd_type, (None, len(self.spi)))[1]
        if len(self.spi) != size:
            raise ValueError(f"KD type {self.kd_type} needs a {size}-octet SPI")

    def encode(self) -> bytes:
        tail = self.spi + encode_attributes(self.attributes)
        return _KEY_PACKET_HEADER.pack(self.kd_type, 0, 5 + len(tail), len(self.spi)) + tail

    @classmethod
    def decode(cls, buf: bytes, pos: int, offset: int) -> tuple[KeyPacket, int]:
        """Decode the packet at ``buf[pos:]`` (``offset`` is ``buf``'s absolute offset)."""
        name = KeyDownload.NAME
        at = offset + pos
        if len(buf) - pos < _KEY_PACKET_HEADER.size:
            raise WireError(name, at, f"{len(buf) - pos} octets left, too short for a key packet")
        kd_type, reserved, length, spi_size = _KEY_PACKET_HEADER.unpack_from(buf, pos)
        if kd_type not in _KEY_PACKETS and kd_type < n.PRIVATE_USE:
            raise WireError(name, at, f"unknown KD type {kd_type}")
        zero(reserved, name, at + 1, "key packet RESERVED")
        if not _KEY_PACKET_HEADER.size + spi_size <= length <= len(buf) - pos:
            raise WireError(
                name, at + 2, f"KD length {length} does not fit SPI size {spi_size} and {len(buf) - pos} octets left"
            )
        want = _KEY_PACKETS.get(kd_type, (None, spi_size))[1]
        if spi_size != want:
            kind = n.name_of(n.KeyPacketType, kd_type)
            raise WireError(name, at + 4, f"{kind} SPI size is {spi_size}, must be {want}")
        start = pos + _KEY_PACKET_HEADER.size
        attrs = decode_attributes(
            buf[start + spi_size : pos + length], name, offset + start + spi_size, _key_packet_registry(kd_type)
        )
        return cls(kd_type, bytes(buf[start : start + spi_size]), attrs), pos + length

    def to_dict(self) -> dict[str, object]:
        return {
            "kd_type": n.name_of(n.KeyPacketType, self.kd_type),
            "spi": self.spi.hex(),
            "attributes": describe_attributes(_key_packet_registry(self.kd_type), self.attributes),
        }


@dataclass(frozen=True, slots=True)
class KeyDownload(PayloadBase):
    """KD (RFC 6407 §5.6): Number of Key Packets (2) | RESERVED2 (2) | key packets."""

    payload_type: ClassVar[int] = n.PayloadType.KD
    NAME: ClassVar[str] = "KD"

    packets: tuple[KeyPacket, ...]

    def encode_body(self) -> bytes:
        return struct.pack("!HH", len(self.packets), 0) + b"".join(p.encode() for p in self.packets)

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> KeyDownload:
        need(body, 4, cls.NAME, offset)
        count, reserved = struct.unpack_from("!HH", body)
        zero(reserved, cls.NAME, offset + 2, "RESERVED2")
        packets = []
        pos = 4
        while pos < len(body):
            packet, pos = KeyPacket.decode(body, pos, offset)
            packets.append(packet)
        if len(packets) != count:
            raise WireError(cls.NAME, offset, f"Number of Key Packets is {count} but {len(packets)} are present")
        return cls(tuple(packets))

    def describe(self) -> dict[str, object]:
        return {"packets": [p.to_dict() for p in self.packets]}


# SA attribute payloads that may follow each one (RFC 6407 §5.2.1): SAK, GAP, SATs.
_SA_FOLLOWERS: dict[int, frozenset[int]] = {
    n.PayloadType.NONE: frozenset({n.PayloadType.SAK, n.PayloadType.GAP, n.PayloadType.SAT}),
    n.PayloadType.SAK: frozenset({n.PayloadType.GAP, n.PayloadType.SAT, n.PayloadType.NONE}),
    n.PayloadType.GAP: frozenset({n.PayloadType.SAT, n.PayloadType.NONE}),
    n.PayloadType.SAT: frozenset({n.PayloadType.SAT, n.PayloadType.NONE}),
}
_SA_ATTRIBUTE_PAYLOADS: dict[int, type[SaKek] | type[Gap] | type[SaTek]] = {
    n.PayloadType.SAK: SaKek,
    n.PayloadType.GAP: Gap,
    n.PayloadType.SAT: SaTek,
}
_GDOI_SA_HEADER = struct.Struct("!IIHH")  # DOI, Situation, SA Attribute Next Payload, RESERVED


@dataclass(frozen=True, slots=True)
class GroupSa(PayloadBase):
    """The GDOI SA payload (RFC 6407 §5.2) with its SA attribute payloads.

    DOI 2, Situation 0, a 2-octet SA Attribute Next Payload and 2 reserved
    octets, then SAK, GAP, SATs chained inside the SA's own length.  The
    fields make the mandated order the only one expressible.
    """

    payload_type: ClassVar[int] = n.PayloadType.SA
    NAME: ClassVar[str] = "SA"

    kek: SaKek | None = None
    gap: Gap | None = None
    teks: tuple[SaTek, ...] = ()

    def __post_init__(self) -> None:
        if self.kek is None and not self.teks:
            raise ValueError("a GDOI SA carries at least one SA KEK or SA TEK")

    @property
    def attribute_payloads(self) -> tuple[SaKek | Gap | SaTek, ...]:
        return tuple(p for p in (self.kek, self.gap) if p is not None) + self.teks

    def encode_body(self) -> bytes:
        chain = self.attribute_payloads
        head = _GDOI_SA_HEADER.pack(n.DOI.GDOI, n.Situation.NONE, chain[0].payload_type, 0)
        types = [p.payload_type for p in chain[1:]] + [n.PayloadType.NONE]
        return head + b"".join(p.encode(t) for p, t in zip(chain, types))

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> GroupSa:
        need(body, _GDOI_SA_HEADER.size, cls.NAME, offset)
        doi, situation, ptype, reserved = _GDOI_SA_HEADER.unpack_from(body)
        if doi != n.DOI.GDOI:
            raise WireError(cls.NAME, offset, f"DOI is {doi}, a GDOI exchange needs 2")
        zero(situation, cls.NAME, offset + 4, "Situation")
        zero(reserved, cls.NAME, offset + 10, "RESERVED")
        found: dict[int, list[PayloadBase]] = {t: [] for t in _SA_ATTRIBUTE_PAYLOADS}
        previous, pos = n.PayloadType.NONE, _GDOI_SA_HEADER.size
        where = offset + 8
        while ptype != n.PayloadType.NONE or previous == n.PayloadType.NONE:
            if ptype not in _SA_FOLLOWERS[previous]:
                after = "the SA header" if previous == n.PayloadType.NONE else n.PayloadType(previous).name
                raise WireError(cls.NAME, where, f"SA attribute payload {ptype} may not follow {after}")
            payload = _SA_ATTRIBUTE_PAYLOADS[ptype]
            next_type, length = read_generic_header(body, pos, payload.NAME, offset)
            found[ptype].append(payload.decode_body(body[pos + GENERIC_HEADER.size : pos + length], offset + pos + 4))
            previous, ptype, where = ptype, next_type, offset + pos
            pos += length
            if ptype != n.PayloadType.NONE and pos == len(body):
                raise WireError(cls.NAME, where, "next SA attribute payload announced but the SA payload ends")
        if pos != len(body):
            raise WireError(cls.NAME, offset + pos, f"{len(body) - pos} octets after the last SA attribute payload")
        if not found[n.PayloadType.SAK] and not found[n.PayloadType.SAT]:
            raise WireError(cls.NAME, offset, "GDOI SA carries neither SA KEK nor SA TEK")
        kek, gap = found[n.PayloadType.SAK], found[n.PayloadType.GAP]
        return cls(
            kek[0] if kek else None,  # type: ignore[arg-type]
            gap[0] if gap else None,  # type: ignore[arg-type]
            tuple(found[n.PayloadType.SAT]),  # type: ignore[arg-type]
        )

    def describe(self) -> dict[str, object]:
        return {
            "doi": "GDOI",
            "situation": 0,
            "attribute_payloads": [p.to_dict() for p in self.attribute_payloads],
        }

