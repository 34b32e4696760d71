"""ESP framing and the delay-detection timestamp shim (layout in docs/conformance.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from groupvpn.wire.errors import WireError
from groupvpn.wire.esp import (
    NTP_UNIX_OFFSET,
    TIMESTAMP_SHIM_SIZE,
    EspPacket,
    decode_timestamp_shim,
    encode_timestamp_shim,
    ntp_timestamp,
    split_trailer,
    timestamp_delta,
    trailer,
)


def test_esp_packet_round_trip() -> None:
    packet = EspPacket(0x8765, 2, bytes(range(40)))
    encoded = packet.encode()
    assert encoded[:8] == bytes.fromhex("0000876500000002")
    assert EspPacket.decode(encoded) == packet
    assert EspPacket.decode(b"\xff" * 3 + encoded, offset=3) == packet


def test_esp_packet_errors() -> None:
    with pytest.raises(WireError, match="SPI 0 is reserved"):
        EspPacket.decode(bytes(12))
    with pytest.raises(WireError, match="8 octets"):
        EspPacket.decode(bytes.fromhex("0000876500000002"))


def test_trailer_is_1_2_3_then_pad_length_and_next_header() -> None:
    assert trailer(0, 4) == b"\x00\x04"
    assert trailer(10, 4) == bytes(range(1, 11)) + b"\x0a\x04"  # RFC 3602 case #7
    assert split_trailer(b"payload" + trailer(10, 41)) == (7, 41)


@given(st.binary(max_size=40), st.integers(0, 255), st.integers(0, 255))
def test_split_trailer_inverts_trailer(payload: bytes, pad: int, next_header: int) -> None:
    assert split_trailer(payload + trailer(pad, next_header)) == (len(payload), next_header)


@pytest.mark.parametrize(
    ("plaintext", "problem"),
    [
        (b"\x04", "no Pad Length"),
        (b"\x01\x02\x04\x04", "exceeds"),
        (b"data\x01\x03\x02\x04", "not 1, 2, 3"),
        (b"data\x00\x02\x02\x04", "not 1, 2, 3"),
    ],
)
def test_split_trailer_rejects_bad_padding(plaintext: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        split_trailer(plaintext)


def test_ntp_timestamp_of_known_times() -> None:
    assert ntp_timestamp(0.0) == NTP_UNIX_OFFSET << 32
    assert ntp_timestamp(1.5) == (NTP_UNIX_OFFSET + 1) << 32 | 1 << 31
    # 2036-02-07 06:28:16 UTC is the end of NTP era 0: the seconds field wraps to 0
    assert ntp_timestamp((1 << 32) - NTP_UNIX_OFFSET) == 0


def test_timestamp_delta_is_signed_and_survives_the_era_rollover() -> None:
    era_end = (1 << 32) - NTP_UNIX_OFFSET
    assert timestamp_delta(ntp_timestamp(era_end + 1), ntp_timestamp(era_end - 1)) == 2 << 32
    assert timestamp_delta(ntp_timestamp(era_end - 1), ntp_timestamp(era_end + 1)) == -2 << 32
    assert timestamp_delta(ntp_timestamp(1000.25), ntp_timestamp(1000.0)) == 1 << 30


def test_timestamp_shim_layout() -> None:
    shim = encode_timestamp_shim(4, 0x0102030405060708)
    assert shim == bytes.fromhex("04 0c 0000 0102030405060708")
    assert len(shim) == TIMESTAMP_SHIM_SIZE
    assert decode_timestamp_shim(b"\xaa" + shim + b"inner", offset=1) == (4, 0x0102030405060708)
    assert decode_timestamp_shim(encode_timestamp_shim(41, 0)) == (41, 0)


@pytest.mark.parametrize(
    ("shim", "problem"),
    [
        (bytes.fromhex("04 0c 0000 01020304050607"), "need 12"),
        (bytes.fromhex("04 10 0000 0102030405060708"), "length 16"),
        (bytes.fromhex("04 0c 0001 0102030405060708"), "reserved"),
        (bytes.fromhex("fd 0c 0000 0102030405060708"), "next header 253"),
        (bytes.fromhex("3b 0c 0000 0102030405060708"), "next header 59"),
    ],
)
def test_timestamp_shim_errors(shim: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        decode_timestamp_shim(shim)
