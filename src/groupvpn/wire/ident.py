"""Identification data (RFC 2407 §4.6.2.1; RFC 8052 §2.1) and its typed view.

The same (ID type, data) pair appears in the ID payload, in the SA KEK
source/destination and in the SA TEK traffic selectors.  Decoders keep the
raw octets (so re-encoding is exact) after checking that they have the
length and shape their type demands; ``id_value``/``id_data`` convert
between those octets and ``ipaddress`` objects for the code that uses them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from . import numbers as n
from .errors import WireError

_FIXED_LENGTH = {
    n.IdType.IPV4_ADDR: 4,
    n.IdType.IPV4_ADDR_SUBNET: 8,
    n.IdType.IPV4_ADDR_RANGE: 8,
    n.IdType.IPV6_ADDR: 16,
    n.IdType.IPV6_ADDR_SUBNET: 32,
    n.IdType.IPV6_ADDR_RANGE: 32,
}
_SUBNETS = {n.IdType.IPV4_ADDR_SUBNET: IPv4Network, n.IdType.IPV6_ADDR_SUBNET: IPv6Network}
_RANGES = {n.IdType.IPV4_ADDR_RANGE: IPv4Address, n.IdType.IPV6_ADDR_RANGE: IPv6Address}
_TEXT = {n.IdType.FQDN, n.IdType.USER_FQDN}


@dataclass(frozen=True, slots=True)
class AddressRange:
    """ID_IPV4_ADDR_RANGE / ID_IPV6_ADDR_RANGE: inclusive first..last."""

    first: IPv4Address | IPv6Address
    last: IPv4Address | IPv6Address

    def __post_init__(self) -> None:
        if self.first.version != self.last.version or self.first > self.last:
            raise ValueError(f"invalid address range {self.first}..{self.last}")


@dataclass(frozen=True, slots=True)
class Oid:
    """ID_OID data (RFC 8052 §2.1): a DER OID and an optional OID-specific payload."""

    oid: bytes
    specific: bytes = b""

    def __post_init__(self) -> None:
        if not 0 < len(self.oid) <= 0xFF or len(self.specific) > 0xFFFF:
            raise ValueError("OID must be 1..255 octets, OID-specific payload at most 65535")

    def encode(self) -> bytes:
        return bytes([len(self.oid)]) + self.oid + struct.pack("!H", len(self.specific)) + self.specific


Address = IPv4Address | IPv6Address | IPv4Network | IPv6Network | AddressRange
IdValue = Address | Oid | str | bytes


def _mask_prefix(mask: bytes) -> int | None:
    """Prefix length of a contiguous netmask, or None."""
    bits = len(mask) * 8
    value = int.from_bytes(mask, "big")
    prefix = bits - (~value & ((1 << bits) - 1)).bit_length()
    return prefix if value == ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1) else None


def check_id_data(id_type: int, data: bytes, payload: str, offset: int) -> None:
    """Raise ``WireError`` unless ``data`` is well formed for ``id_type``.

    ``offset`` is the absolute offset of the ID Type octet, where every
    problem is reported.  Types 0 and the unassigned 14..248 are rejected;
    private-use types (249..255) are opaque.
    """
    if id_type == n.IdType.RESERVED or n.IdType.OID < id_type < n.ID_PRIVATE_USE:
        raise WireError(payload, offset, f"unknown ID type {id_type}")
    want = _FIXED_LENGTH.get(id_type)
    if want is not None and len(data) != want:
        raise WireError(
            payload, offset, f"{n.IdType(id_type).name} needs {want} data octets, got {len(data)}"
        )
    half = len(data) // 2
    if id_type in _SUBNETS and _mask_prefix(data[half:]) is None:
        raise WireError(payload, offset, f"{n.IdType(id_type).name} mask {data[half:].hex()} is not contiguous")
    if id_type in _RANGES and data[:half] > data[half:]:
        raise WireError(payload, offset, f"{n.IdType(id_type).name} starts after it ends")
    if id_type == n.IdType.OID:
        _check_oid(data, payload, offset)


def _check_oid(data: bytes, payload: str, offset: int) -> None:
    if not data or data[0] == 0 or len(data) < 1 + data[0] + 2:
        raise WireError(payload, offset, "ID_OID data is too short for its OID length")
    specific = struct.unpack_from("!H", data, 1 + data[0])[0]
    if len(data) != 1 + data[0] + 2 + specific:
        raise WireError(
            payload,
            offset,
            f"ID_OID lengths add up to {1 + data[0] + 2 + specific} octets but data has {len(data)}",
        )


def id_value(id_type: int, data: bytes) -> IdValue:
    """Typed view of data already accepted by ``check_id_data``."""
    half = len(data) // 2
    if id_type == n.IdType.IPV4_ADDR:
        return IPv4Address(data)
    if id_type == n.IdType.IPV6_ADDR:
        return IPv6Address(data)
    if id_type in _SUBNETS:
        return ip_network((bytes(data[:half]), _mask_prefix(data[half:])), strict=False)
    if id_type in _RANGES:
        make = _RANGES[id_type]
        return AddressRange(make(data[:half]), make(data[half:]))
    if id_type == n.IdType.OID:
        oid_len = data[0]
        return Oid(bytes(data[1 : 1 + oid_len]), bytes(data[1 + oid_len + 2 :]))
    if id_type in _TEXT:
        return data.decode("ascii", "backslashreplace")
    return bytes(data)


def id_data(value: Address | Oid) -> tuple[n.IdType, bytes]:
    """ID type and data octets for an address, subnet, range or OID."""
    if isinstance(value, IPv4Address):
        return n.IdType.IPV4_ADDR, value.packed
    if isinstance(value, IPv6Address):
        return n.IdType.IPV6_ADDR, value.packed
    if isinstance(value, IPv4Network):
        return n.IdType.IPV4_ADDR_SUBNET, value.network_address.packed + value.netmask.packed
    if isinstance(value, IPv6Network):
        return n.IdType.IPV6_ADDR_SUBNET, value.network_address.packed + value.netmask.packed
    if isinstance(value, AddressRange):
        kind = n.IdType.IPV4_ADDR_RANGE if value.first.version == 4 else n.IdType.IPV6_ADDR_RANGE
        return kind, value.first.packed + value.last.packed
    if isinstance(value, Oid):
        return n.IdType.OID, value.encode()
    raise TypeError(f"no ID type for {value!r}")


def describe_id(id_type: int, data: bytes) -> str:
    """Display form of ID data: addresses and names as text, opaque data as hex."""
    value = id_value(id_type, data)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, AddressRange):
        return f"{value.first}-{value.last}"
    if isinstance(value, Oid):
        return f"oid={value.oid.hex()} specific={value.specific.hex()}"
    return str(value)


@dataclass(frozen=True, slots=True)
class TrafficId:
    """An SA KEK / SA TEK identity: ID Type (1) | Port (2) | Data Len (1) | Data.

    RFC 6407 §5.3/§5.5.1 list a "DST ID Prot" octet that their figures omit;
    the figure layout (no such octet) is used, as gdoid and Wireshark do.
    """

    id_type: int
    data: bytes
    port: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.id_type <= 0xFF or not 0 <= self.port <= 0xFFFF or len(self.data) > 0xFF:
            raise ValueError("ID type, port or data length out of range")

    @classmethod
    def of(cls, value: Address, port: int = 0) -> TrafficId:
        id_type, data = id_data(value)
        return cls(id_type, data, port)

    @property
    def value(self) -> IdValue:
        return id_value(self.id_type, self.data)

    def encode(self) -> bytes:
        return struct.pack("!BHB", self.id_type, self.port, len(self.data)) + self.data

    @classmethod
    def decode(cls, buf: bytes, pos: int, payload: str, base_offset: int) -> tuple[TrafficId, int]:
        """Decode at ``buf[pos:]``; return the identity and the position after it."""
        if len(buf) - pos < 4:
            raise WireError(payload, base_offset + pos, "truncated identity (needs type, port, length)")
        id_type, port, length = struct.unpack_from("!BHB", buf, pos)
        if pos + 4 + length > len(buf):
            raise WireError(
                payload,
                base_offset + pos + 3,
                f"identity data length {length} runs past the payload ({len(buf) - pos - 4} left)",
            )
        data = bytes(buf[pos + 4 : pos + 4 + length])
        check_id_data(id_type, data, payload, base_offset + pos)
        return cls(id_type, data, port), pos + 4 + length

    def to_dict(self) -> dict[str, object]:
        return {
            "type": n.name_of(n.IdType, self.id_type),
            "port": self.port,
            "data": describe_id(self.id_type, self.data),
        }
