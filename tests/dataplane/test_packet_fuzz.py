"""Whatever arrives, the packet path answers with a packet, None (a held fragment) or a drop reason."""

from __future__ import annotations

import struct

from dataplane_packets import CBC_SHA1, GCM128, NOW, SPI, make_sa, udp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from groupvpn.dataplane import DropReason
from groupvpn.dataplane.esp_path import Decapsulator, Encapsulator
from groupvpn.dataplane.spd import Rule, Selector, Spd
from groupvpn.wire.ip import checksum

SAS = [make_sa(GCM128), make_sa(CBC_SHA1, spi=SPI + 1, replay_window=5)]
FUZZ = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def ipv4(body: bytes, *, proto: int = 50, frag: int = 0, ident: int = 1) -> bytes:
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, frag, 64, proto, 0, bytes(4), bytes(4))
    )
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header) + body


def ipv6(body: bytes, next_header: int = 50) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), next_header, 64, bytes(16), bytes(16)) + body


def assert_dropped_or_held(decapsulator: Decapsulator, packet: bytes) -> None:
    before = sum(decapsulator.drops.counts)
    result = decapsulator.process(packet, NOW)
    assert result is None or isinstance(result, DropReason)
    if isinstance(result, DropReason):
        assert sum(decapsulator.drops.counts) > before


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    assert_dropped_or_held(Decapsulator(SAS), data)


@FUZZ
@given(st.sampled_from([SPI, SPI + 1, 0x999]), st.binary(max_size=200))
def test_random_esp_payload_under_a_known_spi(spi: int, body: bytes) -> None:
    decapsulator = Decapsulator(SAS)
    for packet in (ipv4(struct.pack("!II", spi, 1) + body), ipv6(struct.pack("!II", spi, 1) + body)):
        assert_dropped_or_held(decapsulator, packet)


@FUZZ
@given(st.integers(0, 0xFFFF), st.binary(max_size=120), st.integers(1, 3))
def test_random_fragments(frag: int, body: bytes, count: int) -> None:
    decapsulator = Decapsulator(SAS)
    for i in range(count):
        assert_dropped_or_held(decapsulator, ipv4(body, frag=(frag + i * 3) & 0xFFFF))
        fragment_header = struct.pack("!BBHI", 50, 0, (frag + i) & 0xFFFF, 7)
        assert_dropped_or_held(decapsulator, ipv6(fragment_header + body, 44))


@FUZZ
@given(st.data())
def test_bit_flips_in_a_valid_packet(data: st.DataObject) -> None:
    sa = SAS[data.draw(st.integers(0, 1))]
    out: list[bytes] = []
    Encapsulator(Spd(), 1500).protect(sa, udp(), NOW, out)
    packet = bytearray(out[0])
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(packet) - 1))
        packet[position] ^= 1 << data.draw(st.integers(0, 7))
    result = Decapsulator(SAS).process(bytes(packet), NOW)
    # flips confined to fields nothing checks (TTL, identification, ...) still deliver the original
    assert result == udp() or result is None or isinstance(result, DropReason)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_into_the_encrypt_path(data: bytes) -> None:
    spd = Spd([Rule("all", Selector())])
    spd.set_sa("all", SAS[1])
    out: list[bytes] = []
    result = Encapsulator(spd, 1500).process(data, NOW, out)
    assert result is None or isinstance(result, DropReason)
