"""ESP framing (RFC 4303 §2) and the project's delay-detection timestamp shim.

An ESP packet is SPI | Sequence Number | IV | ciphertext | ICV; the cipher
suites (``groupvpn.crypto.suites``) produce and check everything after the
8-octet header.  Inside the plaintext the payload ends with the trailer
Padding (1, 2, 3, …) | Pad Length | Next Header, framed here.

Time-based anti-replay needs a send time inside the encrypted payload.  The
draft the seed names (draft-weis-delay-detection) could not be read, so
the encoding is a project choice (docs/conformance.md), kept behind
``encode_timestamp_shim``/``decode_timestamp_shim`` so it can be swapped:
ESP Next Header 253 (RFC 3692 experimentation) announces a 12-octet shim
in front of the inner packet::

    Next Header (1) | Length = 12 (1) | Reserved = 0 (2) | NTP timestamp (8)

The timestamp is the RFC 5905 §6 64-bit format (seconds since 1900 and a
32-bit fraction); differences are taken modulo 2**64, so era rollover in
2036 is harmless while clocks agree within 68 years.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import WireError
from .numbers import IpProtocol

ESP_HEADER = struct.Struct("!II")  # SPI, Sequence Number
ESP_HEADER_SIZE = ESP_HEADER.size
TRAILER_SIZE = 2  # Pad Length, Next Header
PADDING = bytes(range(1, 256))  # RFC 4303 §2.4 default padding contents

TIMESTAMP_SHIM = struct.Struct("!BBHQ")
TIMESTAMP_SHIM_SIZE = TIMESTAMP_SHIM.size  # 12: keeps the inner packet 4-octet aligned
NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
NTP_FRACTION = 1 << 32
_MASK64 = (1 << 64) - 1
_HALF64 = 1 << 63
TUNNELED = frozenset({IpProtocol.IPV4, IpProtocol.IPV6})


@dataclass(frozen=True, slots=True)
class EspPacket:
    """ESP header and the still-protected rest: IV | ciphertext | ICV."""

    spi: int
    sequence: int
    protected: bytes

    def encode(self) -> bytes:
        return ESP_HEADER.pack(self.spi, self.sequence) + self.protected

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> EspPacket:
        left = len(buf) - offset
        if left <= ESP_HEADER_SIZE:
            raise WireError("ESP", offset, f"{left} octets: SPI, Sequence Number and a payload need more")
        spi, sequence = ESP_HEADER.unpack_from(buf, offset)
        if spi == 0:
            raise WireError("ESP", offset, "SPI 0 is reserved for local use and never sent (RFC 4303 §2.1)")
        return cls(spi, sequence, bytes(buf[offset + ESP_HEADER_SIZE :]))


def trailer(pad_length: int, next_header: int) -> bytes:
    """Padding 1..pad_length, Pad Length and Next Header (``EspSuite.pad_length`` gives the count)."""
    return PADDING[:pad_length] + bytes((pad_length, next_header))


def split_trailer(plaintext: bytes | memoryview) -> tuple[int, int]:
    """Where the payload ends and its Next Header; the padding must read 1, 2, 3, … (RFC 4303 §2.4)."""
    size = len(plaintext)
    if size < TRAILER_SIZE:
        raise WireError("ESP trailer", 0, f"plaintext of {size} octets has no Pad Length and Next Header")
    pad = plaintext[-2]
    end = size - TRAILER_SIZE - pad
    if end < 0:
        raise WireError("ESP trailer", size - 2, f"Pad Length {pad} exceeds the {size - 2} octets before it")
    if plaintext[end : end + pad] != PADDING[:pad]:
        raise WireError("ESP trailer", end, f"the {pad} padding octets are not 1, 2, 3, …")
    return end, plaintext[-1]


def ntp_timestamp(unix_time: float) -> int:
    """The 64-bit NTP timestamp of a Unix time (wrapping at the era boundary)."""
    return int((unix_time + NTP_UNIX_OFFSET) * NTP_FRACTION) & _MASK64


def timestamp_delta(timestamp: int, reference: int) -> int:
    """``timestamp - reference`` in 2**-32 s, as the signed difference modulo 2**64."""
    return ((timestamp - reference + _HALF64) & _MASK64) - _HALF64


def encode_timestamp_shim(next_header: int, timestamp: int) -> bytes:
    """The shim that precedes an inner packet of protocol ``next_header`` (4 or 41)."""
    return TIMESTAMP_SHIM.pack(next_header, TIMESTAMP_SHIM_SIZE, 0, timestamp)


def decode_timestamp_shim(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Next Header and timestamp of the shim at ``buf[offset:]``; the inner packet follows it."""
    if len(buf) - offset < TIMESTAMP_SHIM_SIZE:
        raise WireError("timestamp shim", offset, f"{len(buf) - offset} octets, need {TIMESTAMP_SHIM_SIZE}")
    next_header, length, reserved, timestamp = TIMESTAMP_SHIM.unpack_from(buf, offset)
    if length != TIMESTAMP_SHIM_SIZE:
        raise WireError("timestamp shim", offset + 1, f"length {length}, expected {TIMESTAMP_SHIM_SIZE}")
    if reserved:
        raise WireError("timestamp shim", offset + 2, f"reserved field is {reserved:#06x}, must be 0")
    if next_header not in TUNNELED:
        raise WireError("timestamp shim", offset, f"next header {next_header} is not IPv4 (4) or IPv6 (41)")
    return next_header, timestamp
