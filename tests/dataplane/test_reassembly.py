"""Outer fragment reassembly: order, limits, timeouts and overlaps, on an injected clock."""

from __future__ import annotations

import random
import struct

import dpkt
import pytest
from dataplane_packets import rfc1071

from groupvpn.dataplane import DropCounters, DropReason
from groupvpn.dataplane.reassembly import Reassembler
from groupvpn.wire.ip import IPv6Fragment, fragment_ipv4

T0 = 5000.0


def esp_like(size: int = 1400, ident: int = 0x2222, src: str = "198.18.1.1") -> bytes:
    """An IPv4 packet of protocol 50 (the payload is never looked at here)."""
    ip = dpkt.ip.IP(
        src=bytes(map(int, src.split("."))), dst=bytes([198, 18, 2, 2]), p=50, id=ident, data=bytes(range(256)) * 8
    )
    ip.data = ip.data[: size - 20]
    return bytes(ip)


def v4_fragment(packet: bytes, offset: int, data: bytes, more: bool) -> bytes:
    """A hand-made fragment of ``packet`` (for overlaps fragment_ipv4 would never produce)."""
    ip = dpkt.ip.IP(packet)
    ip.data, ip.offset, ip.mf, ip.sum = data, offset // 8, int(more), 0  # dpkt counts 8-octet units
    return bytes(ip)


def v6_fragments(payload: bytes, size: int, ident: int = 9) -> list[bytes]:
    src, dst = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("20010db8" + "00" * 11 + "02")
    pieces = []
    for offset in range(0, len(payload), size):
        chunk = payload[offset : offset + size]
        header = IPv6Fragment(50, offset, offset + size < len(payload), ident).encode()
        fixed = struct.pack("!IHBB16s16s", 6 << 28 | 0x12345, len(header) + len(chunk), 44, 33, src, dst)
        pieces.append(fixed + header + chunk)
    return pieces


@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled"])
def test_ipv4_fragments_in_any_order(order: str) -> None:
    whole = esp_like()
    fragments = fragment_ipv4(whole, 300)
    if order == "reversed":
        fragments.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(fragments)
    reassembler = Reassembler()
    results = [reassembler.push(fragment, T0) for fragment in fragments]
    assert results[:-1] == [None] * (len(fragments) - 1)
    assert results[-1] == whole
    assert rfc1071(results[-1][:20]) == 0
    assert (reassembler.held_datagrams, reassembler.held_bytes) == (0, 0)


def test_df_survives_reassembly() -> None:
    whole = esp_like(200)
    fragments = [
        dpkt.ip.IP(v4_fragment(whole, 0, whole[20:100], True)),
        dpkt.ip.IP(v4_fragment(whole, 80, whole[100:], False)),
    ]
    for ip in fragments:
        ip.df, ip.sum = 1, 0
    reassembler = Reassembler()
    assert reassembler.push(bytes(fragments[0]), T0) is None
    result = reassembler.push(bytes(fragments[1]), T0)
    assert isinstance(result, bytes)
    ip = dpkt.ip.IP(result)
    assert (ip.df, ip.mf, ip.offset, bytes(ip.data)) == (1, 0, 0, whole[20:])
    assert rfc1071(result[:20]) == 0


def test_ipv6_fragments() -> None:
    payload = bytes(range(256)) * 4
    reassembler = Reassembler()
    pieces = v6_fragments(payload, 256)
    results = [reassembler.push(piece, T0) for piece in reversed(pieces)]
    whole = results[-1]
    assert results[:-1] == [None] * 3 and isinstance(whole, bytes)
    assert whole[6] == 50 and struct.unpack("!H", whole[4:6])[0] == len(payload) and whole[40:] == payload
    assert whole[:4] == pieces[0][:4] and whole[7:40] == pieces[0][7:40]


def test_ipv6_atomic_fragment_stands_alone() -> None:
    reassembler = Reassembler()
    [atomic] = v6_fragments(b"x" * 16, 64, ident=9)
    reassembler.push(v6_fragments(b"y" * 32, 16, ident=9)[0], T0)  # same key, incomplete
    assert reassembler.push(atomic, T0) == atomic[:4] + struct.pack("!HB", 16, 50) + atomic[7:40] + b"x" * 16
    assert reassembler.held_datagrams == 1


def test_datagrams_are_keyed_by_addresses_identification_and_protocol() -> None:
    reassembler = Reassembler()
    a, b = fragment_ipv4(esp_like(ident=1), 300), fragment_ipv4(esp_like(ident=2), 300)
    c = fragment_ipv4(esp_like(ident=1, src="198.18.1.9"), 300)
    for fragments in (a, b, c):
        reassembler.push(fragments[0], T0)
    assert reassembler.held_datagrams == 3
    for fragments, ident, src in ((c, 1, "198.18.1.9"), (a, 1, "198.18.1.1"), (b, 2, "198.18.1.1")):
        results = [reassembler.push(f, T0) for f in fragments[1:]]
        assert results[-1] == esp_like(ident=ident, src=src)


def test_timeout_discards_incomplete_datagrams() -> None:
    drops = DropCounters()
    reassembler = Reassembler(drops=drops, timeout=30.0)
    first, *rest = fragment_ipv4(esp_like(), 300)
    assert reassembler.push(first, T0) is None
    assert reassembler.next_deadline() == T0 + 30.0
    assert reassembler.expire(T0 + 29.999) == 0
    assert reassembler.expire(T0 + 30.0) == 1
    assert drops.as_dict() == {"reassembly_timeout": 1}
    assert reassembler.next_deadline() is None and reassembler.held_bytes == 0
    # the rest alone never completes: the first piece is gone
    assert [reassembler.push(f, T0 + 31) for f in rest] == [None] * len(rest)


def test_push_expires_old_datagrams_first() -> None:
    reassembler = Reassembler(max_datagrams=1, timeout=10.0)
    reassembler.push(fragment_ipv4(esp_like(ident=1), 300)[0], T0)
    assert reassembler.push(fragment_ipv4(esp_like(ident=2), 300)[0], T0 + 5) is DropReason.REASSEMBLY_LIMIT
    assert reassembler.push(fragment_ipv4(esp_like(ident=2), 300)[0], T0 + 10) is None
    assert reassembler.drops.as_dict() == {"reassembly_limit": 1, "reassembly_timeout": 1}


def test_octet_budget() -> None:
    reassembler = Reassembler(max_bytes=600)
    fragments = fragment_ipv4(esp_like(1400), 300)
    assert [reassembler.push(f, T0) for f in fragments[:2]] == [None, None]
    assert reassembler.held_bytes == 560
    assert reassembler.push(fragments[2], T0) is DropReason.REASSEMBLY_LIMIT
    assert reassembler.push(fragment_ipv4(esp_like(ident=5), 300)[0], T0) is DropReason.REASSEMBLY_LIMIT
    assert reassembler.held_datagrams == 1  # the refused new datagram left nothing behind


def test_too_many_fragments() -> None:
    reassembler = Reassembler(max_fragments=4)
    fragments = fragment_ipv4(esp_like(1400), 300)  # 5 pieces
    results = [reassembler.push(f, T0) for f in fragments]
    assert results == [None] * 4 + [DropReason.TOO_MANY_FRAGMENTS]
    assert reassembler.held_datagrams == 0


def test_overlap_discards_the_whole_datagram() -> None:
    whole = esp_like(200)
    data = whole[20:]
    reassembler = Reassembler()
    assert reassembler.push(v4_fragment(whole, 0, data[:96], True), T0) is None
    assert reassembler.push(v4_fragment(whole, 88, data[88:], False), T0) is DropReason.FRAGMENT_OVERLAP
    assert reassembler.held_datagrams == 0
    # what arrives after the discard starts a new datagram that the missing piece never completes
    assert reassembler.push(v4_fragment(whole, 96, data[96:], False), T0) is None


def test_exact_duplicate_is_dropped_alone() -> None:
    whole = esp_like(200)
    first, second = fragment_ipv4(whole, 120)
    reassembler = Reassembler()
    assert reassembler.push(first, T0) is None
    assert reassembler.push(first, T0) is DropReason.DUPLICATE_FRAGMENT
    assert reassembler.push(second, T0) == whole


def test_same_range_different_bytes_is_an_overlap() -> None:
    whole = esp_like(200)
    first = fragment_ipv4(whole, 120)[0]
    forged = first[:-1] + bytes([first[-1] ^ 1])
    reassembler = Reassembler()
    reassembler.push(first, T0)
    assert reassembler.push(forged, T0) is DropReason.FRAGMENT_OVERLAP


@pytest.mark.parametrize(
    "make",
    [
        lambda w: v4_fragment(w, 0, w[20:31], True),  # not a multiple of 8 before the end
        lambda w: v4_fragment(w, 8, b"", False),  # no data
        lambda w: v4_fragment(w, 8184 * 8, bytes(64), False),  # past 65535 octets
    ],
)
def test_malformed_fragments(make) -> None:
    reassembler = Reassembler()
    assert reassembler.push(make(esp_like(200)), T0) is DropReason.MALFORMED
    assert reassembler.held_datagrams == 0


def test_inconsistent_ends_discard_the_datagram() -> None:
    whole = esp_like(200)
    data = whole[20:]
    reassembler = Reassembler()
    assert reassembler.push(v4_fragment(whole, 80, data[80:120], False), T0) is None  # ends at 120
    assert reassembler.push(v4_fragment(whole, 160, data[160:], False), T0) is DropReason.MALFORMED
    assert reassembler.push(v4_fragment(whole, 80, data[80:120], False), T0) is None
    assert reassembler.push(v4_fragment(whole, 120, data[120:160], True), T0) is DropReason.MALFORMED
    assert reassembler.push(v4_fragment(whole, 120, data[120:160], True), T0) is None
    assert reassembler.push(v4_fragment(whole, 80, data[80:96], False), T0) is DropReason.MALFORMED
    assert reassembler.held_datagrams == 0


def test_truncated_ipv6_fragment_header() -> None:
    piece = v6_fragments(bytes(64), 32)[0]
    assert Reassembler().push(piece[:44], T0) is DropReason.MALFORMED
