"""ISAKMP payload framing and the IKEv1 payloads (RFC 2408 §3; RFC 2407 §4.6).

Every payload is a frozen dataclass with one codec: ``encode_body()`` gives
the octets after the 4-octet generic header (what IKE hashes call ``_b``),
``encode(next_payload)`` the complete payload, and the ``decode_body``
classmethod takes a body and the absolute offset of its first octet (so
errors point into the buffer the caller handed in).  Next Payload and
Payload Length are never stored: they are computed on encode and checked
on decode.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar, Self, TypeVar

from . import numbers as n
from .attributes import (
    IKE_REGISTRY,
    IPSEC_PROPOSAL_REGISTRY,
    Attribute,
    AttributeRegistry,
    decode_attributes,
    encode_attributes,
)
from .errors import WireError
from .ident import Address, IdValue, Oid, check_id_data, describe_id, id_data, id_value

GENERIC_HEADER = struct.Struct("!BBH")
_MAX_BODY = 0xFFFF - GENERIC_HEADER.size

T = TypeVar("T")


def read_generic_header(buf: bytes, pos: int, payload: str, base_offset: int) -> tuple[int, int]:
    """Next Payload and Payload Length of the generic header at ``buf[pos:]``.

    Checks that RESERVED is zero and that the declared length covers the
    header and stays inside ``buf``.
    """
    left = len(buf) - pos
    if left < GENERIC_HEADER.size:
        raise WireError(payload, base_offset + pos, f"{left} octets left, too short for a payload header")
    next_payload, reserved, length = GENERIC_HEADER.unpack_from(buf, pos)
    if reserved:
        raise WireError(payload, base_offset + pos + 1, f"RESERVED octet is {reserved:#04x}, must be 0")
    if length < GENERIC_HEADER.size:
        raise WireError(payload, base_offset + pos + 2, f"payload length {length} is less than 4")
    if length > left:
        raise WireError(
            payload, base_offset + pos + 2, f"payload length {length} runs past the end ({left} octets left)"
        )
    return next_payload, length


def frame(next_payload: int, body: bytes) -> bytes:
    """Prefix ``body`` with a generic payload header."""
    if len(body) > _MAX_BODY:
        raise ValueError(f"payload body of {len(body)} octets does not fit a 16-bit length")
    return GENERIC_HEADER.pack(next_payload, 0, GENERIC_HEADER.size + len(body)) + body


def encode_run(items: Sequence[PayloadBase], more: int) -> bytes:
    """Encode same-typed nested payloads chained by ``more`` (Proposals in an SA, Transforms in a Proposal)."""
    last = len(items) - 1
    return b"".join(item.encode(more if i < last else n.PayloadType.NONE) for i, item in enumerate(items))


def decode_run(
    buf: bytes,
    more: int,
    count: int | None,
    payload: str,
    base_offset: int,
    decode: Callable[[bytes, int], T],
) -> tuple[T, ...]:
    """Decode nested payloads that chain with ``more`` and fill ``buf`` exactly.

    ``count`` is the number the container announces, if it has such a field.
    """
    out: list[T] = []
    pos = 0
    next_payload = more if buf else n.PayloadType.NONE
    while next_payload != n.PayloadType.NONE:
        next_payload, length = read_generic_header(buf, pos, payload, base_offset)
        if next_payload not in (more, n.PayloadType.NONE):
            raise WireError(
                payload, base_offset + pos, f"next payload {next_payload} inside a run of type {more}"
            )
        out.append(decode(buf[pos + GENERIC_HEADER.size : pos + length], base_offset + pos + GENERIC_HEADER.size))
        pos += length
        if next_payload == more and pos == len(buf):
            raise WireError(payload, base_offset + pos, "next payload announced but the container ends")
    if pos != len(buf):
        raise WireError(payload, base_offset + pos, f"{len(buf) - pos} octets after the last {payload}")
    if count is not None and len(out) != count:
        raise WireError(payload, base_offset, f"header announces {count} but {len(out)} are present")
    return tuple(out)


def need(body: bytes, size: int, payload: str, offset: int) -> None:
    """Raise unless ``body`` holds the ``size`` fixed octets a payload starts with."""
    if len(body) < size:
        raise WireError(payload, offset, f"body of {len(body)} octets is shorter than the {size} fixed octets")


def zero(value: int, payload: str, offset: int, field: str) -> None:
    if value:
        raise WireError(payload, offset, f"{field} is {value:#x}, must be 0")


def describe_attributes(registry: AttributeRegistry, attrs: Sequence[Attribute]) -> list[dict[str, object]]:
    return [registry.describe(a) for a in attrs]


class PayloadBase(ABC):
    """Shared framing and display; subclasses are frozen dataclasses."""

    __slots__ = ()
    payload_type: ClassVar[int]
    NAME: ClassVar[str]

    @abstractmethod
    def encode_body(self) -> bytes:
        """The payload body: everything after the generic header."""

    def encode(self, next_payload: int = n.PayloadType.NONE) -> bytes:
        """The complete payload, generic header included."""
        return frame(next_payload, self.encode_body())

    def describe(self) -> dict[str, object]:
        """Decoded fields for display (octets as hex); overridden where values need registry names."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self))  # type: ignore[arg-type]
        return {name: v.hex() if isinstance(v, bytes) else v for name, v in values}

    def to_dict(self) -> dict[str, object]:
        return {"payload": self.NAME, **self.describe()}


@dataclass(frozen=True, slots=True)
class Transform(PayloadBase):
    """Transform (RFC 2408 §3.6): number, transform ID and SA attributes."""

    payload_type: ClassVar[int] = n.PayloadType.TRANSFORM
    NAME: ClassVar[str] = "Transform"

    number: int
    transform_id: int
    attributes: tuple[Attribute, ...] = ()

    def encode_body(self) -> bytes:
        return struct.pack("!BBH", self.number, self.transform_id, 0) + encode_attributes(self.attributes)

    @classmethod
    def decode_body(cls, body: bytes, offset: int, registry: AttributeRegistry = IKE_REGISTRY) -> Transform:
        need(body, 4, cls.NAME, offset)
        number, transform_id, reserved = struct.unpack_from("!BBH", body)
        zero(reserved, cls.NAME, offset + 2, "RESERVED2")
        attrs = decode_attributes(body[4:], cls.NAME, offset + 4, registry)
        return cls(number, transform_id, attrs)

    def describe(self, registry: AttributeRegistry = IKE_REGISTRY) -> dict[str, object]:
        return {
            "number": self.number,
            "transform_id": self.transform_id,
            "attributes": describe_attributes(registry, self.attributes),
        }


def _transform_registry(protocol: int) -> AttributeRegistry:
    return IKE_REGISTRY if protocol == n.ProtocolId.ISAKMP else IPSEC_PROPOSAL_REGISTRY


@dataclass(frozen=True, slots=True)
class Proposal(PayloadBase):
    """Proposal (RFC 2408 §3.5); its Transforms chain inside it."""

    payload_type: ClassVar[int] = n.PayloadType.PROPOSAL
    NAME: ClassVar[str] = "Proposal"

    number: int
    protocol: int
    transforms: tuple[Transform, ...]
    spi: bytes = b""

    def __post_init__(self) -> None:
        if len(self.spi) > 0xFF or len(self.transforms) > 0xFF:
            raise ValueError("a proposal holds at most 255 SPI octets and 255 transforms")

    def encode_body(self) -> bytes:
        head = struct.pack("!BBBB", self.number, self.protocol, len(self.spi), len(self.transforms))
        return head + self.spi + encode_run(self.transforms, n.PayloadType.TRANSFORM)

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> Proposal:
        need(body, 4, cls.NAME, offset)
        number, protocol, spi_size, count = struct.unpack_from("!BBBB", body)
        need(body, 4 + spi_size, cls.NAME, offset)
        registry = _transform_registry(protocol)
        transforms = decode_run(
            body[4 + spi_size :],
            n.PayloadType.TRANSFORM,
            count,
            Transform.NAME,
            offset + 4 + spi_size,
            lambda b, o: Transform.decode_body(b, o, registry),
        )
        return cls(number, protocol, transforms, bytes(body[4 : 4 + spi_size]))

    def describe(self) -> dict[str, object]:
        registry = _transform_registry(self.protocol)
        return {
            "number": self.number,
            "protocol": n.name_of(n.ProtocolId, self.protocol),
            "spi": self.spi.hex(),
            "transforms": [{"payload": Transform.NAME, **t.describe(registry)} for t in self.transforms],
        }


@dataclass(frozen=True, slots=True)
class SecurityAssociation(PayloadBase):
    """SA payload in proposal form (RFC 2408 §3.4), as used by Main Mode.

    Only the 4-octet Situation is supported: IPsec DOI situations with the
    secrecy/integrity bits append labelled-domain fields we do not speak.
    """

    payload_type: ClassVar[int] = n.PayloadType.SA
    NAME: ClassVar[str] = "SA"

    proposals: tuple[Proposal, ...]
    doi: int = n.DOI.GDOI
    situation: int = n.Situation.NONE

    def encode_body(self) -> bytes:
        return struct.pack("!II", self.doi, self.situation) + encode_run(self.proposals, n.PayloadType.PROPOSAL)

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> SecurityAssociation:
        need(body, 8, cls.NAME, offset)
        doi, situation = struct.unpack_from("!II", body)
        if doi not in (n.DOI.IPSEC, n.DOI.GDOI):
            raise WireError(cls.NAME, offset, f"unsupported DOI {doi}")
        if doi == n.DOI.GDOI and situation:
            raise WireError(cls.NAME, offset + 4, f"GDOI situation is {situation:#x}, must be 0")
        if situation & n.SIT_LABELLED:
            raise WireError(cls.NAME, offset + 4, f"labelled situation {situation:#x} is not supported")
        if len(body) == 8:
            raise WireError(cls.NAME, offset + 8, "SA payload carries no proposal")
        proposals = decode_run(
            body[8:], n.PayloadType.PROPOSAL, None, Proposal.NAME, offset + 8, Proposal.decode_body
        )
        return cls(proposals, doi, situation)

    def describe(self) -> dict[str, object]:
        return {
            "doi": n.name_of(n.DOI, self.doi),
            "situation": self.situation,
            "proposals": [p.to_dict() for p in self.proposals],
        }


@dataclass(frozen=True, slots=True)
class OpaquePayload(PayloadBase):
    """A payload whose body is one opaque value (KE, HASH, SIG, NONCE, VENDOR ID)."""

    data: bytes

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> Self:
        return cls(bytes(body))


@dataclass(frozen=True, slots=True)
class KeyExchange(OpaquePayload):
    """KE (RFC 2408 §3.7): the DH public value, left-padded to the prime length."""

    payload_type: ClassVar[int] = n.PayloadType.KE
    NAME: ClassVar[str] = "KE"


@dataclass(frozen=True, slots=True)
class Hash(OpaquePayload):
    """HASH (RFC 2408 §3.11): a full prf output."""

    payload_type: ClassVar[int] = n.PayloadType.HASH
    NAME: ClassVar[str] = "HASH"


@dataclass(frozen=True, slots=True)
class Signature(OpaquePayload):
    """SIG (RFC 2408 §3.12): the GROUPKEY-PUSH signature."""

    payload_type: ClassVar[int] = n.PayloadType.SIG
    NAME: ClassVar[str] = "SIG"


@dataclass(frozen=True, slots=True)
class Nonce(OpaquePayload):
    """NONCE (RFC 2408 §3.13); the 8..256 (IKE) or 8..128 (GDOI) range is the exchange's to check."""

    payload_type: ClassVar[int] = n.PayloadType.NONCE
    NAME: ClassVar[str] = "NONCE"


@dataclass(frozen=True, slots=True)
class VendorId(OpaquePayload):
    """VENDOR ID (RFC 2408 §3.16), e.g. ``numbers.DPD_VENDOR_ID``."""

    payload_type: ClassVar[int] = n.PayloadType.VENDOR_ID
    NAME: ClassVar[str] = "VENDOR ID"


@dataclass(frozen=True, slots=True)
class EncodedCertificate(PayloadBase):
    """A payload that is an encoding octet and data (CERT and CR share this form)."""

    encoding: int
    data: bytes

    def encode_body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> Self:
        need(body, 1, cls.NAME, offset)
        return cls(body[0], bytes(body[1:]))

    def describe(self) -> dict[str, object]:
        return {"encoding": n.name_of(n.CertEncoding, self.encoding), "data": self.data.hex()}


@dataclass(frozen=True, slots=True)
class Certificate(EncodedCertificate):
    """CERT (RFC 2408 §3.9)."""

    payload_type: ClassVar[int] = n.PayloadType.CERT
    NAME: ClassVar[str] = "CERT"


@dataclass(frozen=True, slots=True)
class CertificateRequest(EncodedCertificate):
    """CR (RFC 2408 §3.10): certificate type and certificate authority."""

    payload_type: ClassVar[int] = n.PayloadType.CR
    NAME: ClassVar[str] = "CR"


@dataclass(frozen=True, slots=True)
class Identification(PayloadBase):
    """ID (RFC 2407 §4.6.2; RFC 6407 §5.1; RFC 8263 §3).

    The GDOI group ID uses the same octets: its three "DOI-specific ID
    data" octets are Protocol and Port here, which the GDOI exchanges
    require to be zero.
    """

    payload_type: ClassVar[int] = n.PayloadType.ID
    NAME: ClassVar[str] = "ID"

    id_type: int
    data: bytes
    protocol: int = 0
    port: int = 0

    @classmethod
    def of(cls, value: Address | Oid, protocol: int = 0, port: int = 0) -> Identification:
        """An ID for an address, subnet, range or OID (see ``ident.id_data``)."""
        id_type, data = id_data(value)
        return cls(id_type, data, protocol, port)

    @classmethod
    def group(cls, number: int) -> Identification:
        """The GDOI group ID: ID_KEY_ID with a 4-octet big-endian group number (RFC 6407 §5.1)."""
        return cls(n.IdType.KEY_ID, number.to_bytes(4, "big"))

    @property
    def value(self) -> IdValue:
        return id_value(self.id_type, self.data)

    @property
    def group_number(self) -> int | None:
        """The group number when this is a 4-octet ID_KEY_ID, else None."""
        if self.id_type == n.IdType.KEY_ID and len(self.data) == 4:
            return int.from_bytes(self.data, "big")
        return None

    def encode_body(self) -> bytes:
        return struct.pack("!BBH", self.id_type, self.protocol, self.port) + self.data

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> Identification:
        need(body, 4, cls.NAME, offset)
        id_type, protocol, port = struct.unpack_from("!BBH", body)
        data = bytes(body[4:])
        check_id_data(id_type, data, cls.NAME, offset)
        return cls(id_type, data, protocol, port)

    def describe(self) -> dict[str, object]:
        return {
            "id_type": n.name_of(n.IdType, self.id_type),
            "protocol": self.protocol,
            "port": self.port,
            "data": describe_id(self.id_type, self.data),
        }


@dataclass(frozen=True, slots=True)
class Notify(PayloadBase):
    """NOTIFY (RFC 2408 §3.14)."""

    payload_type: ClassVar[int] = n.PayloadType.NOTIFY
    NAME: ClassVar[str] = "NOTIFY"

    notify_type: int
    doi: int = n.DOI.IPSEC
    protocol: int = n.ProtocolId.ISAKMP
    spi: bytes = b""
    data: bytes = b""

    def encode_body(self) -> bytes:
        return struct.pack("!IBBH", self.doi, self.protocol, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> Notify:
        need(body, 8, cls.NAME, offset)
        doi, protocol, spi_size, notify_type = struct.unpack_from("!IBBH", body)
        need(body, 8 + spi_size, cls.NAME, offset)
        return cls(notify_type, doi, protocol, bytes(body[8 : 8 + spi_size]), bytes(body[8 + spi_size :]))

    def describe(self) -> dict[str, object]:
        return {
            "notify_type": n.name_of(n.NotifyType, self.notify_type),
            "doi": n.name_of(n.DOI, self.doi),
            "protocol": self.protocol,
            "spi": self.spi.hex(),
            "data": self.data.hex(),
        }


@dataclass(frozen=True, slots=True)
class Delete(PayloadBase):
    """DELETE (RFC 2408 §3.15; GDOI use RFC 6407 §5.9).

    ``spi_size`` is explicit because a Delete may carry no SPI at all.
    In DOI 2 ``protocol`` is a ``GdoiProtocol`` (0 = the KEK).
    """

    payload_type: ClassVar[int] = n.PayloadType.DELETE
    NAME: ClassVar[str] = "DELETE"

    doi: int
    protocol: int
    spi_size: int
    spis: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if any(len(spi) != self.spi_size for spi in self.spis):
            raise ValueError(f"every SPI must be {self.spi_size} octets")

    def encode_body(self) -> bytes:
        return struct.pack("!IBBH", self.doi, self.protocol, self.spi_size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode_body(cls, body: bytes, offset: int) -> Delete:
        need(body, 8, cls.NAME, offset)
        doi, protocol, spi_size, count = struct.unpack_from("!IBBH", body)
        if spi_size == 0 and count:
            raise WireError(cls.NAME, offset + 6, f"{count} SPIs announced with SPI size 0")
        if len(body) - 8 != spi_size * count:
            raise WireError(
                cls.NAME,
                offset + 6,
                f"{count} SPIs of {spi_size} octets need {spi_size * count} octets, body has {len(body) - 8}",
            )
        spis = tuple(bytes(body[i : i + spi_size]) for i in range(8, len(body), spi_size or 1))
        return cls(doi, protocol, spi_size, spis)

    def describe(self) -> dict[str, object]:
        proto = n.GdoiProtocol if self.doi == n.DOI.GDOI else n.ProtocolId
        return {
            "doi": n.name_of(n.DOI, self.doi),
            "protocol": n.name_of(proto, self.protocol),
            "spi_size": self.spi_size,
            "spis": [spi.hex() for spi in self.spis],
        }


@dataclass(frozen=True, slots=True)
class RawPayload(PayloadBase):
    """A private-use (128-255) or NAT-T (20, 21) payload, kept as it came."""

    NAME: ClassVar[str] = "raw"

    payload_type: int  # type: ignore[misc]
    data: bytes

    def encode_body(self) -> bytes:
        return self.data

    @staticmethod
    def name_for(payload_type: int) -> str:
        if payload_type >= n.PRIVATE_USE:
            return f"private payload {payload_type}"
        return n.PayloadType(payload_type).name

    def to_dict(self) -> dict[str, object]:
        return {"payload": self.name_for(self.payload_type), "data": self.data.hex()}
