"""IPv4 and IPv6 headers, the IPv6 Fragment header, fragmentation and the ICMP "too big" errors.

The header classes are the strict codecs (RFC 791 §3.1, RFC 8200 §3 and
§4.5): decode checks every length and the IPv4 header checksum and raises
``WireError``; encode computes the checksum, so decode→encode is identity.
The data plane reads single fields straight from packet bytes instead of
building these objects per packet; it shares the helpers below with them.

Checksums (RFC 1071) use the fact that 2**16 ≡ 1 (mod 0xFFFF): the ones'
complement sum of the 16-bit words of a buffer is the buffer read as one
big-endian integer modulo 0xFFFF, which CPython computes in C.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from .errors import WireError
from .numbers import ICMP_FRAGMENTATION_NEEDED, IcmpType, Icmpv6Type, IpProtocol

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
IPV6_HEADER = struct.Struct("!IHBB16s16s")
IPV6_FRAGMENT = struct.Struct("!BBHI")
IPV4_MIN_HEADER = IPV4_HEADER.size  # 20
IPV6_HEADER_SIZE = IPV6_HEADER.size  # 40
MAX_IP_LENGTH = 0xFFFF

# IPv4 Flags | Fragment Offset word (RFC 791 §3.1)
FLAG_RESERVED = 0x8000
FLAG_DF = 0x4000
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF

ECN_MASK = 0x03
DEFAULT_TTL = 64
ICMP_ERROR_TOS = 0xC0  # precedence 6, Internetwork Control (RFC 1812 §4.3.2.5)
ICMP_QUOTE_LIMIT = 576  # RFC 1812 §4.3.2.3: an ICMPv4 error is at most 576 octets
IPV6_MIN_MTU = 1280  # RFC 8200 §5; also the ICMPv6 error size limit (RFC 4443 §2.4 (c))
_ICMP_ERRORS = frozenset(
    {
        IcmpType.DESTINATION_UNREACHABLE,
        IcmpType.SOURCE_QUENCH,
        IcmpType.REDIRECT,
        IcmpType.TIME_EXCEEDED,
        IcmpType.PARAMETER_PROBLEM,
    }
)
_ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, unused/identifier, MTU/sequence
_ICMPV6_HEADER = struct.Struct("!BBHI")  # type, code, checksum, MTU
_OPTION_EOL = 0
_OPTION_NOP = 1
_OPTION_COPIED = 0x80
_BROADCAST = IPv4Address("255.255.255.255")


def ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit ones' complement sum of ``data`` (odd lengths padded with a zero octet)."""
    value = int.from_bytes(data, "big") << 8 if len(data) % 2 else int.from_bytes(data, "big")
    folded = value % 0xFFFF
    return 0xFFFF if folded == 0 and value else folded


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum of ``data`` (RFC 1071)."""
    return 0xFFFF - ones_complement_sum(data)


def checksum_valid(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` carries a valid checksum: its words sum to 0xFFFF (negative zero)."""
    return ones_complement_sum(data) == 0xFFFF


def pseudo_header_v6(src: bytes, dst: bytes, length: int, next_header: int) -> bytes:
    """The IPv6 pseudo-header upper-layer checksums cover (RFC 8200 §8.1)."""
    return src + dst + struct.pack("!II", length, next_header)


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """An IPv4 header (RFC 791 §3.1); ``fragment_offset`` is in octets, a multiple of 8."""

    src: IPv4Address
    dst: IPv4Address
    protocol: int
    total_length: int
    tos: int = 0
    identification: int = 0
    flags: int = 0  # the three flag bits: reserved, DF, MF
    fragment_offset: int = 0
    ttl: int = DEFAULT_TTL
    options: bytes = b""

    def __post_init__(self) -> None:
        if len(self.options) % 4 or len(self.options) > 40:
            raise ValueError(f"IPv4 options of {len(self.options)} octets: need a multiple of 4, at most 40")
        if self.fragment_offset % 8 or not 0 <= self.fragment_offset <= OFFSET_MASK * 8:
            raise ValueError(f"fragment offset {self.fragment_offset} is not a multiple of 8 below 65536")
        if not self.header_length <= self.total_length <= MAX_IP_LENGTH:
            raise ValueError(f"total length {self.total_length} outside {self.header_length}..{MAX_IP_LENGTH}")
        if not 0 <= self.flags <= 7:
            raise ValueError(f"flags {self.flags} do not fit 3 bits")

    @property
    def header_length(self) -> int:
        return IPV4_MIN_HEADER + len(self.options)

    @property
    def dscp(self) -> int:
        return self.tos >> 2

    @property
    def ecn(self) -> int:
        return self.tos & ECN_MASK

    @property
    def dont_fragment(self) -> bool:
        return bool(self.flags & 2)

    @property
    def more_fragments(self) -> bool:
        return bool(self.flags & 1)

    @property
    def is_fragment(self) -> bool:
        return self.more_fragments or self.fragment_offset > 0

    def encode(self) -> bytes:
        return _pack_ipv4(
            self.tos,
            self.total_length,
            self.identification,
            self.flags << 13 | self.fragment_offset // 8,
            self.ttl,
            self.protocol,
            self.src.packed,
            self.dst.packed,
            self.options,
        )

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> IPv4Header:
        """The header at ``buf[offset:]``; the payload need not be present (ICMP quotes)."""
        left = len(buf) - offset
        if left < IPV4_MIN_HEADER:
            raise WireError("IPv4", offset, f"{left} octets, too short for a header")
        vihl, tos, total, ident, frag, ttl, proto, _, src, dst = IPV4_HEADER.unpack_from(buf, offset)
        if vihl >> 4 != 4:
            raise WireError("IPv4", offset, f"version {vihl >> 4}, expected 4")
        hlen = (vihl & 0x0F) * 4
        if hlen < IPV4_MIN_HEADER:
            raise WireError("IPv4", offset, f"IHL {hlen // 4} is below 5")
        if hlen > left:
            raise WireError("IPv4", offset, f"header length {hlen} runs past the end ({left} octets)")
        if total < hlen:
            raise WireError("IPv4", offset + 2, f"total length {total} is shorter than the header ({hlen})")
        if not checksum_valid(memoryview(buf)[offset : offset + hlen]):
            raise WireError("IPv4", offset + 10, "header checksum mismatch")
        options = bytes(buf[offset + IPV4_MIN_HEADER : offset + hlen])
        option_units(options, offset + IPV4_MIN_HEADER)
        return cls(
            src=IPv4Address(src),
            dst=IPv4Address(dst),
            protocol=proto,
            total_length=total,
            tos=tos,
            identification=ident,
            flags=frag >> 13,
            fragment_offset=(frag & OFFSET_MASK) * 8,
            ttl=ttl,
            options=options,
        )


def option_units(options: bytes, offset: int = 0) -> list[tuple[int, int]]:
    """(start, length) of each IPv4 option up to End of Option List (RFC 791 §3.1)."""
    units: list[tuple[int, int]] = []
    pos = 0
    while pos < len(options):
        kind = options[pos]
        if kind == _OPTION_EOL:
            break
        if kind == _OPTION_NOP:
            units.append((pos, 1))
            pos += 1
            continue
        if pos + 1 >= len(options) or options[pos + 1] < 2 or pos + options[pos + 1] > len(options):
            raise WireError("IPv4 option", offset + pos, f"option {kind} has no valid length")
        units.append((pos, options[pos + 1]))
        pos += options[pos + 1]
    return units


@dataclass(frozen=True, slots=True)
class IPv6Header:
    """The IPv6 fixed header (RFC 8200 §3)."""

    src: IPv6Address
    dst: IPv6Address
    next_header: int
    payload_length: int
    traffic_class: int = 0
    flow_label: int = 0
    hop_limit: int = DEFAULT_TTL

    def __post_init__(self) -> None:
        if not 0 <= self.flow_label < 1 << 20:
            raise ValueError(f"flow label {self.flow_label} does not fit 20 bits")
        if not 0 <= self.payload_length <= MAX_IP_LENGTH:
            raise ValueError(f"payload length {self.payload_length} does not fit 16 bits")

    @property
    def ecn(self) -> int:
        return self.traffic_class & ECN_MASK

    def encode(self) -> bytes:
        first = 6 << 28 | self.traffic_class << 20 | self.flow_label
        return IPV6_HEADER.pack(
            first, self.payload_length, self.next_header, self.hop_limit, self.src.packed, self.dst.packed
        )

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> IPv6Header:
        left = len(buf) - offset
        if left < IPV6_HEADER_SIZE:
            raise WireError("IPv6", offset, f"{left} octets, too short for a header")
        first, plen, nxt, hlim, src, dst = IPV6_HEADER.unpack_from(buf, offset)
        if first >> 28 != 6:
            raise WireError("IPv6", offset, f"version {first >> 28}, expected 6")
        return cls(
            src=IPv6Address(src),
            dst=IPv6Address(dst),
            next_header=nxt,
            payload_length=plen,
            traffic_class=first >> 20 & 0xFF,
            flow_label=first & 0xFFFFF,
            hop_limit=hlim,
        )


@dataclass(frozen=True, slots=True)
class IPv6Fragment:
    """The IPv6 Fragment extension header (RFC 8200 §4.5); offset in octets.

    Both reserved fields are ignored on receipt, as §4.5 says, and sent as zero.
    """

    next_header: int
    fragment_offset: int
    more_fragments: bool
    identification: int

    def __post_init__(self) -> None:
        if self.fragment_offset % 8 or not 0 <= self.fragment_offset <= OFFSET_MASK * 8:
            raise ValueError(f"fragment offset {self.fragment_offset} is not a multiple of 8 below 65536")

    def encode(self) -> bytes:
        return IPV6_FRAGMENT.pack(self.next_header, 0, self.fragment_offset | self.more_fragments, self.identification)

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> IPv6Fragment:
        if len(buf) - offset < IPV6_FRAGMENT.size:
            raise WireError("IPv6 Fragment", offset, f"{len(buf) - offset} octets, need 8")
        nxt, _, off_flags, ident = IPV6_FRAGMENT.unpack_from(buf, offset)
        return cls(nxt, off_flags & 0xFFF8, bool(off_flags & 1), ident)


def decode_packet(buf: bytes | bytearray | memoryview) -> tuple[IPv4Header | IPv6Header, bytes]:
    """Header and payload of a complete IP packet whose length fields must match ``len(buf)``."""
    if not buf:
        raise WireError("IP", 0, "empty packet")
    header: IPv4Header | IPv6Header
    if buf[0] >> 4 == 4:
        header = IPv4Header.decode(buf)
        start, total = header.header_length, header.total_length
    else:
        header = IPv6Header.decode(buf)
        start, total = IPV6_HEADER_SIZE, IPV6_HEADER_SIZE + header.payload_length
    if total != len(buf):
        field = 2 if isinstance(header, IPv4Header) else 4
        raise WireError("IP", field, f"length fields say {total} octets, the packet has {len(buf)}")
    return header, bytes(buf[start:])


def _pack_ipv4(
    tos: int, total: int, ident: int, frag: int, ttl: int, proto: int, src: bytes, dst: bytes, options: bytes
) -> bytes:
    header = bytearray(
        IPV4_HEADER.pack(0x45 + len(options) // 4, tos, total, ident, frag, ttl, proto, 0, src, dst) + options
    )
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header)


def fragment_ipv4(packet: bytes, max_size: int) -> list[bytes]:
    """Split an IPv4 packet into fragments of at most ``max_size`` octets (RFC 791 §3.2).

    The first fragment keeps every option, later ones only options with the
    copied flag; a packet that is already a fragment keeps its offset and,
    on its last piece, its MF flag.  Packets with DF set are refused.
    """
    header = IPv4Header.decode(packet)
    if header.total_length != len(packet):
        raise WireError("IPv4", 2, f"total length {header.total_length}, the packet has {len(packet)}")
    if len(packet) <= max_size:
        return [packet]
    if header.dont_fragment:
        raise ValueError("the packet has DF set and must not be fragmented")
    later_options = _copied_options(header.options)
    data = memoryview(packet)[header.header_length :]
    src, dst = header.src.packed, header.dst.packed
    fragments: list[bytes] = []
    pos = 0
    options = header.options
    while pos < len(data):
        room = (max_size - IPV4_MIN_HEADER - len(options)) & ~7
        if room <= 0:
            raise ValueError(f"{max_size} octets cannot hold an IPv4 fragment with {len(options)} option octets")
        chunk = data[pos : pos + room]
        more = FLAG_MF if pos + len(chunk) < len(data) else 0
        frag = header.flags << 13 | more | (header.fragment_offset + pos) // 8
        total = IPV4_MIN_HEADER + len(options) + len(chunk)
        head = _pack_ipv4(
            header.tos, total, header.identification, frag, header.ttl, header.protocol, src, dst, options
        )
        fragments.append(head + chunk)
        pos += len(chunk)
        options = later_options
    return fragments


def _copied_options(options: bytes) -> bytes:
    """The options a non-first fragment carries, padded with End of Option List to 4 octets."""
    kept = b"".join(
        options[start : start + size] for start, size in option_units(options) if options[start] & _OPTION_COPIED
    )
    return kept + bytes(-len(kept) % 4)


def icmp_error_allowed(packet: bytes | bytearray | memoryview) -> bool:
    """Whether an ICMP error may answer ``packet`` (RFC 1122 §3.2.2; RFC 4443 §2.4 (e)).

    Never for an ICMP error, an IPv4 non-first fragment, an IPv4 multicast
    or broadcast destination, or a source that does not name one host.
    ICMPv6 Packet Too Big is the one error also sent for multicast.
    """
    if packet[0] >> 4 == 4:
        if len(packet) < IPV4_MIN_HEADER:
            return False
        hlen = (packet[0] & 0x0F) * 4
        src, dst = IPv4Address(bytes(packet[12:16])), IPv4Address(bytes(packet[16:20]))
        if src.is_unspecified or src.is_multicast or src == _BROADCAST or dst.is_multicast or dst == _BROADCAST:
            return False
        if (packet[6] << 8 | packet[7]) & OFFSET_MASK:
            return False
        if packet[9] == IpProtocol.ICMP:
            return len(packet) > hlen and packet[hlen] not in _ICMP_ERRORS
        return True
    if len(packet) < IPV6_HEADER_SIZE:
        return False
    src6 = IPv6Address(bytes(packet[8:24]))
    if src6.is_unspecified or src6.is_multicast:
        return False
    if packet[6] == IpProtocol.ICMPV6:
        return len(packet) > IPV6_HEADER_SIZE and packet[IPV6_HEADER_SIZE] >= 128
    return True


def icmp_fragmentation_needed(packet: bytes, next_hop_mtu: int, source: IPv4Address, identification: int = 0) -> bytes:
    """ICMP Destination Unreachable, Fragmentation Needed and DF Set, for ``packet``'s sender.

    Carries the next-hop MTU (RFC 1191 §4) and as much of ``packet`` as
    keeps the error within 576 octets (RFC 1812 §4.3.2.3).
    """
    quote = packet[: ICMP_QUOTE_LIMIT - IPV4_MIN_HEADER - _ICMP_HEADER.size]
    message = bytearray(
        _ICMP_HEADER.pack(IcmpType.DESTINATION_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, 0, 0, next_hop_mtu) + quote
    )
    struct.pack_into("!H", message, 2, checksum(message))
    header = IPv4Header(
        src=source,
        dst=IPv4Address(bytes(packet[12:16])),
        protocol=IpProtocol.ICMP,
        total_length=IPV4_MIN_HEADER + len(message),
        tos=ICMP_ERROR_TOS,
        identification=identification,
    )
    return header.encode() + message


def icmpv6_packet_too_big(packet: bytes, mtu: int, source: IPv6Address) -> bytes:
    """ICMPv6 Packet Too Big for ``packet``'s sender (RFC 4443 §3.2), at most 1280 octets."""
    quote = packet[: IPV6_MIN_MTU - IPV6_HEADER_SIZE - _ICMPV6_HEADER.size]
    dst = bytes(packet[8:24])
    message = bytearray(_ICMPV6_HEADER.pack(Icmpv6Type.PACKET_TOO_BIG, 0, 0, mtu) + quote)
    pseudo = pseudo_header_v6(source.packed, dst, len(message), IpProtocol.ICMPV6)
    struct.pack_into("!H", message, 2, checksum(pseudo + message))
    header = IPv6Header(src=source, dst=IPv6Address(dst), next_header=IpProtocol.ICMPV6, payload_length=len(message))
    return header.encode() + message
