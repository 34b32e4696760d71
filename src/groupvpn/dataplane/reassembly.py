"""Reassembly of outer ESP packets that a router fragmented on the way (post-fragmentation).

Header preservation sends ESP over the ordinary routed network, so an
IPv4 router may fragment it; the member must put the pieces together
before it can look up the SPI.  Fragments are keyed by (source,
destination, identification, protocol) for IPv4 (RFC 791 §3.2) and by
(source, destination, identification) for IPv6 (RFC 8200 §4.5, Fragment
header right after the fixed header).  Everything an attacker could use to
exhaust memory is bounded:

* at most ``max_datagrams`` datagrams and ``max_bytes`` payload octets are
  held; a fragment that would exceed either is dropped;
* a datagram not complete ``timeout`` seconds after its first fragment is
  discarded (checked on every push and by ``expire``);
* a datagram of more than ``max_fragments`` pieces is discarded;
* overlapping fragments discard the whole datagram (RFC 5722; RFC 8200
  §4.5), except an exact duplicate, which is dropped alone (§4.5 allows it);
* a non-last fragment whose data is not a multiple of 8 octets, an empty
  one, one past 65535 octets or past the end a last fragment announced is
  malformed.
"""

from __future__ import annotations

import struct

from ..wire.ip import (
    FLAG_DF,
    FLAG_MF,
    FLAG_RESERVED,
    IPV6_FRAGMENT,
    IPV6_HEADER_SIZE,
    MAX_IP_LENGTH,
    OFFSET_MASK,
    checksum,
)
from . import DropCounters, DropReason

_FLAGS_KEPT = FLAG_RESERVED | FLAG_DF  # MF and the offset do not survive reassembly
_U16 = struct.Struct("!H")


class _Datagram:
    """The pieces of one datagram so far, in arrival order (overlaps are rejected on arrival)."""

    __slots__ = ("deadline", "pieces", "held", "end", "header")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.pieces: list[tuple[int, int, bytes]] = []  # (offset, end, data)
        self.held = 0
        self.end = -1  # known once the last fragment (MF clear) arrived
        self.header: bytes | None = None  # the first fragment's header, rewritten for the whole


class Reassembler:
    """Outer IPv4/IPv6 fragment reassembly with bounded memory and an injected clock."""

    def __init__(
        self,
        *,
        drops: DropCounters | None = None,
        max_datagrams: int = 256,
        max_bytes: int = 4 << 20,
        max_fragments: int = 64,
        timeout: float = 30.0,
    ) -> None:
        self.drops = drops if drops is not None else DropCounters()
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.max_fragments = max_fragments
        self.timeout = timeout
        self._datagrams: dict[tuple[object, ...], _Datagram] = {}
        self._bytes = 0

    @property
    def held_datagrams(self) -> int:
        return len(self._datagrams)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def next_deadline(self) -> float | None:
        """When ``expire`` next has work (the oldest datagram's deadline), for the driver's timer."""
        for datagram in self._datagrams.values():
            return datagram.deadline
        return None

    def expire(self, now: float) -> int:
        """Discard datagrams whose time is up; returns how many."""
        expired = 0
        while self._datagrams:
            key = next(iter(self._datagrams))
            if self._datagrams[key].deadline > now:
                break
            self._discard(key)
            self.drops.add(DropReason.REASSEMBLY_TIMEOUT)
            expired += 1
        return expired

    def push(self, packet: bytes, now: float) -> bytes | DropReason | None:
        """The whole datagram once ``packet`` completes it, None while pieces are missing, or why it was dropped.

        ``packet`` must be an IPv4 packet with MF set or a non-zero offset,
        or an IPv6 packet whose fixed header is followed by a Fragment header
        (the caller has checked the header lengths).
        """
        self.expire(now)
        if packet[0] >> 4 == 4:
            header_size = (packet[0] & 0x0F) << 2
            frag = packet[6] << 8 | packet[7]
            key: tuple[object, ...] = (packet[12:20], packet[4:6], packet[9])
            offset, more, data_start = (frag & OFFSET_MASK) << 3, frag & FLAG_MF, header_size
        else:
            if len(packet) < IPV6_HEADER_SIZE + IPV6_FRAGMENT.size:
                return self.drops.add(DropReason.MALFORMED)
            offset_flags = packet[42] << 8 | packet[43]
            key = (packet[8:40], packet[44:48])
            offset, more = offset_flags & 0xFFF8, offset_flags & 1
            header_size, data_start = IPV6_HEADER_SIZE, IPV6_HEADER_SIZE + IPV6_FRAGMENT.size
        data = packet[data_start:]
        end = offset + len(data)
        if not data or (more and len(data) % 8) or header_size + end > MAX_IP_LENGTH:
            return self.drops.add(DropReason.MALFORMED)
        if offset == 0 and not more:  # an IPv6 atomic fragment stands alone (RFC 6946 §4)
            return _assemble(_first_header(packet, header_size), [(0, end, data)], end)

        datagram = self._datagrams.get(key)
        if datagram is None:
            if len(self._datagrams) >= self.max_datagrams:
                return self.drops.add(DropReason.REASSEMBLY_LIMIT)
            datagram = self._datagrams[key] = _Datagram(now + self.timeout)
        if self._bytes + len(data) > self.max_bytes:
            if not datagram.pieces:
                del self._datagrams[key]
            return self.drops.add(DropReason.REASSEMBLY_LIMIT)
        for start, stop, piece in datagram.pieces:
            if offset < stop and start < end:
                if start == offset and stop == end and piece == data:
                    return self.drops.add(DropReason.DUPLICATE_FRAGMENT)
                return self._fail(key, DropReason.FRAGMENT_OVERLAP)
        if not more:
            if (datagram.end not in (-1, end)) or any(stop > end for _, stop, _ in datagram.pieces):
                return self._fail(key, DropReason.MALFORMED)
            datagram.end = end
        elif datagram.end != -1 and end > datagram.end:
            return self._fail(key, DropReason.MALFORMED)
        if len(datagram.pieces) >= self.max_fragments:
            return self._fail(key, DropReason.TOO_MANY_FRAGMENTS)

        datagram.pieces.append((offset, end, data))
        datagram.held += len(data)
        self._bytes += len(data)
        if offset == 0:
            datagram.header = _first_header(packet, header_size)
        if datagram.held != datagram.end or datagram.header is None:
            return None
        self._discard(key)
        return _assemble(datagram.header, datagram.pieces, datagram.end)

    def _fail(self, key: tuple[object, ...], reason: DropReason) -> DropReason:
        self._discard(key)
        return self.drops.add(reason)

    def _discard(self, key: tuple[object, ...]) -> None:
        self._bytes -= self._datagrams.pop(key).held


def _first_header(packet: bytes, header_size: int) -> bytes:
    """The header the whole datagram gets: IPv4's own, or IPv6's with the Fragment header's Next Header."""
    if packet[0] >> 4 == 4:
        return packet[:header_size]
    return packet[:6] + packet[IPV6_HEADER_SIZE : IPV6_HEADER_SIZE + 1] + packet[7:IPV6_HEADER_SIZE]


def _assemble(first_header: bytes, pieces: list[tuple[int, int, bytes]], size: int) -> bytes:
    """The first fragment's header with the length fields of the whole, then the data in offset order."""
    header = bytearray(first_header)
    if header[0] >> 4 == 4:
        _U16.pack_into(header, 2, len(header) + size)
        _U16.pack_into(header, 6, (header[6] << 8) & _FLAGS_KEPT)
        _U16.pack_into(header, 10, 0)
        _U16.pack_into(header, 10, checksum(header))
    else:
        _U16.pack_into(header, 4, size)
    pieces.sort()
    return bytes(header) + b"".join(piece for _, _, piece in pieces)
