"""Inner packets built with dpkt (an implementation independent of ours), SAs with fixed keys, checks."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import dpkt

from groupvpn.crypto.suites import SUITES, EspKeys, EspSuite, esp_suite
from groupvpn.dataplane.esp_path import EspSa, SaConfig
from groupvpn.wire.numbers import AuthAlgorithm, EspTransform

GCM128 = esp_suite(EspTransform.AES_GCM_16, 128)
CBC_SHA1 = esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA1)
CBC_SHA256 = esp_suite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256)
ALL_SUITES = sorted(SUITES.values(), key=lambda s: s.name)
SPI = 0x10203040
NOW = 1_800_000_000.0
LINKTYPE_RAW = 101  # tcpdump.org link-layer header types: bare IPv4/IPv6 packets


def keys_for(suite: EspSuite) -> EspKeys:
    """Fixed, distinct keys so failures reproduce (and tshark can be given them)."""
    return EspKeys(bytes(range(1, suite.encryption_key_size + 1)), bytes(range(101, 101 + suite.integrity_key_size)))


def make_sa(suite: EspSuite = GCM128, spi: int = SPI, **config: object) -> EspSa:
    return EspSa(SaConfig(spi, suite, keys_for(suite), **config))  # type: ignore[arg-type]


def rfc1071(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp(
    src: str = "198.18.1.1",
    dst: str = "198.18.2.2",
    payload: bytes = b"hello group",
    *,
    sport: int = 5000,
    dport: int = 6000,
    tos: int = 0,
    ttl: int = 64,
    df: bool = False,
    ident: int = 0x4242,
    flow_label: int = 0,
) -> bytes:
    """An IPv4 or IPv6 UDP packet with correct lengths and checksums."""
    datagram = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    datagram.ulen = 8 + len(payload)
    s, d = ip_address(src), ip_address(dst)
    if isinstance(s, IPv4Address):
        ip = dpkt.ip.IP(src=s.packed, dst=d.packed, p=17, tos=tos, ttl=ttl, id=ident, data=datagram)
        ip.df = int(df)
        return bytes(ip)
    ip6 = dpkt.ip6.IP6(src=s.packed, dst=d.packed, nxt=17, hlim=ttl, fc=tos, flow=flow_label, data=datagram)
    ip6.plen = datagram.ulen
    return bytes(ip6)


def tcp(
    src: str = "198.18.1.1",
    dst: str = "198.18.2.2",
    payload: bytes = b"",
    *,
    sport: int = 40000,
    dport: int = 5201,
    seq: int = 1000,
    ack: int = 0,
    flags: int = dpkt.tcp.TH_ACK,
    window: int = 502,
    options: bytes = b"",
    ip_options: bytes = b"",
    tos: int = 0,
    ttl: int = 64,
    df: bool = True,
    ident: int = 0,
) -> bytes:
    """An IPv4 or IPv6 TCP segment with correct lengths and checksums."""
    segment = dpkt.tcp.TCP(
        sport=sport,
        dport=dport,
        seq=seq & 0xFFFFFFFF,
        ack=ack,
        flags=flags,
        win=window,
        opts=options,
        off=(20 + len(options)) // 4,
        data=payload,
    )
    s, d = ip_address(src), ip_address(dst)
    if isinstance(s, IPv4Address):
        ip = dpkt.ip.IP(src=s.packed, dst=d.packed, p=6, tos=tos, ttl=ttl, id=ident, data=segment)
        ip.opts = ip_options
        ip.hl = 5 + len(ip_options) // 4
        ip.len = ip.hl * 4 + len(segment)
        ip.df = int(df)
        return bytes(ip)
    ip6 = dpkt.ip6.IP6(src=s.packed, dst=d.packed, nxt=6, hlim=ttl, fc=tos, data=segment)
    ip6.plen = len(segment)
    return bytes(ip6)


def icmp_echo(src: str = "198.18.1.1", dst: str = "198.18.2.2", size: int = 56) -> bytes:
    echo = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=7, seq=1, data=bytes(size)))
    return bytes(dpkt.ip.IP(src=IPv4Address(src).packed, dst=IPv4Address(dst).packed, p=1, data=echo))


def outer_v4(packet: bytes) -> dpkt.ip.IP:
    """Parse an outer IPv4 ESP packet and check its header checksum independently."""
    ip = dpkt.ip.IP(packet)
    assert rfc1071(packet[: ip.hl * 4]) == 0, "outer header checksum"
    assert ip.len == len(packet) and ip.p == 50
    return ip


def reframe(packet: bytes, esp: bytes) -> bytes:
    """``packet``'s outer header (IPv4 or IPv6) around a different ESP payload, lengths and checksum redone."""
    if packet[0] >> 4 == 4:
        ip = dpkt.ip.IP(packet)
        ip.data, ip.sum = esp, 0
        return bytes(ip)
    return packet[:4] + struct.pack("!H", len(esp)) + packet[6:40] + esp


def with_ecn(packet: bytes, ecn: int) -> bytes:
    """``packet`` (outer or inner, either version) with its ECN field set, IPv4 checksum redone."""
    if packet[0] >> 4 == 4:
        ip = dpkt.ip.IP(packet)
        ip.tos, ip.sum = ip.tos & 0xFC | ecn, 0
        return bytes(ip)
    return packet[:1] + bytes([packet[1] & 0xCF | ecn << 4]) + packet[2:]


def addresses(packet: bytes) -> tuple[str, str]:
    if packet[0] >> 4 == 4:
        return str(IPv4Address(packet[12:16])), str(IPv4Address(packet[16:20]))
    return str(IPv6Address(packet[8:24])), str(IPv6Address(packet[24:40]))


def write_raw_pcap(path: Path, packets: list[bytes]) -> Path:
    """``packets`` (bare IP) as a pcap file, one millisecond apart."""
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=65535, linktype=LINKTYPE_RAW)
        for i, packet in enumerate(packets):
            writer.writepkt(packet, ts=NOW + i / 1000)
    return path
