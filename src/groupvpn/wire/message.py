"""ISAKMP messages: the 28-octet header and the top-level payload chain.

``decode_message`` parses a datagram; when the E flag is set the body stays
ciphertext until the caller (who owns the keys) decrypts it and hands the
plaintext to ``Message.decode_plaintext`` / ``decode_payloads``.  Building
goes the other way: ``encode_payloads`` (or ``encode_each`` for the exact
octets of single payloads, as HASH and SIG computations need) gives the
plaintext, and ``Message.sealed`` frames the ciphertext.

The SA payload has two forms: inside GROUPKEY-PULL/PUSH (exchanges 32/33,
GDOI DOI) it is ``GroupSa``; everywhere else the proposal form
``SecurityAssociation``.  Decoding therefore takes the exchange type.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from . import numbers as n
from .errors import WireError
from .gdoi import Gap, GroupSa, KeyDownload, SaKek, SaTek, SequenceNumber
from .isakmp import (
    GENERIC_HEADER,
    Certificate,
    CertificateRequest,
    Delete,
    Hash,
    Identification,
    KeyExchange,
    Nonce,
    Notify,
    RawPayload,
    SecurityAssociation,
    Signature,
    VendorId,
    read_generic_header,
)

Payload = (
    SecurityAssociation
    | GroupSa
    | KeyExchange
    | Identification
    | Certificate
    | CertificateRequest
    | Hash
    | Signature
    | Nonce
    | Notify
    | Delete
    | VendorId
    | KeyDownload
    | SequenceNumber
    | Gap
    | RawPayload
)

HEADER = struct.Struct("!8s8sBBBBII")
HEADER_NAME = "ISAKMP header"
GDOI_EXCHANGES = frozenset({n.ExchangeType.GROUPKEY_PULL, n.ExchangeType.GROUPKEY_PUSH})
_PRIVATE_EXCHANGE = 240
_RAW_PAYLOADS = frozenset({n.PayloadType.NAT_D, n.PayloadType.NAT_OA})
_TOP_LEVEL: dict[int, type[Payload]] = {
    cls.payload_type: cls
    for cls in (
        KeyExchange,
        Identification,
        Certificate,
        CertificateRequest,
        Hash,
        Signature,
        Nonce,
        Notify,
        Delete,
        VendorId,
        KeyDownload,
        SequenceNumber,
        Gap,
    )
}
# Payloads that only exist nested in another one.
_NESTED = {n.PayloadType.PROPOSAL: "SA", n.PayloadType.TRANSFORM: "Proposal"}
_NESTED.update({cls.payload_type: "GDOI SA" for cls in (SaKek, SaTek)})


@dataclass(frozen=True, slots=True)
class Header:
    """The ISAKMP header (RFC 2408 §3.1), every field explicit.

    ``length`` is the whole datagram including encryption padding, and
    ``next_payload`` the type of the first (possibly encrypted) payload.
    """

    icookie: bytes
    rcookie: bytes
    next_payload: int
    exchange: int
    flags: n.Flags
    message_id: int
    length: int
    version: int = n.ISAKMP_VERSION

    def __post_init__(self) -> None:
        if len(self.icookie) != 8 or len(self.rcookie) != 8:
            raise ValueError("cookies are 8 octets")

    @classmethod
    def make(
        cls,
        icookie: bytes,
        rcookie: bytes,
        exchange: int,
        next_payload: int,
        body_length: int,
        *,
        message_id: int = 0,
        flags: n.Flags = n.Flags.NONE,
    ) -> Header:
        """A header for a body of ``body_length`` octets (ciphertext length when encrypted)."""
        return cls(icookie, rcookie, next_payload, exchange, n.Flags(flags), message_id, HEADER.size + body_length)

    def encode(self) -> bytes:
        return HEADER.pack(
            self.icookie,
            self.rcookie,
            self.next_payload,
            self.version,
            self.exchange,
            self.flags,
            self.message_id,
            self.length,
        )

    @classmethod
    def decode(cls, data: bytes) -> Header:
        """Decode and check the first 28 octets of ``data``."""
        if len(data) < HEADER.size:
            raise WireError(HEADER_NAME, 0, f"datagram of {len(data)} octets is shorter than the 28-octet header")
        icookie, rcookie, next_payload, version, exchange, flags, message_id, length = HEADER.unpack_from(data)
        if version >> 4 != 1:
            raise WireError(HEADER_NAME, 17, f"major version {version >> 4}, only 1 is supported")
        if exchange not in n.ExchangeType._value2member_map_ and exchange < _PRIVATE_EXCHANGE:
            raise WireError(HEADER_NAME, 18, f"unknown exchange type {exchange}")
        if flags & ~0x07:
            raise WireError(HEADER_NAME, 19, f"undefined flag bits in {flags:#04x}")
        return cls(icookie, rcookie, next_payload, exchange, n.Flags(flags), message_id, length, version)

    def to_dict(self) -> dict[str, object]:
        return {
            "icookie": self.icookie.hex(),
            "rcookie": self.rcookie.hex(),
            "next_payload": n.name_of(n.PayloadType, self.next_payload),
            "version": f"{self.version >> 4}.{self.version & 0xF}",
            "exchange": n.name_of(n.ExchangeType, self.exchange),
            "flags": [f.name for f in n.Flags if f and f in self.flags],
            "message_id": f"{self.message_id:08x}",
            "length": self.length,
        }


def _sa_class(exchange: int, body: bytes) -> type[Payload]:
    """GDOI-form SA only in a GDOI exchange under DOI 2.

    Exchanges 32/33 are DOI-specific: with the IPsec DOI they are Quick Mode
    and New Group Mode, whose SA payloads carry proposals (RFC 2408 §3.1).
    """
    if exchange in GDOI_EXCHANGES and body[:4] == n.DOI.GDOI.to_bytes(4, "big"):
        return GroupSa
    return SecurityAssociation


def _payload_class(ptype: int, exchange: int, offset: int) -> type[Payload] | None:
    """The class decoding ``ptype`` (SA: refined by ``_sa_class``); None for payloads kept raw."""
    if ptype == n.PayloadType.SA:
        return GroupSa if exchange in GDOI_EXCHANGES else SecurityAssociation
    cls = _TOP_LEVEL.get(ptype)
    if cls is not None:
        return cls
    if ptype in _RAW_PAYLOADS or ptype >= n.PRIVATE_USE:
        return None
    if ptype in _NESTED:
        problem = f"{n.PayloadType(ptype).name} payload outside its {_NESTED[ptype]} payload"
    else:
        problem = f"unknown payload type {ptype}"
    raise WireError("payload chain", offset, problem)


def _decode_chain(
    first: int, data: bytes, exchange: int, base_offset: int
) -> tuple[tuple[Payload, ...], int]:
    """Payloads chained from ``first`` and the position where the chain ended."""
    out: list[Payload] = []
    ptype, pos = first, 0
    while ptype != n.PayloadType.NONE:
        cls = _payload_class(ptype, exchange, base_offset + pos)
        name = cls.NAME if cls is not None else RawPayload.name_for(ptype)
        next_type, length = read_generic_header(data, pos, name, base_offset)
        body = data[pos + GENERIC_HEADER.size : pos + length]
        body_offset = base_offset + pos + GENERIC_HEADER.size
        if ptype == n.PayloadType.SA:
            cls = _sa_class(exchange, body)
        out.append(cls.decode_body(body, body_offset) if cls is not None else RawPayload(ptype, bytes(body)))
        ptype = next_type
        pos += length
    return tuple(out), pos


def decode_payloads(
    first_payload: int, plaintext: bytes, exchange: int, base_offset: int = HEADER.size
) -> tuple[tuple[Payload, ...], bytes]:
    """Decode a decrypted body; return its payloads and the padding that followed them.

    ``base_offset`` is where ``plaintext`` starts in the message (28), so
    errors name offsets as if the message had been sent in clear.
    """
    plaintext = bytes(plaintext)
    payloads, end = _decode_chain(first_payload, plaintext, exchange, base_offset)
    return payloads, plaintext[end:]


def encode_each(payloads: Sequence[Payload]) -> tuple[bytes, ...]:
    """Each payload fully encoded, its Next Payload naming the one after it.

    Joining any slice gives the exact octets those payloads occupy in the
    message, e.g. ``b"".join(encode_each(p)[1:])`` for "everything after
    HASH" or ``[:-1]`` for "all payloads preceding SIG".
    """
    types = [p.payload_type for p in payloads[1:]] + [n.PayloadType.NONE]
    return tuple(p.encode(t) for p, t in zip(payloads, types))


def encode_payloads(payloads: Sequence[Payload]) -> bytes:
    """The payload chain: the whole body of a clear message, the plaintext of an encrypted one."""
    return b"".join(encode_each(payloads))


def first_type(payloads: Sequence[Payload]) -> int:
    return payloads[0].payload_type if payloads else n.PayloadType.NONE


@dataclass(frozen=True, slots=True)
class Message:
    """A header with either decoded payloads (clear) or ``ciphertext`` (E flag set)."""

    header: Header
    payloads: tuple[Payload, ...] = ()
    ciphertext: bytes = b""

    @property
    def encrypted(self) -> bool:
        return bool(self.header.flags & n.Flags.ENCRYPTION)

    @classmethod
    def build(
        cls,
        icookie: bytes,
        rcookie: bytes,
        exchange: int,
        payloads: Sequence[Payload],
        *,
        message_id: int = 0,
        flags: n.Flags = n.Flags.NONE,
    ) -> Message:
        """A clear message; header Next Payload and Length are computed."""
        if flags & n.Flags.ENCRYPTION:
            raise ValueError("use Message.sealed for encrypted messages")
        length = len(encode_payloads(payloads))
        header = Header.make(
            icookie, rcookie, exchange, first_type(payloads), length, message_id=message_id, flags=flags
        )
        return cls(header, tuple(payloads))

    @classmethod
    def sealed(
        cls,
        icookie: bytes,
        rcookie: bytes,
        exchange: int,
        first_payload: int,
        ciphertext: bytes,
        *,
        message_id: int = 0,
        flags: n.Flags = n.Flags.ENCRYPTION,
    ) -> Message:
        """An encrypted message around ``ciphertext`` (padded plaintext already encrypted)."""
        header = Header.make(
            icookie,
            rcookie,
            exchange,
            first_payload,
            len(ciphertext),
            message_id=message_id,
            flags=flags | n.Flags.ENCRYPTION,
        )
        return cls(header, (), bytes(ciphertext))

    def encode(self) -> bytes:
        body = self.ciphertext if self.encrypted else encode_payloads(self.payloads)
        if self.header.length != HEADER.size + len(body):
            raise ValueError(f"header Length {self.header.length} but message is {HEADER.size + len(body)} octets")
        return self.header.encode() + body

    def decode_plaintext(self, plaintext: bytes) -> tuple[tuple[Payload, ...], bytes]:
        """Payloads and padding of this encrypted message's decrypted body."""
        return decode_payloads(self.header.next_payload, plaintext, self.header.exchange)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"header": self.header.to_dict()}
        if self.encrypted:
            out["ciphertext_length"] = len(self.ciphertext)
        else:
            out["payloads"] = [p.to_dict() for p in self.payloads]
        return out


def decode_message(datagram: bytes) -> Message:
    """Decode one ISAKMP datagram; an encrypted body is returned undecrypted."""
    datagram = bytes(datagram)
    header = Header.decode(datagram)
    if header.length != len(datagram):
        raise WireError(HEADER_NAME, 24, f"Length is {header.length} but the datagram has {len(datagram)} octets")
    body = datagram[HEADER.size :]
    if header.flags & n.Flags.ENCRYPTION:
        if not body:
            raise WireError(HEADER_NAME, HEADER.size, "E flag set but there is no ciphertext")
        return Message(header, (), body)
    payloads, end = _decode_chain(header.next_payload, body, header.exchange, HEADER.size)
    if end != len(body):
        raise WireError("payload chain", HEADER.size + end, f"{len(body) - end} octets after the last payload")
    return Message(header, payloads)
