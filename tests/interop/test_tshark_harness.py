"""The pcap writer and tshark runner, checked on ISAKMP bytes built by hand here.

These bytes are deliberately independent of the project's wire codec, so
the harness is proven before it is used to judge that codec.
"""

from __future__ import annotations

import struct

import pytest
from tshark import (
    Datagram,
    ikev1_key_options,
    read_fields,
    requires_tshark,
    verbose_text,
    write_pcap,
    write_pcapng_raw,
)

pytestmark = [pytest.mark.tshark, requires_tshark]

DPD_VID = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")


def isakmp(first: int, exchange: int, body: bytes, *, extra_length: int = 0, icookie: bytes = b"\x11" * 8) -> bytes:
    header = icookie + b"\x22" * 8 + struct.pack("!BBBBII", first, 0x10, exchange, 0, 0, 28 + len(body) + extra_length)
    return header + body


def payload(next_type: int, body: bytes) -> bytes:
    return struct.pack("!BBH", next_type, 0, 4 + len(body)) + body


SEQ_7 = isakmp(18, 33, payload(0, struct.pack("!I", 7)))
SEQ_BOGUS = isakmp(18, 33, payload(0, struct.pack("!Q", 7)))
TRUNCATED = isakmp(18, 33, payload(0, struct.pack("!I", 7)), extra_length=10)
VID_ONLY = isakmp(13, 2, payload(0, DPD_VID))

DATAGRAMS = [
    Datagram("198.18.0.1", "198.18.0.2", 848, 848, SEQ_7),
    Datagram("198.18.0.1", "198.18.0.2", 848, 848, SEQ_BOGUS),
    Datagram("198.18.0.1", "198.18.0.2", 848, 848, TRUNCATED),
    Datagram("2001:db8::1", "2001:db8::2", 500, 500, VID_ONLY),
    Datagram("198.18.0.2", "198.18.0.1", 4500, 4500, b"\x00\x00\x00\x00" + VID_ONLY),
]
FIELDS = ["udp.srcport", "isakmp.exchangetype", "isakmp.typepayload", "isakmp.seq.seq", "isakmp.ispi", "udp.checksum.status"]
CHECKSUMS = ["udp.check_checksum:TRUE", "ip.check_checksum:TRUE"]


@pytest.fixture(scope="module", params=["pcap", "pcapng-raw"])
def frames(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("harness")
    if request.param == "pcap":
        path = write_pcap(directory / "hand.pcap", DATAGRAMS)
    else:
        path = write_pcapng_raw(directory / "hand.pcapng", DATAGRAMS)
    return path, read_fields(path, FIELDS, prefs=CHECKSUMS)


def test_one_frame_per_datagram_with_valid_checksums(frames):
    _, decoded = frames
    assert [f.number for f in decoded] == [1, 2, 3, 4, 5]
    assert [f.values("udp.checksum.status") for f in decoded] == [("1",)] * 5
    assert [f.ints("udp.srcport") for f in decoded] == [(848,), (848,), (848,), (500,), (4500,)]


def test_clean_frames_report_fields_and_no_expert_info(frames):
    _, decoded = frames
    seq, vid6, natt = decoded[0], decoded[3], decoded[4]
    assert seq.clean and vid6.clean and natt.clean
    assert seq.ints("isakmp.exchangetype") == (33,)
    assert seq.ints("isakmp.seq.seq") == (7,)
    assert seq.hexes("isakmp.ispi") == (b"\x11" * 8,)
    assert vid6.ints("isakmp.typepayload") == (13,)
    # UDP 4500 with the non-ESP marker reaches ISAKMP through tshark's udpencap.
    assert natt.ints("isakmp.exchangetype") == (2,)


def test_bogus_seq_length_is_an_error_expert_item(frames):
    _, decoded = frames
    bogus = decoded[1]
    assert bogus.malformed
    assert [(e.severity, e.message) for e in bogus.expert] == [
        ("error", "Payload (bogus, length is 8, should be 4")
    ]


def test_truncated_message_is_malformed(frames):
    _, decoded = frames
    truncated = decoded[2]
    assert truncated.malformed
    assert ("error", "Malformed Packet (Exception occurred)") in [(e.severity, e.message) for e in truncated.expert]


def test_verbose_text_shows_one_frame_tree(frames):
    path, _ = frames
    text = verbose_text(path, 1)
    assert "Sequence Number: 7" in text
    assert text.count("Internet Security Association and Key Management Protocol") == 1


def test_ikev1_key_rows_are_unquoted_hex():
    assert ikev1_key_options({bytes.fromhex("f4df58e676f44a45"): bytes(range(16))}) == [
        "-o",
        "uat:ikev1_decryption_table:f4df58e676f44a45,000102030405060708090a0b0c0d0e0f",
    ]
    with pytest.raises(ValueError, match="8 octets"):
        ikev1_key_options({b"short": bytes(16)})
