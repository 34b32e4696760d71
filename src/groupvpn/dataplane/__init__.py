"""The packet path: policy lookup, ESP encapsulation and decapsulation, outer fragment reassembly.

Sans-IO like the protocol cores: packets in as bytes with ``now`` (Unix
time, seconds), packets out appended to a list, never a socket or a clock.
Built for speed: everything an SA needs is prepared once, packets are read
with ``struct``/indexing instead of being parsed into objects, and a
dropped packet costs one counter increment and returns its reason.

spd          ordered rules, bypass and fail-open entries, flow cache
esp_path     SAs, encapsulation (header preservation, DF, pre-fragmentation, ICMP) and decapsulation
reassembly   outer ESP fragments, bounded and timed out
offload      the TUN's virtio_net_hdr, decrypted TCP segments joined into GSO packets
"""

from __future__ import annotations

from enum import IntEnum


class DropReason(IntEnum):
    """Why the data plane discarded a packet; the values index ``DropCounters``."""

    MALFORMED = 0  # outer header, ESP framing or fragment fields invalid
    NOT_ESP = 1  # outer protocol is not ESP, or IPv6 extension headers we do not walk
    UNKNOWN_SPI = 2
    ICV_FAILURE = 3
    BAD_PADDING = 4
    DUMMY_PACKET = 5  # Next Header 59 (RFC 4303 §2.6): silently dropped
    UNSUPPORTED_NEXT_HEADER = 6  # not tunnel mode (4/41) nor the timestamp shim
    INNER_MALFORMED = 7  # decrypted packet's version, lengths or checksum wrong
    MISSING_TIMESTAMP = 8  # time-based anti-replay is on but the packet has no timestamp
    REPLAY_WINDOW = 9  # timestamp outside [now - window, now + window]
    SELECTOR_MISMATCH = 10  # decrypted packet outside the SA's traffic selectors (RFC 4301 §5.2)
    ECN_CE_NOT_ECT = 11  # outer CE over a Not-ECT inner packet (RFC 6040 §4.2)
    FRAGMENT_OVERLAP = 12
    DUPLICATE_FRAGMENT = 13
    TOO_MANY_FRAGMENTS = 14
    REASSEMBLY_TIMEOUT = 15
    REASSEMBLY_LIMIT = 16  # the datagram or octet budget is used up
    NO_POLICY = 17  # no rule matches: fail closed
    NO_SA = 18  # a permit rule matches but it has no SA (and no fail-open rule applies)
    FRAGMENTATION_NEEDED = 19  # too big with DF set: an ICMP error went back instead
    MTU_TOO_SMALL = 20  # the WAN MTU cannot carry even a minimal fragment
    FAMILY_MISMATCH = 21  # the SA's tunnel addresses are not of the packet's IP version
    IV_EXHAUSTED = 22  # the SA's counter IVs ran out; it needs replacing
    VNET_HEADER = 23  # a TUN read's virtio_net_hdr asks for segmentation or checksums that were never offered


class DropCounters:
    """Per-reason drop counts, cheap to bump from the packet path and shared between its stages."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * len(DropReason)

    def add(self, reason: DropReason) -> DropReason:
        self.counts[reason] += 1
        return reason

    def __getitem__(self, reason: DropReason) -> int:
        return self.counts[reason]

    def as_dict(self) -> dict[str, int]:
        """Non-zero counts by reason name, for operational output."""
        return {reason.name.lower(): count for reason, count in zip(DropReason, self.counts, strict=True) if count}
