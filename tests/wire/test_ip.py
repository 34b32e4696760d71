"""IPv4/IPv6 header codecs, checksums, fragmentation and the ICMP "too big" builders.

Checksums are checked against a word-by-word RFC 1071 loop written here,
packets against dpkt's independent parser.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from groupvpn.wire.errors import WireError
from groupvpn.wire.ip import (
    IPV6_MIN_MTU,
    IPv4Header,
    IPv6Fragment,
    IPv6Header,
    checksum,
    checksum_valid,
    decode_packet,
    fragment_ipv4,
    icmp_error_allowed,
    icmp_fragmentation_needed,
    icmpv6_packet_too_big,
    option_units,
    pseudo_header_v6,
)


def rfc1071(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp4(payload: bytes = b"x" * 40, *, df: bool = False, options: bytes = b"", ident: int = 0x1234) -> bytes:
    ip = dpkt.ip.IP(
        src=IPv4Address("198.18.1.1").packed,
        dst=IPv4Address("198.18.2.2").packed,
        p=17,
        id=ident,
        ttl=61,
        tos=0x2E,
        opts=options,
        data=dpkt.udp.UDP(sport=1111, dport=2222, data=payload),
    )
    ip.df = int(df)
    ip.hl = 5 + len(options) // 4  # dpkt does not derive it from the options
    ip.data.ulen = 8 + len(payload)
    return bytes(ip)


@given(st.binary(max_size=64))
def test_checksum_matches_the_rfc_1071_loop(data: bytes) -> None:
    assert checksum(data) == rfc1071(data)


@given(st.binary(min_size=2, max_size=64).filter(lambda d: any(d)))
def test_a_buffer_with_its_checksum_appended_is_valid(data: bytes) -> None:
    data += b"\x00" * (len(data) % 2)
    assert checksum_valid(data + checksum(data).to_bytes(2, "big"))
    assert not checksum_valid(data + ((checksum(data) + 1) % 0xFFFF or 1).to_bytes(2, "big"))


def test_all_zero_data_has_no_valid_checksum() -> None:
    assert checksum(bytes(20)) == 0xFFFF
    assert not checksum_valid(bytes(20))


def test_ipv4_header_round_trip_with_options_and_checksum() -> None:
    packet = udp4(options=b"\x94\x04\x00\x00")  # Router Alert, copied
    header = IPv4Header.decode(packet)
    assert header.options == b"\x94\x04\x00\x00"
    assert header.header_length == 24
    assert (header.tos, header.dscp, header.ecn, header.ttl, header.identification) == (0x2E, 11, 2, 61, 0x1234)
    assert header.protocol == 17 and header.total_length == len(packet)
    assert header.encode() == packet[:24]
    assert rfc1071(header.encode()) == 0


def test_ipv4_header_fields_and_fragment_flags() -> None:
    header = IPv4Header(IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), 50, 1500, flags=0b011, fragment_offset=1480)
    encoded = header.encode()
    assert encoded[6:8] == (0x2000 | 0x4000 | 185).to_bytes(2, "big")
    decoded = IPv4Header.decode(encoded)
    assert decoded == header and decoded.dont_fragment and decoded.more_fragments and decoded.is_fragment


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda b: b[:19], "too short"),
        (lambda b: b"\x65" + b[1:], "version 6"),
        (lambda b: b"\x44" + b[1:], "IHL 4"),
        (lambda b: b"\x4f" + b[1:40], "runs past"),
        (lambda b: b[:2] + b"\x00\x10" + b[4:], "shorter than the header"),
        (lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:], "checksum"),
    ],
)
def test_ipv4_decode_errors(mutate, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        IPv4Header.decode(mutate(udp4()))


def test_ipv4_option_without_valid_length_is_an_error() -> None:
    header = bytearray(
        IPv4Header(IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), 17, 24, options=b"\x07\x09\x00\x00").encode()
    )
    with pytest.raises(WireError, match="option 7 has no valid length"):
        IPv4Header.decode(bytes(header))


def test_option_units_stop_at_end_of_list() -> None:
    assert option_units(b"\x01\x94\x04\x00\x00\x00\x07\x03") == [(0, 1), (1, 4)]


def test_ipv6_header_and_fragment_round_trip() -> None:
    header = IPv6Header(
        IPv6Address("2001:db8::1"),
        IPv6Address("ff0e::1:3"),
        59,
        1240,
        traffic_class=0xB9,
        flow_label=0xABCDE,
        hop_limit=7,
    )
    encoded = header.encode()
    parsed = dpkt.ip6.IP6(encoded + bytes(1240))
    assert (parsed.fc, parsed.flow, parsed.hlim, parsed.nxt) == (0xB9, 0xABCDE, 7, 59)
    assert IPv6Header.decode(encoded) == header and header.ecn == 1
    fragment = IPv6Fragment(50, 1232, True, 0xDEADBEEF)
    assert fragment.encode() == bytes.fromhex("3200 04d1 deadbeef")
    assert IPv6Fragment.decode(fragment.encode()) == fragment


def test_ipv6_fragment_reserved_fields_are_ignored_on_receipt() -> None:
    assert IPv6Fragment.decode(bytes.fromhex("32ff 04d7 00000001")) == IPv6Fragment(50, 1232, True, 1)


def test_ipv6_decode_errors() -> None:
    with pytest.raises(WireError, match="version 4"):
        IPv6Header.decode(b"\x40" + bytes(39))
    with pytest.raises(WireError, match="too short"):
        IPv6Header.decode(b"\x60" + bytes(38))
    with pytest.raises(WireError, match="need 8"):
        IPv6Fragment.decode(bytes(7))


def test_decode_packet_checks_the_length_fields() -> None:
    packet = udp4()
    header, payload = decode_packet(packet)
    assert isinstance(header, IPv4Header) and payload == packet[20:]
    with pytest.raises(WireError, match="length fields say"):
        decode_packet(packet + b"\x00")
    with pytest.raises(WireError, match="empty"):
        decode_packet(b"")


def _reassemble(fragments: list[bytes]) -> bytes:
    data = b"".join(bytes(dpkt.ip.IP(f).data) for f in sorted(fragments, key=lambda f: dpkt.ip.IP(f).offset))
    return data


@pytest.mark.parametrize("max_size", [68, 100, 576, 1000])
def test_fragment_ipv4_pieces_fit_and_put_back_together(max_size: int) -> None:
    packet = udp4(bytes(range(256)) * 5, options=b"\x94\x04\x00\x00\x07\x07\x04" + bytes(5))
    fragments = fragment_ipv4(packet, max_size)
    assert len(fragments) > 1
    for i, fragment in enumerate(fragments):
        ip = dpkt.ip.IP(fragment)
        assert len(fragment) <= max_size and ip.len == len(fragment)
        assert rfc1071(fragment[: ip.hl * 4]) == 0
        assert ip.id == 0x1234 and ip.ttl == 61 and ip.tos == 0x2E and ip.p == 17
        assert ip.mf == (i < len(fragments) - 1)
        # the first fragment keeps all options; later ones only the copied Router Alert, padded
        assert bytes(ip.opts) == (packet[20:32] if i == 0 else b"\x94\x04\x00\x00")
        if i < len(fragments) - 1:
            assert len(ip.data) % 8 == 0
    assert _reassemble(fragments) == packet[32:]


def test_fragment_ipv4_keeps_the_offset_and_mf_of_a_fragment() -> None:
    header = IPv4Header(IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), 17, 20 + 96, flags=1, fragment_offset=800)
    fragments = fragment_ipv4(header.encode() + bytes(96), 60)
    offsets = [dpkt.ip.IP(f).offset * 8 for f in fragments]
    assert offsets == [800, 840, 880]
    assert all(dpkt.ip.IP(f).mf for f in fragments)


def test_fragment_ipv4_small_packet_df_and_tiny_mtu() -> None:
    assert fragment_ipv4(udp4(), 1500) == [udp4()]
    with pytest.raises(ValueError, match="DF set"):
        fragment_ipv4(udp4(df=True), 40)
    with pytest.raises(ValueError, match="cannot hold"):
        fragment_ipv4(udp4(), 27)
    with pytest.raises(WireError, match="total length"):
        fragment_ipv4(udp4() + b"\x00", 40)


def test_icmp_fragmentation_needed() -> None:
    original = udp4(b"y" * 1400, df=True)
    icmp = icmp_fragmentation_needed(original, 1418, IPv4Address("198.18.0.1"), identification=7)
    ip = dpkt.ip.IP(icmp)
    assert len(icmp) == 576 and ip.len == 576
    assert (ip.src, ip.dst, ip.p, ip.tos, ip.id) == (IPv4Address("198.18.0.1").packed, original[12:16], 1, 0xC0, 7)
    assert rfc1071(icmp[:20]) == 0 and rfc1071(icmp[20:]) == 0
    message = icmp[20:]
    assert (message[0], message[1]) == (3, 4)
    assert struct.unpack("!HH", message[4:8]) == (0, 1418)
    assert message[8:] == original[: 576 - 28]


def test_icmpv6_packet_too_big() -> None:
    original = bytes(
        dpkt.ip6.IP6(
            src=IPv6Address("2001:db8::5").packed,
            dst=IPv6Address("2001:db8::6").packed,
            nxt=59,
            hlim=9,
            plen=1400,
            data=bytes(1400),
        )
    )
    source = IPv6Address("2001:db8::1")
    icmp = icmpv6_packet_too_big(original, 1362, source)
    assert len(icmp) == IPV6_MIN_MTU
    ip = dpkt.ip6.IP6(icmp)
    assert (ip.src, ip.dst, ip.nxt, ip.plen) == (source.packed, original[8:24], 58, 1240)
    message = icmp[40:]
    assert (message[0], message[1], struct.unpack("!I", message[4:8])[0]) == (2, 0, 1362)
    assert rfc1071(pseudo_header_v6(source.packed, original[8:24], len(message), 58) + message) == 0
    assert message[8:] == original[:1232]


def _icmp4(type_: int) -> bytes:
    ip = dpkt.ip.IP(src=bytes([198, 18, 1, 1]), dst=bytes([198, 18, 2, 2]), p=1, data=bytes([type_, 0]) + bytes(30))
    return bytes(ip)


@pytest.mark.parametrize(
    ("packet", "allowed"),
    [
        (udp4(), True),
        (_icmp4(8), True),  # echo request
        (_icmp4(3), False),  # an error never answers an error
        (_icmp4(11), False),
        (udp4()[:16] + bytes([239, 1, 1, 1]) + udp4()[20:], False),  # multicast destination
        (udp4()[:16] + bytes([255] * 4) + udp4()[20:], False),
        (udp4()[:12] + bytes(4) + udp4()[16:], False),  # unspecified source
        (udp4()[:6] + b"\x00\x10" + udp4()[8:], False),  # non-first fragment
        (bytes(10), False),
    ],
)
def test_icmp_error_allowed_ipv4(packet: bytes, allowed: bool) -> None:
    assert icmp_error_allowed(packet) is allowed


def _ip6(nxt: int, src: str = "2001:db8::5", dst: str = "2001:db8::6", data: bytes = bytes(8)) -> bytes:
    return bytes(
        dpkt.ip6.IP6(src=IPv6Address(src).packed, dst=IPv6Address(dst).packed, nxt=nxt, plen=len(data), data=data)
    )


@pytest.mark.parametrize(
    ("packet", "allowed"),
    [
        (_ip6(17), True),
        (_ip6(17, dst="ff02::1"), True),  # Packet Too Big is the exception for multicast
        (_ip6(58, data=bytes([128]) + bytes(7)), True),
        (_ip6(58, data=bytes([1]) + bytes(7)), False),
        (_ip6(17, src="::"), False),
        (_ip6(17, src="ff02::1"), False),
        (bytes([0x60]) + bytes(20), False),
    ],
)
def test_icmp_error_allowed_ipv6(packet: bytes, allowed: bool) -> None:
    assert icmp_error_allowed(packet) is allowed
