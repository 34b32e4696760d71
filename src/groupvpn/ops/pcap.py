"""UDP datagrams out of a capture file (pcap or pcapng), whatever the link type.

dpkt reads the file formats and the headers; this module only picks the
link layers tcpdump writes on Linux and yields the UDP datagrams with their
addresses.  IP fragments are not reassembled: a first fragment is yielded
marked ``truncated`` so the caller can say why it does not decode, the
others carry no UDP header and are skipped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dpkt

_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

# tcpdump.org link-layer header types (not dpkt's OS-dependent DLT_* values).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_LINKTYPES = frozenset({LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, 12, 14})  # 12/14: raw DLT values seen in old files


class CaptureError(Exception):
    """The capture file cannot be read at all (not one bad packet: a bad file)."""


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """One UDP datagram found in frame ``frame`` (1-based, as Wireshark numbers frames)."""

    frame: int
    time: float
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes
    truncated: bool = False  # an IP first fragment, or cut by the snap length


def _ip_layer(linktype: int, frame: bytes) -> dpkt.Packet | None:
    if linktype in _RAW_LINKTYPES:
        version = frame[0] >> 4 if frame else 0
        return dpkt.ip.IP(frame) if version == 4 else dpkt.ip6.IP6(frame) if version == 6 else None
    if linktype == LINKTYPE_ETHERNET:
        outer: dpkt.Packet = dpkt.ethernet.Ethernet(frame)
    elif linktype == LINKTYPE_LINUX_SLL:
        outer = dpkt.sll.SLL(frame)
    elif linktype == LINKTYPE_LINUX_SLL2:
        outer = dpkt.sll2.SLL2(frame)
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        outer = dpkt.loopback.Loopback(frame)
    else:
        raise CaptureError(f"unsupported link type {linktype}")
    return outer.data if isinstance(outer.data, (dpkt.ip.IP, dpkt.ip6.IP6)) else None


def _udp(ip: dpkt.Packet) -> tuple[dpkt.udp.UDP, bool] | None:
    """The UDP layer and whether its payload is incomplete, or None when there is none."""
    if isinstance(ip, dpkt.ip.IP):
        offset, more = ip.offset, bool(ip.mf)
    else:
        header = ip.extension_hdrs.get(dpkt.ip.IP_PROTO_FRAGMENT)
        offset, more = (header.frag_off, bool(header.m_flag)) if header is not None else (0, False)
    if offset or ip.p != dpkt.ip.IP_PROTO_UDP or not isinstance(ip.data, dpkt.udp.UDP):
        return None
    udp = ip.data
    return udp, more or len(udp.data) < udp.ulen - 8


def _packets(path: Path) -> Iterator[tuple[int, float, bytes]]:
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise CaptureError(f"cannot open {path}: {exc.strerror}") from exc
    with f:
        magic = f.read(4)
        f.seek(0)
        try:
            reader = dpkt.pcapng.Reader(f) if magic == _PCAPNG_MAGIC else dpkt.pcap.Reader(f)
        except (ValueError, dpkt.UnpackError) as exc:
            raise CaptureError(f"{path} is neither pcap nor pcapng: {exc}") from exc
        linktype = reader.datalink()
        try:
            for ts, frame in reader:
                yield linktype, float(ts), frame
        except (ValueError, dpkt.UnpackError) as exc:
            raise CaptureError(f"{path} is damaged: {exc}") from exc


def read_udp(path: Path) -> Iterator[UdpDatagram]:
    """Every UDP datagram in the capture, in file order, numbered by frame."""
    for number, (linktype, ts, frame) in enumerate(_packets(path), start=1):
        try:
            ip = _ip_layer(linktype, frame)
        except (dpkt.UnpackError, IndexError):
            continue  # a frame too short or damaged to carry an IP packet
        found = _udp(ip) if ip is not None else None
        if found is None:
            continue
        udp, truncated = found
        yield UdpDatagram(
            frame=number,
            time=ts,
            src=str(ipaddress.ip_address(ip.src)),
            dst=str(ipaddress.ip_address(ip.dst)),
            sport=udp.sport,
            dport=udp.dport,
            payload=bytes(udp.data),
            truncated=truncated,
        )
