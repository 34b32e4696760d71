from __future__ import annotations

import dpkt
import pytest
from tshark import Datagram, write_pcap, write_pcapng_raw

from groupvpn.ops.pcap import CaptureError, UdpDatagram, read_udp

DATAGRAMS = [
    Datagram("198.18.0.1", "198.18.0.2", 848, 848, b"\x01" * 40),
    Datagram("2001:db8::1", "2001:db8::2", 500, 4500, b"\x02" * 30),
]


@pytest.mark.parametrize("writer", [write_pcap, write_pcapng_raw])
def test_reads_udp_from_pcap_and_pcapng(tmp_path, writer):
    path = writer(tmp_path / "c", DATAGRAMS, start=10.0, step=0.5)
    assert list(read_udp(path)) == [
        UdpDatagram(1, 10.0, "198.18.0.1", "198.18.0.2", 848, 848, b"\x01" * 40),
        UdpDatagram(2, 10.5, "2001:db8::1", "2001:db8::2", 500, 4500, b"\x02" * 30),
    ]


def _ipv4(payload: dpkt.Packet, proto: int, **fields) -> bytes:
    ip = dpkt.ip.IP(src=bytes([198, 18, 0, 1]), dst=bytes([198, 18, 0, 2]), p=proto, data=payload, **fields)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def test_first_fragment_is_marked_truncated_and_other_frames_are_skipped(tmp_path):
    udp = dpkt.udp.UDP(sport=848, dport=848, data=b"\x05" * 24)
    udp.ulen = 8 + 1400  # the rest would follow in later fragments
    icmp = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"ping"))
    path = tmp_path / "frag.pcap"
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        writer.writepkt(_ipv4(icmp, dpkt.ip.IP_PROTO_ICMP), ts=1.0)
        writer.writepkt(_ipv4(udp, dpkt.ip.IP_PROTO_UDP, mf=1), ts=2.0)
        writer.writepkt(_ipv4(b"\x06" * 32, dpkt.ip.IP_PROTO_UDP, offset=175), ts=3.0)  # 1400 octets in
        writer.writepkt(b"\x00" * 5, ts=4.0)  # too short for Ethernet
    (only,) = read_udp(path)
    assert (only.frame, only.truncated, only.payload) == (2, True, b"\x05" * 24)


def test_unreadable_files_raise_capture_error(tmp_path):
    with pytest.raises(CaptureError, match="cannot open"):
        list(read_udp(tmp_path / "missing.pcap"))
    text = tmp_path / "notes.txt"
    text.write_text("not a capture at all")
    with pytest.raises(CaptureError, match="neither pcap nor pcapng"):
        list(read_udp(text))


def test_unsupported_link_type_is_named(tmp_path):
    path = tmp_path / "usb.pcap"
    with open(path, "wb") as f:
        dpkt.pcap.Writer(f, linktype=189).writepkt(b"\x00" * 40, ts=1.0)
    with pytest.raises(CaptureError, match="unsupported link type 189"):
        list(read_udp(path))
