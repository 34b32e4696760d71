"""ESP tunnel mode with header preservation: encapsulation, decapsulation and every drop reason."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_network

import dpkt
import pytest
from dataplane_packets import (
    ALL_SUITES,
    CBC_SHA1,
    GCM128,
    NOW,
    SPI,
    addresses,
    icmp_echo,
    keys_for,
    make_sa,
    outer_v4,
    reframe,
    rfc1071,
    udp,
    with_ecn,
)

from groupvpn.crypto.suites import EspKeys, EspSuite, esp_suite
from groupvpn.dataplane import DropCounters, DropReason
from groupvpn.dataplane.esp_path import Decapsulator, DfMode, Encapsulator, EspSa, SaConfig
from groupvpn.dataplane.spd import Rule, Selector, Spd
from groupvpn.wire.esp import ESP_HEADER, encode_timestamp_shim, ntp_timestamp, split_trailer, trailer
from groupvpn.wire.ip import IPv6Fragment, fragment_ipv4
from groupvpn.wire.numbers import AddressPreservation, AuthAlgorithm, EspTransform, PolicyAction

GATEWAY4, REMOTE4 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.99")
GATEWAY6, REMOTE6 = IPv6Address("2001:db8::1"), IPv6Address("2001:db8::99")


def protect(sa: EspSa, packet: bytes, *, mtu: int = 1500, now: float = NOW, **options: object) -> list[bytes]:
    out: list[bytes] = []
    encapsulator = Encapsulator(Spd(), mtu, **options)  # type: ignore[arg-type]
    assert encapsulator.protect(sa, packet, now, out) is None, encapsulator.drops.as_dict()
    return out


def seal_one(sa: EspSa, packet: bytes, **options: object) -> bytes:
    [esp] = protect(sa, packet, **options)
    return esp


def plaintext_of(sa: EspSa, esp: bytes) -> bytes:
    """Decrypt an ESP packet directly with the SA's context (no checks beyond the ICV)."""
    hlen = 20 if esp[0] >> 4 == 4 else 40
    return sa.context.open(esp[hlen : hlen + 8], esp[hlen + 8 :])


def resealed(sa: EspSa, esp: bytes, plaintext: bytes) -> bytes:
    """``esp`` with its payload replaced by ``plaintext`` under a valid ICV (for packets we never send)."""
    hlen = 20 if esp[0] >> 4 == 4 else 40
    header = esp[hlen : hlen + 8]
    return reframe(esp, header + sa.context.seal(header, plaintext, sa.iv_source.next()))


def padded(sa: EspSa, payload: bytes, next_header: int) -> bytes:
    """``payload`` with a correct trailer for ``sa``."""
    return payload + trailer(sa.config.suite.pad_length(len(payload)), next_header)


# -- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("inner", [udp(), udp("2001:db8:1::5", "2001:db8:2::6")], ids=["ipv4", "ipv6"])
def test_every_suite_round_trips(suite: EspSuite, inner: bytes) -> None:
    sa = make_sa(suite)
    esp = seal_one(sa, inner)
    hlen = 20 if inner[0] >> 4 == 4 else 40
    spi, seq = ESP_HEADER.unpack_from(esp, hlen)
    assert (spi, seq) == (SPI, 1)
    encrypted = len(esp) - hlen - 8 - suite.iv_size - suite.icv_size
    assert encrypted % suite.alignment == 0 and encrypted - len(inner) - 2 < suite.alignment
    assert Decapsulator([sa]).process(esp, NOW) == inner


def test_sequence_numbers_start_at_one_and_never_send_zero() -> None:
    sa = make_sa()
    assert [ESP_HEADER.unpack_from(seal_one(sa, udp()), 20)[1] for _ in range(3)] == [1, 2, 3]
    sa.sequence = 0xFFFFFFFE
    assert [ESP_HEADER.unpack_from(seal_one(sa, udp()), 20)[1] for _ in range(2)] == [0xFFFFFFFF, 1]


# -- outer header -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preservation", "expected"),
    [
        (AddressPreservation.SOURCE_AND_DESTINATION, ("198.18.1.1", "198.18.2.2")),
        (AddressPreservation.SOURCE_ONLY, ("198.18.1.1", str(REMOTE4))),
        (AddressPreservation.DESTINATION_ONLY, (str(GATEWAY4), "198.18.2.2")),
        (AddressPreservation.NONE, (str(GATEWAY4), str(REMOTE4))),
    ],
)
def test_address_preservation_ipv4(preservation: AddressPreservation, expected: tuple[str, str]) -> None:
    sa = make_sa(preservation=preservation, local=GATEWAY4, remote=REMOTE4)
    esp = seal_one(sa, udp())
    outer_v4(esp)
    assert addresses(esp) == expected
    assert Decapsulator([sa]).process(esp, NOW) == udp()


@pytest.mark.parametrize(
    ("preservation", "expected"),
    [
        (AddressPreservation.SOURCE_AND_DESTINATION, ("2001:db8:1::5", "2001:db8:2::6")),
        (AddressPreservation.SOURCE_ONLY, ("2001:db8:1::5", str(REMOTE6))),
        (AddressPreservation.DESTINATION_ONLY, (str(GATEWAY6), "2001:db8:2::6")),
        (AddressPreservation.NONE, (str(GATEWAY6), str(REMOTE6))),
    ],
)
def test_address_preservation_ipv6(preservation: AddressPreservation, expected: tuple[str, str]) -> None:
    sa = make_sa(preservation=preservation, local=GATEWAY6, remote=REMOTE6)
    inner = udp("2001:db8:1::5", "2001:db8:2::6")
    esp = seal_one(sa, inner)
    assert addresses(esp) == expected
    assert Decapsulator([sa]).process(esp, NOW) == inner


def test_tunnel_addresses_of_the_other_family_drop_the_packet() -> None:
    sa = make_sa(preservation=AddressPreservation.NONE, local=GATEWAY4, remote=REMOTE4)
    encapsulator = Encapsulator(Spd(), 1500)
    assert encapsulator.protect(sa, udp("2001:db8::5", "2001:db8::6"), NOW, []) is DropReason.FAMILY_MISMATCH
    assert encapsulator.drops[DropReason.FAMILY_MISMATCH] == 1


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (dict(spi=255), "reserved"),
        (dict(spi=1 << 32), "reserved"),
        (dict(preservation=AddressPreservation.RESERVED), "reserved"),
        (dict(preservation=AddressPreservation.NONE, remote=REMOTE4), "gateway's own address"),
        (dict(preservation=AddressPreservation.SOURCE_ONLY), "remote address"),
        (dict(preservation=AddressPreservation.NONE, local=GATEWAY4, remote=REMOTE6), "different families"),
        (dict(replay_window=-1), "negative"),
    ],
)
def test_sa_config_errors(config: dict[str, object], problem: str) -> None:
    settings = {"spi": SPI, **config}
    with pytest.raises(ValueError, match=problem):
        SaConfig(suite=GCM128, keys=keys_for(GCM128), **settings)  # type: ignore[arg-type]


def test_dscp_ecn_and_ttl_are_copied_and_ids_are_fresh() -> None:
    sa = make_sa()
    inner = udp(tos=0xB9, ttl=17, ident=0x4242)  # DSCP 46 (EF), ECN ECT(1)
    packets = protect(sa, inner, ip_id=0xFFFE) + protect(sa, inner, ip_id=0xFFFF)
    for esp, ident in zip(packets, (0xFFFF, 0), strict=True):
        ip = outer_v4(esp)
        assert (ip.tos, ip.ttl, ip.id, ip.offset, ip.mf) == (0xB9, 17, ident, 0, 0)


def test_ipv6_outer_copies_traffic_class_flow_label_and_hop_limit() -> None:
    sa = make_sa()
    inner = udp("2001:db8:1::5", "ff0e::1:3", tos=0xBA, ttl=3, flow_label=0xBEEF5)
    esp = seal_one(sa, inner)
    ip6 = dpkt.ip6.IP6(esp)
    assert (ip6.fc, ip6.flow, ip6.hlim, ip6.nxt, ip6.plen) == (0xBA, 0xBEEF5, 3, 50, len(esp) - 40)


@pytest.mark.parametrize(
    ("mode", "inner_df", "outer_df"),
    [
        (DfMode.CLEAR, False, 0),
        (DfMode.CLEAR, True, 0),
        (DfMode.SET, False, 1),
        (DfMode.SET, True, 1),
        (DfMode.COPY, False, 0),
        (DfMode.COPY, True, 1),
    ],
)
def test_df_bit(mode: DfMode, inner_df: bool, outer_df: int) -> None:
    esp = seal_one(make_sa(df=mode), udp(df=inner_df))
    assert outer_v4(esp).df == outer_df


def test_multicast_destination_keeps_the_group_sa_and_its_address() -> None:
    sa = make_sa()
    for inner in (udp(dst="239.192.0.7"), udp("2001:db8:1::5", "ff0e::1:3")):
        esp = seal_one(sa, inner)
        assert addresses(esp) == addresses(inner)
        assert Decapsulator([sa]).process(esp, NOW) == inner


# -- RFC 3602 §4 case #7 (digest §11.D) -------------------------------------------------

RFC_INNER = bytes.fromhex(
    "45000054 09040000 4001f988 c0a87b03 c0a87bc8 08009f76 a90a0100 b49c083d"
    "02a20400 08090a0b 0c0d0e0f 10111213 14151617 18191a1b 1c1d1e1f 20212223"
    "24252627 28292a2b 2c2d2e2f 30313233 34353637".replace(" ", "")
)
RFC_IV = bytes.fromhex("f4e765244f6407adf13dc1380f673f37")
RFC_CIPHERTEXT = bytes.fromhex(
    "773b5241 a4c44922 5e4f3ce5 ed611b0c 237ca96c f74a9301 3c1b0ea1 a0cf70f8"
    "e4ecaec7 8ac53aad 7a0f022b 859243c6 47752e94 a859352b 8a4d4d2d ecd136e5"
    "c177f132 ad3fbfb2 201ac990 4c74ee0a 109e0ca1 e4dfe9d5 a100b842 f1c22f0d".replace(" ", "")
)
RFC_OUTER = bytes.fromhex("4500008c 09050000 4032f91e c0a87b03 c0a87bc8".replace(" ", ""))


class FixedIv:
    def __init__(self, iv: bytes) -> None:
        self.iv = iv

    def next(self) -> bytes:
        return self.iv


@pytest.mark.parametrize(
    ("auth", "auth_key", "icv"),
    [
        (AuthAlgorithm.HMAC_SHA1, bytes(range(1, 21)), "76f88ee46867c1c313396ab9"),
        (AuthAlgorithm.HMAC_SHA2_256, bytes(range(1, 33)), "6f6caeb60b1cdfc835715d342eb67bf2"),
    ],
)
def test_rfc3602_case_7_through_the_encapsulator(auth: AuthAlgorithm, auth_key: bytes, icv: str) -> None:
    suite = esp_suite(EspTransform.AES_CBC, 128, auth)
    keys = EspKeys(bytes.fromhex("0123456789abcdef0123456789abcdef"), auth_key)
    sa = EspSa(SaConfig(0x8765, suite, keys), iv_source=FixedIv(RFC_IV))
    sa.sequence = 1  # the RFC's packet is the SA's second
    esp = seal_one(sa, RFC_INNER, ip_id=0x0904)

    assert rfc1071(RFC_OUTER) == 0  # the RFC's own header is consistent
    expected_outer = bytearray(RFC_OUTER)  # the same header, longer by the ICV the RFC leaves out
    struct.pack_into("!H", expected_outer, 2, len(RFC_OUTER) + 8 + 16 + 96 + suite.icv_size)
    struct.pack_into("!H", expected_outer, 10, 0)
    struct.pack_into("!H", expected_outer, 10, rfc1071(bytes(expected_outer)))
    assert esp[:20] == expected_outer
    assert esp[20:28] == bytes.fromhex("0000876500000002")
    assert esp[28:44] == RFC_IV
    assert esp[44:140] == RFC_CIPHERTEXT
    assert esp[140:] == bytes.fromhex(icv)  # digest §11.D, self-computed
    assert Decapsulator([sa]).process(esp, NOW) == RFC_INNER


# -- drops ---------------------------------------------------------------------------


def test_tampering_anywhere_after_the_spi_fails_the_icv() -> None:
    sa = make_sa(CBC_SHA1)
    esp = seal_one(sa, udp())
    decapsulator = Decapsulator([sa])
    for position in (24, 30, 60, len(esp) - 1):  # sequence number, IV, ciphertext, ICV
        tampered = bytearray(esp)
        tampered[position] ^= 0x01
        assert decapsulator.process(bytes(tampered), NOW) is DropReason.ICV_FAILURE
    assert decapsulator.drops[DropReason.ICV_FAILURE] == 4


def test_unknown_spi() -> None:
    esp = seal_one(make_sa(spi=0x1111), udp())
    decapsulator = Decapsulator([make_sa(spi=0x2222)])
    assert decapsulator.process(esp, NOW) is DropReason.UNKNOWN_SPI
    assert decapsulator.drops.as_dict() == {"unknown_spi": 1}


@pytest.mark.parametrize("suite", [GCM128, CBC_SHA1], ids=lambda s: s.name)
def test_bad_padding_is_dropped_after_a_good_icv(suite: EspSuite) -> None:
    sa = make_sa(suite)
    esp = seal_one(sa, udp())
    payload = next(b"A" * n for n in range(64) if suite.pad_length(n) >= 2)
    pad = suite.pad_length(len(payload))
    wrong = payload + bytes(pad) + bytes((pad, 4))  # zeros instead of 1, 2, 3, ...
    assert Decapsulator([sa]).process(resealed(sa, esp, wrong), NOW) is DropReason.BAD_PADDING


def test_pad_length_longer_than_the_plaintext() -> None:
    sa = make_sa(CBC_SHA1)
    esp = seal_one(sa, udp())
    plain = bytearray(plaintext_of(sa, esp))
    plain[-2] = 0xFF
    assert Decapsulator([sa]).process(resealed(sa, esp, bytes(plain)), NOW) is DropReason.BAD_PADDING


@pytest.mark.parametrize(
    ("payload", "next_header", "reason"),
    [
        (b"", 59, DropReason.DUMMY_PACKET),
        (bytes(20), 59, DropReason.DUMMY_PACKET),
        (udp()[20:], 17, DropReason.UNSUPPORTED_NEXT_HEADER),  # transport mode
        (udp("2001:db8::1", "2001:db8::2"), 4, DropReason.INNER_MALFORMED),  # version does not match 4
        (udp(), 41, DropReason.INNER_MALFORMED),
        (udp()[:-1], 4, DropReason.INNER_MALFORMED),  # total length says one more octet
        (udp()[:10] + b"\x00\x00" + udp()[12:], 4, DropReason.INNER_MALFORMED),  # header checksum
        (b"\x44" + udp()[1:], 4, DropReason.INNER_MALFORMED),  # IHL 4
        (udp()[:8], 4, DropReason.INNER_MALFORMED),
        (udp("2001:db8::1", "2001:db8::2")[:-1], 41, DropReason.INNER_MALFORMED),
        (encode_timestamp_shim(4, 0)[:-1], 253, DropReason.INNER_MALFORMED),
    ],
)
def test_decrypted_payload_checks(payload: bytes, next_header: int, reason: DropReason) -> None:
    sa = make_sa()
    esp = seal_one(sa, udp())
    assert Decapsulator([sa]).process(resealed(sa, esp, padded(sa, payload, next_header)), NOW) is reason


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda p: p[:19], DropReason.MALFORMED),
        (lambda p: p[:-1], DropReason.MALFORMED),  # total length disagrees
        (lambda p: p[:10] + bytes([p[10] ^ 0xFF]) + p[11:], DropReason.MALFORMED),  # header checksum
        (lambda p: b"\x35" + p[1:], DropReason.MALFORMED),  # version 3
        (lambda p: reframe(p, p[20:28]), DropReason.MALFORMED),  # ESP header and nothing else
        (lambda p: reframe(p, p[20:40]), DropReason.MALFORMED),  # shorter than IV and ICV
    ],
)
def test_outer_packet_checks(mangle, reason: DropReason) -> None:
    sa = make_sa()
    assert Decapsulator([sa]).process(mangle(seal_one(sa, udp())), NOW) is reason


def test_not_esp() -> None:
    decapsulator = Decapsulator([make_sa()])
    assert decapsulator.process(udp(), NOW) is DropReason.NOT_ESP
    assert decapsulator.process(udp("2001:db8::1", "2001:db8::2"), NOW) is DropReason.NOT_ESP


def test_inner_packet_outside_the_sa_selectors_is_dropped() -> None:
    selectors = (Selector(ip_network("198.18.0.0/16"), ip_network("198.18.0.0/16"), protocol=17),)
    sa = make_sa(selectors=selectors)
    decapsulator = Decapsulator([sa])
    assert decapsulator.process(seal_one(sa, udp()), NOW) == udp()
    assert decapsulator.process(seal_one(sa, udp(dst="10.0.0.1")), NOW) is DropReason.SELECTOR_MISMATCH
    assert decapsulator.process(seal_one(sa, icmp_echo()), NOW) is DropReason.SELECTOR_MISMATCH


# RFC 6040 §4.2 decapsulation table: (inner, outer) -> resulting inner ECN, or None for drop.
NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3
ECN_TABLE = {
    (NOT_ECT, NOT_ECT): NOT_ECT, (NOT_ECT, ECT0): NOT_ECT, (NOT_ECT, ECT1): NOT_ECT, (NOT_ECT, CE): None,
    (ECT0, NOT_ECT): ECT0, (ECT0, ECT0): ECT0, (ECT0, ECT1): ECT1, (ECT0, CE): CE,
    (ECT1, NOT_ECT): ECT1, (ECT1, ECT0): ECT1, (ECT1, ECT1): ECT1, (ECT1, CE): CE,
    (CE, NOT_ECT): CE, (CE, ECT0): CE, (CE, ECT1): CE, (CE, CE): CE,
}  # fmt: skip


@pytest.mark.parametrize(("inner_ecn", "outer_ecn"), sorted(ECN_TABLE))
@pytest.mark.parametrize("version", [4, 6])
def test_ecn_on_decapsulation(inner_ecn: int, outer_ecn: int, version: int) -> None:
    sa = make_sa()
    inner = udp(tos=0xB8 | inner_ecn) if version == 4 else udp("2001:db8::1", "2001:db8::2", tos=0xB8 | inner_ecn)
    esp = seal_one(sa, inner)
    assert (esp[1] if version == 4 else esp[1] >> 4) & 0x03 == inner_ecn  # normal mode copies ECN outward
    result = Decapsulator([sa]).process(with_ecn(esp, outer_ecn), NOW)
    expected = ECN_TABLE[inner_ecn, outer_ecn]
    if expected is None:
        assert result is DropReason.ECN_CE_NOT_ECT
        return
    assert isinstance(result, bytes)
    assert result == with_ecn(inner, expected)  # DSCP untouched; IPv4 checksum redone by dpkt
    if version == 4:
        assert rfc1071(result[:20]) == 0


# -- pre-fragmentation and ICMP -------------------------------------------------------------

MTU = 1400


def _fits_exactly(sa: EspSa) -> int:
    return sa.max_inner(MTU, 20)


@pytest.mark.parametrize(
    "suite",
    [GCM128, CBC_SHA1, esp_suite(EspTransform.TRIPLE_DES, None, AuthAlgorithm.HMAC_MD5)],
    ids=lambda s: s.name,
)
@pytest.mark.parametrize("window", [0, 10])
def test_largest_inner_packet_fits_exactly(suite: EspSuite, window: int) -> None:
    sa = make_sa(suite, replay_window=window)
    limit = sa.max_inner(MTU, 20)
    [esp] = protect(sa, udp(payload=bytes(limit - 28), df=True), mtu=MTU)
    assert MTU - suite.alignment < len(esp) <= MTU
    out: list[bytes] = []
    drop = Encapsulator(Spd(), MTU).protect(sa, udp(payload=bytes(limit - 27), df=True), NOW, out)
    assert drop is DropReason.FRAGMENTATION_NEEDED and out == []  # no ICMP source configured


def _join_inner_fragments(fragments: list[bytes]) -> bytes:
    parsed = sorted((dpkt.ip.IP(f) for f in fragments), key=lambda ip: ip.offset)
    first = parsed[0]
    first.data = b"".join(bytes(ip.data) for ip in parsed)
    first.mf, first.sum = 0, 0
    return bytes(first)


@pytest.mark.parametrize("suite", [GCM128, CBC_SHA1], ids=lambda s: s.name)
@pytest.mark.parametrize("window", [0, 10])
@pytest.mark.parametrize("size", [1401, 1500, 4000, 9000])
def test_pre_fragmentation_when_df_is_clear(suite: EspSuite, window: int, size: int) -> None:
    sa = make_sa(suite, replay_window=window)
    inner = udp(payload=(bytes(range(256)) * 40)[: size - 28])
    packets = protect(sa, inner, mtu=MTU)
    assert len(packets) >= 2
    decapsulator = Decapsulator([sa])
    fragments = []
    for esp in packets:
        outer = outer_v4(esp)
        assert len(esp) <= MTU and not outer.mf and outer.offset == 0  # outer packets are whole
        fragment = decapsulator.process(esp, NOW)
        assert isinstance(fragment, bytes)
        assert rfc1071(fragment[:20]) == 0
        fragments.append(fragment)
    assert len({outer_v4(esp).id for esp in packets}) == len(packets)
    assert _join_inner_fragments(fragments) == inner


def test_df_set_too_big_returns_icmp_fragmentation_needed() -> None:
    sa = make_sa(CBC_SHA1)
    inner = udp(payload=bytes(1472), df=True)
    out: list[bytes] = []
    encapsulator = Encapsulator(Spd(), MTU, icmp_source_v4=GATEWAY4, ip_id=99)
    assert encapsulator.protect(sa, inner, NOW, out) is DropReason.FRAGMENTATION_NEEDED
    [icmp] = out
    ip = dpkt.ip.IP(icmp)
    assert rfc1071(icmp[:20]) == 0 and rfc1071(icmp[20:]) == 0
    assert (ip.src, ip.dst, ip.p, ip.id) == (GATEWAY4.packed, inner[12:16], 1, 100)
    assert (icmp[20], icmp[21]) == (3, 4)
    mtu = struct.unpack("!H", icmp[26:28])[0]
    assert mtu == sa.max_inner(MTU, 20) == MTU - 20 - 8 - 16 - 12 - 2 - (MTU - 20 - 8 - 16 - 12) % 16
    assert icmp[28:48] == inner[:20]
    assert encapsulator.drops.as_dict() == {"fragmentation_needed": 1}


def test_ipv6_too_big_returns_packet_too_big() -> None:
    sa = make_sa()
    inner = udp("2001:db8:1::5", "2001:db8:2::6", payload=bytes(1400))
    out: list[bytes] = []
    encapsulator = Encapsulator(Spd(), 1400, icmp_source_v6=GATEWAY6)
    assert encapsulator.protect(sa, inner, NOW, out) is DropReason.FRAGMENTATION_NEEDED
    [icmp] = out
    assert dpkt.ip6.IP6(icmp).dst == inner[8:24] and icmp[40] == 2
    assert (
        struct.unpack("!I", icmp[44:48])[0]
        == sa.max_inner(1400, 40)
        == 1400 - 40 - 8 - 8 - 16 - 2 - (1400 - 40 - 8 - 8 - 16) % 4
    )


def test_no_icmp_error_for_multicast_but_the_drop_is_counted() -> None:
    out: list[bytes] = []
    encapsulator = Encapsulator(Spd(), 600, icmp_source_v4=GATEWAY4)
    big = udp(dst="239.1.1.1", payload=bytes(1000), df=True)
    assert encapsulator.protect(make_sa(), big, NOW, out) is DropReason.FRAGMENTATION_NEEDED
    assert out == []


def test_wan_mtu_too_small_for_any_fragment() -> None:
    encapsulator = Encapsulator(Spd(), 60)
    assert encapsulator.protect(make_sa(CBC_SHA1), udp(payload=bytes(100)), NOW, []) is DropReason.MTU_TOO_SMALL
    assert (
        encapsulator.protect(make_sa(CBC_SHA1), udp(payload=bytes(100), df=True), NOW, []) is DropReason.MTU_TOO_SMALL
    )


def test_malformed_inner_packets_are_not_encapsulated() -> None:
    encapsulator = Encapsulator(Spd(), 1500)
    sa = make_sa()
    for packet in (b"\x45" + bytes(10), udp()[:-1], b"\x75" + udp()[1:], udp("2001:db8::1", "2001:db8::2")[:-1]):
        assert encapsulator.protect(sa, packet, NOW, []) is DropReason.MALFORMED


# -- time-based anti-replay -----------------------------------------------------------------


def test_window_adds_a_timestamp_shim_and_zero_sends_none() -> None:
    with_window, without = make_sa(replay_window=5), make_sa(replay_window=0)
    plain = plaintext_of(with_window, seal_one(with_window, udp(), now=NOW + 0.5))
    end, next_header = split_trailer(plain)
    assert next_header == 253
    assert plain[:12] == encode_timestamp_shim(4, ntp_timestamp(NOW + 0.5)) and plain[12:end] == udp()
    assert split_trailer(plaintext_of(without, seal_one(without, udp())))[1] == 4


@pytest.mark.parametrize(
    ("skew", "accepted"),
    [(0.0, True), (5.0, True), (-5.0, True), (5.001, False), (-5.001, False), (3600.0, False), (-86400.0, False)],
)
def test_window_edges(skew: float, accepted: bool) -> None:
    sender, receiver = make_sa(replay_window=5), make_sa(replay_window=5)
    esp = seal_one(sender, udp(), now=NOW)
    result = Decapsulator([receiver]).process(esp, NOW - skew)  # the receiver's clock is |skew| away
    assert result == (udp() if accepted else DropReason.REPLAY_WINDOW)


def test_window_zero_accepts_stamped_and_unstamped_packets_and_checks_no_time() -> None:
    receiver = Decapsulator([make_sa(replay_window=0)])
    stamped = seal_one(make_sa(replay_window=5), udp(), now=NOW)
    assert receiver.process(stamped, NOW + 1e6) == udp()
    assert receiver.process(seal_one(make_sa(replay_window=0), udp()), NOW) == udp()


def test_window_on_rejects_packets_without_a_timestamp() -> None:
    esp = seal_one(make_sa(replay_window=0), udp())
    assert Decapsulator([make_sa(replay_window=5)]).process(esp, NOW) is DropReason.MISSING_TIMESTAMP


def test_ipv6_inner_with_timestamp() -> None:
    sa = make_sa(CBC_SHA1, replay_window=2)
    inner = udp("2001:db8::1", "2001:db8::2")
    assert Decapsulator([sa]).process(seal_one(sa, inner, now=NOW), NOW + 2) == inner


# -- SA set changes (rekey rollover) and counter IVs ---------------------------------------------


def test_decapsulator_sets_are_replaced_atomically() -> None:
    old, new = make_sa(spi=0x1000), make_sa(spi=0x2000)
    old_packet, new_packet = seal_one(old, udp()), seal_one(new, udp())
    decapsulator = Decapsulator([old])
    decapsulator.install([old, new])  # receivers accept both during the rollover
    assert decapsulator.spis == {0x1000, 0x2000}
    assert decapsulator.process(old_packet, NOW) == decapsulator.process(new_packet, NOW) == udp()
    decapsulator.install([new])  # the old SA's deactivation time
    assert decapsulator.process(old_packet, NOW) is DropReason.UNKNOWN_SPI
    with pytest.raises(ValueError, match="installed twice"):
        decapsulator.install([new, make_sa(spi=0x2000)])
    assert decapsulator.spis == {0x2000}


def test_encapsulator_switches_to_the_rules_new_sa_at_once() -> None:
    spd = Spd([Rule("group", Selector())])
    old, new = make_sa(spi=0x1000), make_sa(spi=0x2000)
    encapsulator = Encapsulator(spd, 1500)
    out: list[bytes] = []
    spd.set_sa("group", old)
    encapsulator.process(udp(), NOW, out)
    spd.set_sa("group", new)
    encapsulator.process(udp(), NOW, out)
    assert [ESP_HEADER.unpack_from(p, 20)[0] for p in out] == [0x1000, 0x2000]


def test_process_bypass_deny_and_drops() -> None:
    drops = DropCounters()
    spd = Spd(
        [
            Rule("clear", Selector(destination=ip_network("198.18.9.0/24")), PolicyAction.DENY),
            Rule("group", Selector(destination=ip_network("198.18.0.0/16"))),
        ]
    )
    encapsulator = Encapsulator(spd, 1500, drops=drops)
    out: list[bytes] = []
    assert encapsulator.process(udp(dst="198.18.9.1"), NOW, out) is None and out == [udp(dst="198.18.9.1")]
    assert encapsulator.process(udp(), NOW, out) is DropReason.NO_SA
    assert encapsulator.process(udp(dst="10.1.1.1"), NOW, out) is DropReason.NO_POLICY
    assert encapsulator.process(b"\x45", NOW, out) is DropReason.MALFORMED
    assert drops.as_dict() == {"no_sa": 1, "no_policy": 1, "malformed": 1}


def test_exhausted_counter_ivs_drop_instead_of_repeating() -> None:
    sa = make_sa(sid=0, sid_bits=63)  # one SSIV bit: a single IV
    encapsulator = Encapsulator(Spd(), 1500)
    assert encapsulator.protect(sa, udp(), NOW, []) is None
    assert encapsulator.protect(sa, udp(), NOW, []) is DropReason.IV_EXHAUSTED


# -- outer fragments ---------------------------------------------------------------------


def test_outer_ipv4_fragments_are_reassembled_before_the_spi_lookup() -> None:
    sa = make_sa(CBC_SHA1)
    inner = udp(payload=bytes(1200))
    fragments = fragment_ipv4(seal_one(sa, inner), 576)  # a router on the way
    decapsulator = Decapsulator([sa])
    results = [decapsulator.process(fragment, NOW) for fragment in reversed(fragments)]
    assert len(fragments) == 3 and results == [None, None, inner]


def test_outer_ipv6_fragments_are_reassembled() -> None:
    sa = make_sa()
    inner = udp("2001:db8::1", "2001:db8::2", payload=bytes(1000))
    esp = seal_one(sa, inner)
    body = esp[40:]
    pieces = []
    for offset in range(0, len(body), 512):
        chunk = body[offset : offset + 512]
        header = IPv6Fragment(50, offset, offset + 512 < len(body), 77).encode()
        pieces.append(esp[:4] + struct.pack("!HB", len(header) + len(chunk), 44) + esp[7:40] + header + chunk)
    decapsulator = Decapsulator([sa])
    results = [decapsulator.process(piece, NOW) for piece in reversed(pieces)]
    assert results[:-1] == [None] * (len(pieces) - 1) and results[-1] == inner
