"""TUN offloads (``IFF_VNET_HDR``): the ``virtio_net_hdr`` codec and the coalescing of decrypted TCP segments.

With ``IFF_VNET_HDR`` every read and write on a TUN queue starts with a
``virtio_net_hdr`` (include/uapi/linux/virtio_net.h), so one write can
carry a run of TCP segments as one GSO packet: the kernel forwards it
once and the receiving stack takes it whole and acknowledges it once,
where plain writes cost a syscall, a forwarding and a receive for every
segment and an acknowledgment (itself a packet through both members) for
every second one.

``Coalescer`` does on the write side what Linux GRO and wireguard-go do
on receipt: the inner packets decrypted from one drained batch go in,
write units come out.  Segments of one TCP flow join a run while they
follow each other in sequence with the same IP and TCP header fields
(lengths, IPv4 identification, checksums and PSH on the last may differ;
IPv4 identifications must count up unless DF is set), carry payload and
only ACK (+PSH) flags, and the run stays within 64 KiB.  A run becomes
one GSO packet whose TCP checksum holds the pseudo-header sum
(``NEEDS_CSUM``: the kernel completes it where it has to); everything
else is written alone behind an all-zero header, and a flow's packets
keep their order (IP fragments aside: they carry no ports).

Two things are deliberately not done, both because summing payload
octets in Python costs about 5 µs per 1400-octet segment on the project
machine, more than a segment's share of what coalescing saves:

* the segments' own TCP checksums are not verified before they are
  joined (Linux GRO and wireguard-go do verify).  The receiving host
  takes a NEEDS_CSUM packet as correct, so a segment damaged before the
  sending member's ESP (or in either member's memory) is delivered,
  where written alone the host would have dropped it.  ESP's ICV covers
  the WAN.  Verifying cost more than coalescing gains (one TCP stream,
  median of 4 alternating runs on a loaded machine: 206 Mbit/s with
  verification, 380 without, 259 without offload).  This is why offload
  is off unless the operator asks for it (member ``--dataplane-offload
  on``): the default keeps the hosts' end-to-end check.
* TSO reads (``TUN_F_TSO4``/``TSO6`` on the outbound TUN) would hand the
  worker 64 KiB packets to cut up, each segment needing a full checksum:
  the worker that carries the flow then falls behind (137 Mbit/s
  against 321 with coalescing alone and 204 without offload, measured
  the same way).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from ..wire.errors import WireError
from ..wire.ip import IPV4_MIN_HEADER, IPV6_HEADER_SIZE, MAX_IP_LENGTH, checksum
from ..wire.numbers import IpProtocol

VNET_HEADER_SIZE = 10  # sizeof(struct virtio_net_hdr), the TUN's default TUNSETVNETHDRSZ
# Host byte order: the tun driver speaks legacy virtio, which is native-endian (little-endian hosts).
_VNET_HEADER = struct.Struct("=BBHHHH")
_TCP_CHECKSUM_OFFSET = 16  # offsetof(struct tcphdr, check)
_TCP = int(IpProtocol.TCP)
_PSH, _ACK = 0x08, 0x10
_ACK_PSH = _ACK | _PSH
_U16 = struct.Struct("!H")
_TCP4_MIN = IPV4_MIN_HEADER + 20
_TCP6_MIN = IPV6_HEADER_SIZE + 20
# What coalescing reads of a TCP segment: the flow (addresses and ports), the sequence number and what
# must repeat; lengths and checksums are skipped.  IPv4: TOS, identification, flags (DF), TTL.
_TCP4_FIELDS = struct.Struct("!xBxxHBxBxxx12sI5sB2sxx2s")
# IPv6: version/traffic class/flow label, hop limit.
_TCP6_FIELDS = struct.Struct("!4sxxxB36sI5sB2sxx2s")


class VnetFlag(IntFlag):
    """``virtio_net_hdr.flags``."""

    NEEDS_CSUM = 1  # the checksum at csum_start + csum_offset holds only the pseudo-header sum
    DATA_VALID = 2  # the checksum was verified (the kernel sets it on reads; meaningless on writes)
    RSC_INFO = 4  # receive-segment-coalescing information in csum_start/csum_offset (never from tun)


class GsoType(IntEnum):
    """``virtio_net_hdr.gso_type`` without the ECN bit."""

    NONE = 0
    TCPV4 = 1
    UDP = 3  # UFO: IPv4/IPv6 fragmentation offload
    TCPV6 = 4
    UDP_L4 = 5  # USO


GSO_ECN = 0x80  # or-ed into gso_type: the TCP segments carry ECN (CWR on the first)
_KNOWN_FLAGS = int(VnetFlag.NEEDS_CSUM | VnetFlag.DATA_VALID | VnetFlag.RSC_INFO)  # an int: ~ of a flag drops bits


class OffloadError(WireError):
    """A ``virtio_net_hdr`` that is malformed or describes something other than its packet."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__("virtio_net_hdr", offset, message)


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """One ``virtio_net_hdr``: what the kernel hands out with a read, or must do with a write."""

    flags: VnetFlag = VnetFlag(0)
    gso_type: GsoType = GsoType.NONE
    ecn: bool = False
    hdr_len: int = 0  # the headers' length (a hint for the kernel's allocation)
    gso_size: int = 0  # payload octets per segment
    csum_start: int = 0
    csum_offset: int = 0

    def __post_init__(self) -> None:
        for name in ("hdr_len", "gso_size", "csum_start", "csum_offset"):
            if not 0 <= getattr(self, name) <= 0xFFFF:
                raise ValueError(f"virtio_net_hdr {name} {getattr(self, name)} does not fit 16 bits")
        if self.ecn and self.gso_type not in (GsoType.TCPV4, GsoType.TCPV6):
            raise ValueError(f"the ECN bit goes with TCP segmentation, not {self.gso_type.name}")

    def encode(self) -> bytes:
        gso = self.gso_type | (GSO_ECN if self.ecn else 0)
        return _VNET_HEADER.pack(self.flags, gso, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset)

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> VnetHeader:
        """The header at the start of ``buf``; every field must make sense on its own."""
        if len(buf) < VNET_HEADER_SIZE:
            raise OffloadError(0, f"{len(buf)} octets, too short for a header ({VNET_HEADER_SIZE})")
        flags, gso, hdr_len, gso_size, csum_start, csum_offset = _VNET_HEADER.unpack_from(buf)
        if flags & ~_KNOWN_FLAGS:
            raise OffloadError(0, f"unknown flags {flags:#04x}")
        if flags & VnetFlag.RSC_INFO:
            raise OffloadError(0, "RSC_INFO is not a tun flag")
        try:
            gso_type = GsoType(gso & ~GSO_ECN)
        except ValueError:
            raise OffloadError(1, f"unknown GSO type {gso:#04x}") from None
        if gso & GSO_ECN and gso_type not in (GsoType.TCPV4, GsoType.TCPV6):
            raise OffloadError(1, f"the ECN bit on GSO type {gso_type.name}")
        if gso_type is GsoType.NONE and gso_size:
            raise OffloadError(4, f"segment size {gso_size} without segmentation")
        if gso_type is not GsoType.NONE and not gso_size:
            raise OffloadError(4, f"{gso_type.name} segmentation with a segment size of 0")
        if not flags & VnetFlag.NEEDS_CSUM and (csum_start or csum_offset):
            raise OffloadError(6, f"checksum start {csum_start} and offset {csum_offset} without NEEDS_CSUM")
        return cls(VnetFlag(flags), gso_type, bool(gso & GSO_ECN), hdr_len, gso_size, csum_start, csum_offset)


PLAIN = VnetHeader().encode()  # a write of one whole packet
PLAIN_READS = frozenset({PLAIN, VnetHeader(VnetFlag.DATA_VALID).encode()})  # reads needing nothing done


# One TUN write: (virtio_net_hdr and packet, how many inner packets it carries, their octets).  A plain
# tuple: one is made for every packet that is written alone, and a NamedTuple costs three times as much.
WriteUnit = tuple[bytes, int, int]


class _Run:
    """Segments of one flow joined so far: the first one whole, the payloads of the others."""

    __slots__ = ("first", "hlen", "fixed", "parts", "mss", "size", "count", "next_seq", "next_id", "psh", "open")

    def __init__(self, packet: bytes, hlen: int, fixed: tuple[object, ...], seq: int, psh: bool) -> None:
        self.first = packet
        self.hlen = hlen
        self.fixed = fixed  # the header fields every segment must repeat
        self.parts: list[memoryview] = []  # the payloads after the first packet's
        self.mss = len(packet) - hlen  # the GSO segment size: every payload but the last has it
        self.size = len(packet)  # of the joined packet
        self.count = 1
        self.next_seq = (seq + self.mss) & 0xFFFFFFFF
        self.next_id = -1  # IPv4 without DF: the identification the next segment must carry
        self.psh = psh
        self.open = not psh  # PSH, or a short payload, ends a run


class Coalescer:
    """Joins the in-order TCP segments of each flow in a batch into GSO write units.

    ``push`` every inner packet of a batch (whole, valid IP packets, as
    decryption returns them), then ``flush`` for the batch's write units,
    in the order of the packets that start them.  ``max_size`` bounds a
    joined packet (the IPv4 total length, or IPv6 header plus payload).
    """

    __slots__ = ("max_size", "_units", "_runs")

    def __init__(self, max_size: int = MAX_IP_LENGTH) -> None:
        if not _TCP6_MIN < max_size <= MAX_IP_LENGTH:
            raise ValueError(f"joined packets of at most {max_size} octets: {_TCP6_MIN + 1} to {MAX_IP_LENGTH} work")
        self.max_size = max_size
        self._units: list[bytes | _Run] = []
        self._runs: dict[bytes, _Run] = {}  # flow -> its latest run, while more may join it

    def push(self, packet: bytes) -> None:
        """Take the next inner packet of the batch."""
        size = len(packet)
        first = packet[0]
        if first == 0x45:  # IPv4 without options, as Linux GRO; TCP, not a fragment
            if packet[9] != _TCP or size < _TCP4_MIN or packet[6] & 0x3F or packet[7]:
                self._units.append(packet)
                return
            tos, ident, frag, ttl, flow, seq, ack_offset, flags, window, urgent = _TCP4_FIELDS.unpack_from(packet)
            hlen = IPV4_MIN_HEADER + (ack_offset[4] >> 4 << 2)
            base = _TCP4_MIN  # where TCP options start
            if frag & 0x40:
                ident = -1  # DF: any identification (RFC 6864)
            fixed: tuple[object, ...] = (tos, frag, ttl, ack_offset, window, urgent)
        elif first >> 4 == 6 and size >= _TCP6_MIN and packet[6] == _TCP:  # IPv6 without extension headers
            version_class_label, hop_limit, flow, seq, ack_offset, flags, window, urgent = _TCP6_FIELDS.unpack_from(
                packet
            )
            hlen = IPV6_HEADER_SIZE + (ack_offset[4] >> 4 << 2)
            base = _TCP6_MIN
            ident = -1
            fixed = (version_class_label, hop_limit, ack_offset, window, urgent)
        else:
            self._units.append(packet)
            return
        runs = self._runs
        run = runs.get(flow)  # the flow's open run: whatever this packet is, later ones go after it
        if not base <= hlen < size or (flags != _ACK and flags != _ACK_PSH):
            if run is not None:
                del runs[flow]
            self._units.append(packet)  # no payload, a bad data offset or other flags: alone
            return
        if hlen > base:
            fixed += (packet[base:hlen],)
        size -= hlen
        psh = flags == _ACK_PSH
        if (
            run is not None
            and seq == run.next_seq
            and size <= run.mss
            and fixed == run.fixed
            and ident == run.next_id
            and run.size + size <= self.max_size
        ):
            run.parts.append(memoryview(packet)[hlen:])
            run.size += size
            run.count += 1
            run.next_seq = (seq + size) & 0xFFFFFFFF
            run.psh = psh
            run.open = size == run.mss and not psh
        else:
            run = _Run(packet, hlen, fixed, seq, psh)
            self._units.append(run)
        if run.open:
            run.next_id = ident if ident < 0 else (ident + 1) & 0xFFFF
            runs[flow] = run
        elif flow in runs:
            del runs[flow]

    def flush(self) -> list[WriteUnit]:
        """The batch's write units; the coalescer is empty again."""
        units, self._units = self._units, []
        self._runs.clear()
        out: list[WriteUnit] = []
        for unit in units:
            if type(unit) is bytes:
                out.append((PLAIN + unit, 1, len(unit)))
            elif unit.count == 1:
                out.append((PLAIN + unit.first, 1, len(unit.first)))
            else:
                out.append(_joined(unit))
        return out


def _joined(run: _Run) -> WriteUnit:
    """A run's GSO packet: the first segment's headers with the new lengths, PSH if the last had it,
    and the pseudo-header sum (RFC 793 §3.1, RFC 8200 §8.1) in the TCP checksum for the kernel to complete."""
    first, hlen, size = run.first, run.hlen, run.size
    head = bytearray(first[:hlen])
    if first[0] == 0x45:
        ihl, gso_type = IPV4_MIN_HEADER, GsoType.TCPV4
        _U16.pack_into(head, 2, size)
        _U16.pack_into(head, 10, 0)
        _U16.pack_into(head, 10, checksum(head[:IPV4_MIN_HEADER]))
        addresses = first[12:20]
    else:
        ihl, gso_type = IPV6_HEADER_SIZE, GsoType.TCPV6
        _U16.pack_into(head, 4, size - IPV6_HEADER_SIZE)
        addresses = first[8:40]
    if run.psh:
        head[ihl + 13] |= _PSH
    pseudo = (int.from_bytes(addresses, "big") + _TCP + size - ihl) % 0xFFFF or 0xFFFF
    _U16.pack_into(head, ihl + _TCP_CHECKSUM_OFFSET, pseudo)
    vnet = VnetHeader(VnetFlag.NEEDS_CSUM, gso_type, False, hlen, run.mss, ihl, _TCP_CHECKSUM_OFFSET).encode()
    data = b"".join((vnet, head, memoryview(first)[hlen:], *run.parts))
    return data, run.count, size + (run.count - 1) * hlen

