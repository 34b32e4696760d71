"""ESP tunnel mode with header preservation (RFC 4303; RFC 5374 §3.1; digest §9.3).

Outbound, the outer header is built from the inner one: addresses copied
as the SA's Address Preservation says (otherwise the gateway's own address
and the configured remote), DSCP and ECN copied (RFC 6040 normal mode),
TTL / hop limit copied, IPv6 flow label copied, DF cleared, set or copied
per ``df-bit``, a fresh IPv4 identification per packet, protocol 50.  An
inner packet too big for the WAN MTU once encapsulated is fragmented
before encryption when it is IPv4 without DF (seed, "Fragmenting Group
VPNv2 Traffic"); otherwise its sender gets ICMP Fragmentation Needed or
ICMPv6 Packet Too Big carrying the largest inner packet that fits.

Inbound: outer header checks, reassembly of outer fragments, SPI lookup,
ICV, padding (1, 2, 3, …), Next Header (dummy packets are dropped), the
time-based anti-replay window, inner packet sanity and the SA's traffic
selectors, then ECN propagation (RFC 6040 §4.2).  Every discarded packet
is counted and its ``DropReason`` returned.

Group SAs have many senders, so the receiver keeps no sequence-number
window (RFC 4303 §2.2; digest §9.1); freshness comes from the timestamp
shim (``wire.esp``) when the group's window is non-zero.  SAs are found by
SPI alone: the key server makes SPIs unique within a group, and the
member keeps one ``Decapsulator`` whose ``install`` refuses duplicates.

The hot path reads fields by index and packs headers with ``struct``; all
per-SA constants (trailers, overhead, fixed addresses, DF bits) are
computed once in ``EspSa``.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from ..crypto.errors import CryptoError, IntegrityError, IvSpaceExhausted
from ..crypto.suites import CbcIvSource, CounterIvSource, EspKeys, EspSuite
from ..wire.errors import WireError
from ..wire.esp import (
    ESP_HEADER_SIZE,
    TIMESTAMP_SHIM_SIZE,
    TRAILER_SIZE,
    decode_timestamp_shim,
    encode_timestamp_shim,
    ntp_timestamp,
    split_trailer,
    timestamp_delta,
    trailer,
)
from ..wire.ip import (
    FLAG_DF,
    IPV4_MIN_HEADER,
    IPV6_HEADER_SIZE,
    checksum,
    fragment_ipv4,
    icmp_error_allowed,
    icmp_fragmentation_needed,
    icmpv6_packet_too_big,
)
from ..wire.numbers import AddressPreservation, Ecn, IpProtocol
from . import DropCounters, DropReason
from .reassembly import Reassembler
from .spd import Action, Selector, SelectorCache, Spd

Address = IPv4Address | IPv6Address

_ESP = int(IpProtocol.ESP)
_IPIP = int(IpProtocol.IPV4)
_IPV6 = int(IpProtocol.IPV6)
_SHIM = int(IpProtocol.EXPERIMENT_253)
_DUMMY = int(IpProtocol.NO_NEXT_HEADER)
_FRAGMENT6 = int(IpProtocol.IPV6_FRAGMENT)
_CE, _ECT0, _ECT1, _NOT_ECT = int(Ecn.CE), int(Ecn.ECT_0), int(Ecn.ECT_1), int(Ecn.NOT_ECT)
_SEQ_MAX = 0xFFFFFFFF
# Outer header and ESP header (SPI, Sequence Number) packed at once; addresses as one field.
_IPV4_ESP = struct.Struct("!BBHHHBBH8sII")
_IPV6_ESP = struct.Struct("!4sHBB32sII")  # version | traffic class | flow label copied as one word
_U16 = struct.Struct("!H")
_FIRST_SPI = 256  # RFC 4303 §2.1: 1-255 reserved, 0 local use


class DfMode(Enum):
    """The member's ``df-bit`` setting for the outer IPv4 header (seed; default clear)."""

    CLEAR = "clear"
    SET = "set"
    COPY = "copy"


PRESERVES_SOURCE = frozenset({AddressPreservation.SOURCE_ONLY, AddressPreservation.SOURCE_AND_DESTINATION})
PRESERVES_DESTINATION = frozenset({AddressPreservation.DESTINATION_ONLY, AddressPreservation.SOURCE_AND_DESTINATION})


@dataclass(frozen=True, slots=True)
class SaConfig:
    """Everything the data plane needs to run one group SA.

    ``local`` is the gateway's own address, the outer source when the
    source is not preserved; ``remote`` the outer destination when the
    destination is not preserved.  ``replay_window`` is the group's
    time-based anti-replay window in seconds (0: off).  ``selectors``, if
    any, are what decrypted packets must match (RFC 4301 §5.2 step 4).
    """

    spi: int
    suite: EspSuite
    keys: EspKeys = field(repr=False)
    preservation: AddressPreservation = AddressPreservation.SOURCE_AND_DESTINATION
    local: Address | None = None
    remote: Address | None = None
    df: DfMode = DfMode.CLEAR
    replay_window: int = 0
    sid: int = 0
    sid_bits: int = 0
    selectors: tuple[Selector, ...] = ()

    def __post_init__(self) -> None:
        if not _FIRST_SPI <= self.spi <= _SEQ_MAX:
            raise ValueError(f"SPI {self.spi:#x} is reserved or does not fit 32 bits (RFC 4303 §2.1)")
        if self.preservation == AddressPreservation.RESERVED:
            raise ValueError("Address Preservation 0 is reserved")
        if self.preservation not in PRESERVES_SOURCE and self.local is None:
            raise ValueError(f"{self.preservation.name} needs the gateway's own address as outer source")
        if self.preservation not in PRESERVES_DESTINATION and self.remote is None:
            raise ValueError(f"{self.preservation.name} needs a remote address as outer destination")
        if self.local is not None and self.remote is not None and self.local.version != self.remote.version:
            raise ValueError(f"tunnel addresses {self.local} and {self.remote} are of different families")
        if self.replay_window < 0:
            raise ValueError(f"anti-replay window {self.replay_window} s is negative")


class IvSource(Protocol):
    def next(self) -> bytes: ...


class EspSa:
    """One SA prepared for packets: cipher context, IV source, sequence counter and header constants.

    Not thread-safe (the cipher contexts carry state): one per worker.
    ``iv_source`` overrides the suite's default (known-answer tests).
    """

    __slots__ = (
        "config",
        "spi",
        "context",
        "iv_source",
        "sequence",
        "alignment",
        "overhead",
        "shim",
        "pad_plus_trailer",
        "trailers",
        "src",
        "dst",
        "preserve_both",
        "family",
        "df_bits",
        "window_units",
        "selectors",
    )

    def __init__(self, config: SaConfig, iv_source: IvSource | None = None) -> None:
        suite = config.suite
        self.config = config
        self.spi = config.spi
        self.context = suite.prepare(config.keys)
        if iv_source is None:
            iv_source = (
                CounterIvSource(config.sid, config.sid_bits) if suite.counter_mode else CbcIvSource(suite.iv_size)
            )
        self.iv_source: IvSource = iv_source
        self.sequence = 0  # the last Sequence Number sent
        self.alignment = suite.alignment
        self.overhead = ESP_HEADER_SIZE + suite.iv_size + suite.icv_size
        self.shim = TIMESTAMP_SHIM_SIZE if config.replay_window else 0
        # plaintext size modulo the alignment -> padding + Pad Length + Next Header octets
        self.pad_plus_trailer = tuple(suite.pad_length(r) + TRAILER_SIZE for r in range(suite.alignment))
        self.trailers = {
            nh: tuple(trailer(suite.pad_length(r), nh) for r in range(suite.alignment)) for nh in (_IPIP, _IPV6, _SHIM)
        }
        preserves = config.preservation
        self.src = None if preserves in PRESERVES_SOURCE else _packed(config.local)
        self.dst = None if preserves in PRESERVES_DESTINATION else _packed(config.remote)
        self.preserve_both = self.src is None and self.dst is None
        fixed = self.src or self.dst
        self.family = 0 if fixed is None else (4 if len(fixed) == 4 else 6)
        self.df_bits = {DfMode.CLEAR: 0, DfMode.SET: FLAG_DF, DfMode.COPY: -1}[config.df]
        self.window_units = config.replay_window << 32
        self.selectors = SelectorCache(config.selectors) if config.selectors else None

    def max_inner(self, mtu: int, outer_header: int) -> int:
        """The largest inner packet whose ESP packet fits ``mtu`` (the next-hop MTU its sender is told)."""
        room = (mtu - outer_header - self.overhead) // self.alignment * self.alignment
        return room - TRAILER_SIZE - self.shim

    def __repr__(self) -> str:
        return f"EspSa(spi={self.spi:#010x}, suite={self.config.suite.name})"


def _packed(address: Address | None) -> bytes:
    assert address is not None
    return address.packed


class Encapsulator:
    """The encrypt path of one worker: policy lookup, then ESP or clear or drop, appended to ``out``."""

    def __init__(
        self,
        spd: Spd,
        mtu: int,
        *,
        drops: DropCounters | None = None,
        icmp_source_v4: IPv4Address | None = None,
        icmp_source_v6: IPv6Address | None = None,
        ip_id: int | None = None,
    ) -> None:
        self.spd = spd
        self.mtu = mtu
        self.drops = drops if drops is not None else DropCounters()
        self.icmp_source_v4 = icmp_source_v4
        self.icmp_source_v6 = icmp_source_v6
        self._ip_id = secrets.randbits(16) if ip_id is None else ip_id  # last identification used

    def process(self, packet: bytes, now: float, out: list[bytes]) -> DropReason | None:
        """Send ``packet`` from the protected side: ESP, clear (bypass/deny/fail-open) or drop."""
        verdict = self.spd.lookup(packet)
        if verdict.sa is not None:
            return self.protect(verdict.sa, packet, now, out)
        if verdict.action is Action.BYPASS:
            out.append(packet)
            return None
        assert verdict.reason is not None
        return self.drops.add(verdict.reason)

    def protect(self, sa: EspSa, packet: bytes, now: float, out: list[bytes]) -> DropReason | None:
        """Encapsulate ``packet`` under ``sa``: one ESP packet, several (pre-fragmented) or an ICMP error."""
        size = len(packet)
        if size < IPV4_MIN_HEADER:
            return self.drops.add(DropReason.MALFORMED)
        version = packet[0] >> 4
        if version == 4:
            if (packet[2] << 8 | packet[3]) != size or packet[0] & 0x0F < 5:
                return self.drops.add(DropReason.MALFORMED)
            outer = IPV4_MIN_HEADER
        elif version == 6:
            if size < IPV6_HEADER_SIZE or (packet[4] << 8 | packet[5]) + IPV6_HEADER_SIZE != size:
                return self.drops.add(DropReason.MALFORMED)
            outer = IPV6_HEADER_SIZE
        else:
            return self.drops.add(DropReason.MALFORMED)
        if sa.family and sa.family != version:
            return self.drops.add(DropReason.FAMILY_MISMATCH)
        plain = size + sa.shim
        try:
            if outer + sa.overhead + plain + sa.pad_plus_trailer[plain % sa.alignment] > self.mtu:
                return self._too_big(sa, packet, version, now, out)
            out.append(self._seal(sa, packet, version, now))
        except IvSpaceExhausted:
            return self.drops.add(DropReason.IV_EXHAUSTED)
        return None

    def _seal(self, sa: EspSa, packet: bytes, version: int, now: float) -> bytes:
        size = len(packet)
        inner = _IPIP if version == 4 else _IPV6
        if sa.shim:
            stamp = encode_timestamp_shim(inner, ntp_timestamp(now))
            plaintext = b"".join((stamp, packet, sa.trailers[_SHIM][(size + TIMESTAMP_SHIM_SIZE) % sa.alignment]))
        else:
            plaintext = packet + sa.trailers[inner][size % sa.alignment]
        seq = sa.sequence = sa.sequence % _SEQ_MAX + 1  # never 0; no receiver window to protect
        esp = sa.overhead + len(plaintext)  # ESP header | IV | ciphertext | ICV
        if version == 6:
            addresses = packet[8:40] if sa.preserve_both else (sa.src or packet[8:24]) + (sa.dst or packet[24:40])
            prefix = _IPV6_ESP.pack(packet[:4], esp, _ESP, packet[7], addresses, sa.spi, seq)
            return sa.context.seal_after(prefix, prefix[IPV6_HEADER_SIZE:], plaintext, sa.iv_source.next())
        tos, ttl = packet[1], packet[8]
        total = IPV4_MIN_HEADER + esp
        ident = self._ip_id = (self._ip_id + 1) & 0xFFFF
        frag = sa.df_bits if sa.df_bits >= 0 else (packet[6] << 8) & FLAG_DF
        addresses = packet[12:20] if sa.preserve_both else (sa.src or packet[12:16]) + (sa.dst or packet[16:20])
        # RFC 1071 sum of the header words modulo 0xFFFF (see wire.ip); the 8 address
        # octets as one integer are congruent to the sum of their four words.
        folded = ((0x4500 | tos) + total + ident + frag + (ttl << 8 | _ESP) + int.from_bytes(addresses, "big")) % 0xFFFF
        csum = 0xFFFF - folded if folded else 0
        prefix = _IPV4_ESP.pack(0x45, tos, total, ident, frag, ttl, _ESP, csum, addresses, sa.spi, seq)
        return sa.context.seal_after(prefix, prefix[IPV4_MIN_HEADER:], plaintext, sa.iv_source.next())

    def _too_big(self, sa: EspSa, packet: bytes, version: int, now: float, out: list[bytes]) -> DropReason | None:
        limit = sa.max_inner(self.mtu, IPV4_MIN_HEADER if version == 4 else IPV6_HEADER_SIZE)
        if version == 4 and not (packet[6] << 8) & FLAG_DF:
            try:
                fragments = fragment_ipv4(packet, limit)
            except WireError:
                return self.drops.add(DropReason.MALFORMED)
            except ValueError:
                return self.drops.add(DropReason.MTU_TOO_SMALL)
            out.extend(self._seal(sa, fragment, 4, now) for fragment in fragments)
            return None
        if limit <= 0:
            return self.drops.add(DropReason.MTU_TOO_SMALL)
        if icmp_error_allowed(packet):
            if version == 4 and self.icmp_source_v4 is not None:
                self._ip_id = (self._ip_id + 1) & 0xFFFF
                out.append(icmp_fragmentation_needed(packet, limit, self.icmp_source_v4, self._ip_id))
            elif version == 6 and self.icmp_source_v6 is not None:
                out.append(icmpv6_packet_too_big(packet, limit, self.icmp_source_v6))
        return self.drops.add(DropReason.FRAGMENTATION_NEEDED)


class Decapsulator:
    """The decrypt path of one worker over the set of SAs it accepts (all SPIs of the group, old and new)."""

    def __init__(
        self,
        sas: Iterable[EspSa] = (),
        *,
        drops: DropCounters | None = None,
        reassembler: Reassembler | None = None,
    ) -> None:
        self.drops = drops if drops is not None else DropCounters()
        self.reassembler = reassembler if reassembler is not None else Reassembler(drops=self.drops)
        self._sas: dict[int, EspSa] = {}
        self.install(sas)

    @property
    def spis(self) -> frozenset[int]:
        return frozenset(self._sas)

    def install(self, sas: Iterable[EspSa]) -> None:
        """Replace the accepted SAs in one step (rekey rollover: old and new SPIs side by side)."""
        table: dict[int, EspSa] = {}
        for sa in sas:
            if sa.spi in table:
                raise ValueError(f"SPI {sa.spi:#010x} installed twice")
            table[sa.spi] = sa
        self._sas = table

    def process(self, packet: bytes, now: float) -> bytes | DropReason | None:
        """The inner packet, None while an outer fragment waits for the rest, or the drop reason."""
        return self._receive(packet, now, True)

    def _receive(self, packet: bytes, now: float, may_reassemble: bool) -> bytes | DropReason | None:
        size = len(packet)
        if size < IPV4_MIN_HEADER:
            return self.drops.add(DropReason.MALFORMED)
        version = packet[0] >> 4
        if version == 4:
            hlen = (packet[0] & 0x0F) << 2
            # A header with a valid checksum sums to negative zero: as one integer it is
            # 0 modulo 0xFFFF (wire.ip.checksum_valid, inlined on the packet path).
            if (
                hlen < IPV4_MIN_HEADER
                or size < hlen
                or (packet[2] << 8 | packet[3]) != size
                or int.from_bytes(packet[:hlen], "big") % 0xFFFF
            ):
                return self.drops.add(DropReason.MALFORMED)
            if packet[6] & 0x3F or packet[7]:
                return self._reassemble(packet, now, may_reassemble)
            if packet[9] != _ESP:
                return self.drops.add(DropReason.NOT_ESP)
            outer_ecn = packet[1] & 0x03
        elif version == 6:
            hlen = IPV6_HEADER_SIZE
            if size < hlen or (packet[4] << 8 | packet[5]) + hlen != size:
                return self.drops.add(DropReason.MALFORMED)
            if packet[6] == _FRAGMENT6:
                return self._reassemble(packet, now, may_reassemble)
            if packet[6] != _ESP:
                return self.drops.add(DropReason.NOT_ESP)
            outer_ecn = packet[1] >> 4 & 0x03
        else:
            return self.drops.add(DropReason.MALFORMED)
        return self._open(packet, hlen, outer_ecn, now)

    def _reassemble(self, packet: bytes, now: float, may_reassemble: bool) -> bytes | DropReason | None:
        if not may_reassemble:  # a reassembled datagram that is a fragment again
            return self.drops.add(DropReason.MALFORMED)
        whole = self.reassembler.push(packet, now)
        if type(whole) is bytes:
            return self._receive(whole, now, False)
        return whole

    def _open(self, packet: bytes, hlen: int, outer_ecn: int, now: float) -> bytes | DropReason:
        if len(packet) <= hlen + ESP_HEADER_SIZE:
            return self.drops.add(DropReason.MALFORMED)
        sa = self._sas.get(int.from_bytes(packet[hlen : hlen + 4], "big"))
        if sa is None:
            return self.drops.add(DropReason.UNKNOWN_SPI)
        try:
            plain = sa.context.open_from(packet, hlen)
        except IntegrityError:
            return self.drops.add(DropReason.ICV_FAILURE)
        except CryptoError:
            return self.drops.add(DropReason.MALFORMED)
        try:
            end, next_header = split_trailer(plain)
        except WireError:
            return self.drops.add(DropReason.BAD_PADDING)
        start = 0
        if next_header == _SHIM:
            try:
                next_header, stamp = decode_timestamp_shim(plain)
            except WireError:
                return self.drops.add(DropReason.INNER_MALFORMED)
            if sa.window_units and abs(timestamp_delta(stamp, ntp_timestamp(now))) > sa.window_units:
                return self.drops.add(DropReason.REPLAY_WINDOW)
            start = TIMESTAMP_SHIM_SIZE
        elif next_header == _DUMMY:
            return self.drops.add(DropReason.DUMMY_PACKET)
        elif next_header != _IPIP and next_header != _IPV6:
            return self.drops.add(DropReason.UNSUPPORTED_NEXT_HEADER)
        elif sa.window_units:
            return self.drops.add(DropReason.MISSING_TIMESTAMP)
        inner = plain[start:end]
        size = len(inner)
        if next_header == _IPIP:
            ihl = (inner[0] & 0x0F) << 2 if size else 0
            if (
                size < IPV4_MIN_HEADER
                or inner[0] >> 4 != 4
                or ihl < IPV4_MIN_HEADER
                or ihl > size
                or (inner[2] << 8 | inner[3]) != size
                or int.from_bytes(inner[:ihl], "big") % 0xFFFF  # checksum (see _receive)
            ):
                return self.drops.add(DropReason.INNER_MALFORMED)
            inner_ecn = inner[1] & 0x03
        else:
            if size < IPV6_HEADER_SIZE or inner[0] >> 4 != 6 or (inner[4] << 8 | inner[5]) + IPV6_HEADER_SIZE != size:
                return self.drops.add(DropReason.INNER_MALFORMED)
            inner_ecn = inner[1] >> 4 & 0x03
        if sa.selectors is not None and not sa.selectors.admits(inner):
            return self.drops.add(DropReason.SELECTOR_MISMATCH)
        if outer_ecn == _CE:
            if inner_ecn == _NOT_ECT:
                return self.drops.add(DropReason.ECN_CE_NOT_ECT)
            if inner_ecn != _CE:
                return _with_ecn(inner, _CE)
        elif outer_ecn == _ECT1 and inner_ecn == _ECT0:
            return _with_ecn(inner, _ECT1)
        return inner


def _with_ecn(packet: bytes, ecn: int) -> bytes:
    """``packet`` with its ECN field set (RFC 6040 §4.2), IPv4 checksum updated."""
    out = bytearray(packet)
    if out[0] >> 4 == 4:
        out[1] = out[1] & 0xFC | ecn
        hlen = (out[0] & 0x0F) << 2
        _U16.pack_into(out, 10, 0)
        _U16.pack_into(out, 10, checksum(out[:hlen]))
    else:
        out[1] = out[1] & 0xCF | ecn << 4
    return bytes(out)
