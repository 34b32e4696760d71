"""Capture files and Wireshark's tshark as an independent decoder of what we send.

Two halves: writing datagrams into pcap/pcapng files (dpkt does the framing
and the IPv4/UDP checksums), and running tshark 4.0 on such a file to get the
fields it decoded per frame plus its expert info.  tshark quirks this relies
on are in shared/lab-notes/interop-lab.md §1: ISAKMP is only registered on
UDP 500, so 848 is mapped explicitly; ``-T json -e`` gives every occurrence of
a field as a list in tree order; the IKEv1 decryption table rows are unquoted
hex.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest

TSHARK = shutil.which("tshark")

requires_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (`make test` installs it)")

# Lab MACs (locally administered); the addresses are what matters to ISAKMP.
_MAC_SRC = bytes.fromhex("020000000002")
_MAC_DST = bytes.fromhex("020000000001")

LINKTYPE_RAW = 101  # tcpdump.org link-layer header types; dpkt only names the OS-specific DLT_RAW

# Wireshark expert severities (epan/proto.h PI_*).
SEVERITIES = {0x00100000: "comment", 0x00200000: "chat", 0x00400000: "note", 0x00600000: "warn", 0x00800000: "error"}
_EXPERT_FIELDS = ("_ws.expert.message", "_ws.expert.severity", "_ws.expert.group", "_ws.malformed")


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram as it travels between two lab addresses (IPv4 or IPv6)."""

    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes


def _ip_packet(d: Datagram) -> dpkt.Packet:
    udp = dpkt.udp.UDP(sport=d.sport, dport=d.dport, data=d.payload)
    udp.ulen = 8 + len(d.payload)
    src, dst = ipaddress.ip_address(d.src), ipaddress.ip_address(d.dst)
    if src.version != dst.version:
        raise ValueError(f"mixed address families {d.src} -> {d.dst}")
    if src.version == 4:
        packet = dpkt.ip.IP(src=src.packed, dst=dst.packed, p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=udp)
        packet.len = 20 + udp.ulen
        return packet
    # dpkt only fills the UDP checksum for IPv4; IPv6 needs it computed here.
    pseudo = src.packed + dst.packed + udp.ulen.to_bytes(4, "big") + b"\x00\x00\x00\x11"
    udp.sum = dpkt.in_cksum(pseudo + bytes(udp)) or 0xFFFF
    return dpkt.ip6.IP6(src=src.packed, dst=dst.packed, nxt=dpkt.ip.IP_PROTO_UDP, hlim=64, plen=udp.ulen, data=udp)


def ethernet_frame(d: Datagram) -> bytes:
    """An Ethernet II frame carrying ``d`` with valid IP and UDP checksums."""
    ip = _ip_packet(d)
    ethertype = dpkt.ethernet.ETH_TYPE_IP if isinstance(ip, dpkt.ip.IP) else dpkt.ethernet.ETH_TYPE_IP6
    return bytes(dpkt.ethernet.Ethernet(src=_MAC_SRC, dst=_MAC_DST, type=ethertype, data=ip))


def raw_ip_packet(d: Datagram) -> bytes:
    """The bare IP packet, for LINKTYPE_RAW captures (what `tcpdump -i tun0` writes)."""
    return bytes(_ip_packet(d))


def _timestamps(count: int, start: float, step: float) -> Iterable[float]:
    return (start + i * step for i in range(count))


def write_pcap(path: Path, datagrams: Sequence[Datagram], *, start: float = 1_700_000_000.0, step: float = 0.001) -> Path:
    """Write a classic pcap (Ethernet link type), one frame per datagram, in order."""
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for d, ts in zip(datagrams, _timestamps(len(datagrams), start, step)):
            writer.writepkt(ethernet_frame(d), ts=ts)
    return path


def write_pcapng_raw(path: Path, datagrams: Sequence[Datagram], *, start: float = 1_700_000_000.0, step: float = 0.001) -> Path:
    """Write a pcapng with LINKTYPE_RAW (IP without a link header): a second format and link type."""
    with open(path, "wb") as f:
        writer = dpkt.pcapng.Writer(f, snaplen=65535, linktype=LINKTYPE_RAW)
        for d, ts in zip(datagrams, _timestamps(len(datagrams), start, step)):
            writer.writepkt(raw_ip_packet(d), ts=ts)
    return path


@dataclass(frozen=True, slots=True)
class ExpertItem:
    severity: str
    group: int
    message: str


@dataclass(frozen=True, slots=True)
class Frame:
    """What tshark decoded in one frame: every requested field, in tree order."""

    number: int
    fields: Mapping[str, tuple[str, ...]]
    expert: tuple[ExpertItem, ...]
    malformed: bool

    def values(self, field: str) -> tuple[str, ...]:
        return self.fields.get(field, ())

    def ints(self, field: str) -> tuple[int, ...]:
        """Integer fields; tshark prints some in hex (``0x...``)."""
        return tuple(int(v, 0) for v in self.values(field))

    def hexes(self, field: str) -> tuple[bytes, ...]:
        """Byte fields (tshark prints ``aa:bb`` in JSON, or plain hex)."""
        return tuple(bytes.fromhex(v.replace(":", "")) for v in self.values(field))

    @property
    def clean(self) -> bool:
        return not self.expert and not self.malformed


def ikev1_key_options(ike_keys: Mapping[bytes, bytes]) -> list[str]:
    """``-o`` arguments filling tshark's IKEv1 decryption table: initiator cookie -> cipher key."""
    out: list[str] = []
    for icookie, key in ike_keys.items():
        if len(icookie) != 8:
            raise ValueError("an initiator cookie is 8 octets")
        out += ["-o", f"uat:ikev1_decryption_table:{icookie.hex()},{key.hex()}"]
    return out


def tshark_command(pcap: Path, ike_keys: Mapping[bytes, bytes] = {}, prefs: Sequence[str] = ()) -> list[str]:
    """The tshark invocation shared by all our reads: GDOI port mapped, IKE keys, extra ``-o`` prefs."""
    if TSHARK is None:
        raise RuntimeError("tshark is not installed")
    options = [arg for pref in prefs for arg in ("-o", pref)]
    return [TSHARK, "-n", "-r", str(pcap), "-d", "udp.port==848,isakmp", *ikev1_key_options(ike_keys), *options]


def _run(args: list[str]) -> str:
    # stderr carries the harmless "Running as user root" warning; keep it for failures only.
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"tshark failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def read_fields(
    pcap: Path, fields: Sequence[str], ike_keys: Mapping[bytes, bytes] = {}, prefs: Sequence[str] = ()
) -> list[Frame]:
    """Run tshark and return one ``Frame`` per captured frame with ``fields`` and the expert info."""
    wanted = ["frame.number", *fields, *(f for f in _EXPERT_FIELDS if f not in fields)]
    args = tshark_command(pcap, ike_keys, prefs) + ["-T", "json"]
    for field in wanted:
        args += ["-e", field]
    frames: list[Frame] = []
    for packet in json.loads(_run(args) or "[]"):
        layers: dict[str, list[str]] = packet["_source"]["layers"]
        messages = layers.get("_ws.expert.message", [])
        severities = layers.get("_ws.expert.severity", [])
        groups = layers.get("_ws.expert.group", [])
        if not len(messages) == len(severities) == len(groups):
            raise RuntimeError(f"unpaired expert fields in {layers}")
        expert = tuple(
            ExpertItem(SEVERITIES.get(int(s), s), int(g), m) for m, s, g in zip(messages, severities, groups)
        )
        frames.append(
            Frame(
                number=int(layers["frame.number"][0]),
                fields={k: tuple(v) for k, v in layers.items() if k in fields},
                expert=expert,
                malformed="_ws.malformed" in layers,
            )
        )
    return frames


def verbose_text(pcap: Path, frame: int, ike_keys: Mapping[bytes, bytes] = {}) -> str:
    """tshark's ISAKMP tree for one frame, for assertion messages a human reads."""
    return _run(tshark_command(pcap, ike_keys) + ["-V", "-O", "isakmp", "-Y", f"frame.number=={frame}"])
