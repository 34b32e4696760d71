"""virtio_net_hdr codec and the Coalescer, checked against a kernel-like resegmentation written here.

Segments are built with dpkt; every write unit is checked the way the
kernel takes it: the virtio_net_hdr read with its own struct, the
pseudo-header sum completed over the packet (skb_checksum_help), then cut
back into segments as tcp_gso_segment does, with checksums from the
RFC 1071 word loop.  The cut segments must be the packets that went in,
octet for octet, and in order per flow.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, replace
import pytest
from dataplane_packets import rfc1071, tcp, udp
from hypothesis import given, settings
from hypothesis import strategies as st

from groupvpn.dataplane.offload import (
    GSO_ECN,
    PLAIN,
    PLAIN_READS,
    VNET_HEADER_SIZE,
    Coalescer,
    GsoType,
    OffloadError,
    VnetFlag,
    VnetHeader,
    WriteUnit,
)

KERNEL_VNET = struct.Struct("<BBHHHH" if sys.byteorder == "little" else ">BBHHHH")  # legacy virtio: host order
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
TIMESTAMPS = b"\x01\x01\x08\x0a" + bytes(range(1, 9))  # NOP, NOP, timestamps: a 32-octet TCP header
MSS = 1388


@dataclass(frozen=True)
class Flow:
    """One direction of a TCP connection and what its segments repeat."""

    src: str = "198.18.1.2"
    dst: str = "198.18.2.2"
    sport: int = 40000
    dport: int = 5201
    tos: int = 0
    ttl: int = 63
    df: bool = True
    options: bytes = TIMESTAMPS
    ip_options: bytes = b""
    ack: int = 777
    window: int = 502

    def segment(self, seq: int, payload: bytes, flags: int = ACK, ident: int = 0) -> bytes:
        packet = tcp(
            self.src,
            self.dst,
            payload,
            sport=self.sport,
            dport=self.dport,
            seq=seq,
            ack=self.ack,
            flags=flags,
            window=self.window,
            options=self.options,
            ip_options=self.ip_options,
            tos=self.tos,
            ttl=self.ttl,
            df=self.df,
            ident=ident,
        )
        assert_valid(packet)
        return packet

    def stream(self, sizes: list[int], start: int = 1000, last_flags: int = ACK, first_ident: int = 100) -> list[bytes]:
        """Consecutive segments with the given payload sizes; the last one with ``last_flags``."""
        segments, seq = [], start
        for i, size in enumerate(sizes):
            flags = last_flags if i == len(sizes) - 1 else ACK
            segments.append(self.segment(seq, bytes([i % 251]) * size, flags, (first_ident + i) & 0xFFFF))
            seq += size
        return segments


V6 = Flow(src="2001:2::1:2", dst="2001:2::2:2")


def ihl(packet: bytes) -> int:
    return (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40


def pseudo(packet: bytes, length: int) -> bytes:
    if packet[0] >> 4 == 4:
        return packet[12:20] + struct.pack("!BBH", 0, packet[9], length)
    return packet[8:40] + struct.pack("!IxxxB", length, packet[6])


def assert_valid(packet: bytes) -> None:
    """Lengths, the IPv4 header checksum and the TCP or UDP checksum, by the RFC 1071 word loop."""
    start = ihl(packet)
    if packet[0] >> 4 == 4:
        assert (packet[2] << 8 | packet[3]) == len(packet) and rfc1071(packet[:start]) == 0
        protocol = packet[9]
    else:
        assert (packet[4] << 8 | packet[5]) + 40 == len(packet)
        protocol = packet[6]
    if protocol in (6, 17):
        assert rfc1071(pseudo(packet, len(packet) - start) + packet[start:]) == 0, "transport checksum"


def kernel(unit: WriteUnit) -> list[bytes]:
    """The packets a write unit stands for, as the kernel would cut it (tcp_gso_segment and inet_gso_segment)."""
    data, packets, octets = unit
    flags, gso, hdr_len, gso_size, csum_start, csum_offset = KERNEL_VNET.unpack_from(data)
    packet = data[VNET_HEADER_SIZE:]
    if gso == 0:
        assert (flags, hdr_len, gso_size, csum_start, csum_offset) == (0, 0, 0, 0, 0)
        assert (packets, octets) == (1, len(packet))
        return [packet]
    start = ihl(packet)
    thl = (packet[start + 12] >> 4) * 4
    assert (flags, gso) == (1, 1 if packet[0] >> 4 == 4 else 4)
    assert (hdr_len, csum_start, csum_offset) == (start + thl, start, 16)
    assert len(packet) <= 65535
    # the field holds the pseudo-header sum; completing it (skb_checksum_help) makes a valid checksum
    completed = bytearray(packet)
    completed[start + 16 : start + 18] = struct.pack("!H", rfc1071(packet[start:]))
    assert rfc1071(pseudo(packet, len(packet) - start) + completed[start:]) == 0
    assert_valid(bytes(completed))
    head, payload = bytearray(packet[: start + thl]), packet[start + thl :]
    assert len(payload) > gso_size
    seq, tcp_flags = struct.unpack_from("!I", head, start + 4)[0], head[start + 13]
    segments = []
    for i, offset in enumerate(range(0, len(payload), gso_size)):
        chunk = payload[offset : offset + gso_size]
        segment = bytearray(head) + chunk
        last = offset + gso_size >= len(payload)
        segment[start + 13] = (tcp_flags if last else tcp_flags & ~(FIN | PSH)) & ~(CWR if i else 0)
        struct.pack_into("!I", segment, start + 4, (seq + offset) & 0xFFFFFFFF)
        if packet[0] >> 4 == 4:
            struct.pack_into("!HH", segment, 2, len(segment), (packet[4] << 8 | packet[5]) + i & 0xFFFF)
            struct.pack_into("!H", segment, 10, 0)
            struct.pack_into("!H", segment, 10, rfc1071(bytes(segment[:start])))
        else:
            struct.pack_into("!H", segment, 4, len(segment) - 40)
        struct.pack_into("!H", segment, start + 16, 0)
        transport = rfc1071(pseudo(bytes(segment), len(segment) - start) + segment[start:])
        struct.pack_into("!H", segment, start + 16, transport)
        segments.append(bytes(segment))
    assert (packets, octets) == (len(segments), sum(map(len, segments)))
    return segments


def coalesce(packets: list[bytes], coalescer: Coalescer | None = None) -> list[WriteUnit]:
    coalescer = coalescer or Coalescer()
    for packet in packets:
        coalescer.push(packet)
    return coalescer.flush()


def shapes(units: list[WriteUnit]) -> list[int]:
    """How many packets each write unit carries."""
    return [packets for _, packets, _ in units]


def flow_of(packet: bytes) -> bytes:
    """Addresses, protocol and ports: what the kernel's flow hash and TCP see as one flow."""
    start = ihl(packet)
    if packet[0] >> 4 == 4:
        return packet[12:20] + packet[9:10] + packet[start : start + 4]
    return packet[8:40] + packet[6:7] + packet[start : start + 4]


def without_df_identification(packet: bytes) -> bytes:
    """An IPv4 packet with DF set with its identification zeroed (meaningless there, RFC 6864 §4.1)."""
    if packet[0] >> 4 != 4 or not packet[6] & 0x40:
        return packet
    header = bytearray(packet[: ihl(packet)])
    header[4:6] = header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", rfc1071(bytes(header)))
    return bytes(header) + packet[len(header) :]


def assert_round_trip(packets: list[bytes], units: list[WriteUnit]) -> None:
    """The units give back ``packets`` (DF identifications aside): each flow's in its order, units in the
    order of their first packets."""
    packets = [without_df_identification(packet) for packet in packets]
    groups = [[without_df_identification(packet) for packet in kernel(unit)] for unit in units]
    flat = [packet for group in groups for packet in group]
    assert sorted(flat) == sorted(packets)
    for flow in {flow_of(packet) for packet in packets}:
        assert [p for p in flat if flow_of(p) == flow] == [p for p in packets if flow_of(p) == flow]
    unused = list(range(len(packets)))
    firsts = []
    for group in groups:
        for n, packet in enumerate(group):
            index = next(i for i in unused if packets[i] == packet)
            unused.remove(index)
            if n == 0:
                firsts.append(index)
    assert firsts == sorted(firsts)
    for packet in flat:
        assert_valid(packet)


# -- virtio_net_hdr -------------------------------------------------------------------------------


def test_the_header_has_the_kernel_layout() -> None:
    header = VnetHeader(VnetFlag.NEEDS_CSUM, GsoType.TCPV4, False, 52, MSS, 20, 16)
    assert header.encode() == KERNEL_VNET.pack(1, 1, 52, MSS, 20, 16)
    assert VnetHeader(VnetFlag.NEEDS_CSUM, GsoType.TCPV6, True, 72, 1000, 40, 16).encode()[1] == 4 | GSO_ECN
    assert PLAIN == bytes(10) and PLAIN_READS == {bytes(10), b"\x02" + bytes(9)}


@given(
    st.sampled_from([VnetFlag(0), VnetFlag.NEEDS_CSUM, VnetFlag.DATA_VALID, VnetFlag.NEEDS_CSUM | VnetFlag.DATA_VALID]),
    st.sampled_from(list(GsoType)),
    st.booleans(),
    st.integers(0, 0xFFFF),
    st.integers(1, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)
def test_decode_inverts_encode(flags, gso_type, ecn, hdr_len, gso_size, csum_start, csum_offset) -> None:
    tcp = gso_type in (GsoType.TCPV4, GsoType.TCPV6)
    partial = bool(flags & VnetFlag.NEEDS_CSUM)
    header = VnetHeader(
        flags,
        gso_type,
        ecn and tcp,
        hdr_len,
        gso_size if gso_type is not GsoType.NONE else 0,
        csum_start if partial else 0,
        csum_offset if partial else 0,
    )
    data = header.encode()
    assert len(data) == VNET_HEADER_SIZE
    assert VnetHeader.decode(data + b"packet") == header


@pytest.mark.parametrize(
    ("data", "offset", "problem"),
    [
        (bytes(9), 0, "9 octets, too short"),
        (KERNEL_VNET.pack(8, 0, 0, 0, 0, 0), 0, "unknown flags 0x08"),
        (KERNEL_VNET.pack(4, 0, 0, 0, 0, 0), 0, "RSC_INFO"),
        (KERNEL_VNET.pack(0, 2, 0, 100, 0, 0), 1, "unknown GSO type 0x02"),
        (KERNEL_VNET.pack(0, 3 | GSO_ECN, 0, 100, 0, 0), 1, "ECN bit on GSO type UDP"),
        (KERNEL_VNET.pack(0, 0, 0, 100, 0, 0), 4, "segment size 100 without segmentation"),
        (KERNEL_VNET.pack(1, 1, 40, 0, 20, 16), 4, "TCPV4 segmentation with a segment size of 0"),
        (KERNEL_VNET.pack(0, 0, 0, 0, 20, 16), 6, "checksum start 20 and offset 16 without NEEDS_CSUM"),
    ],
)
def test_decode_refuses_what_makes_no_sense(data: bytes, offset: int, problem: str) -> None:
    with pytest.raises(OffloadError, match=problem) as raised:
        VnetHeader.decode(data)
    assert raised.value.offset == offset


@pytest.mark.parametrize(
    "fields",
    [
        {"gso_size": 0x10000},
        {"hdr_len": -1},
        {"gso_type": GsoType.UDP, "ecn": True, "gso_size": 8},
    ],
)
def test_a_header_that_cannot_be_encoded_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        VnetHeader(**fields)  # type: ignore[arg-type]


# -- coalescing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", [Flow(), V6], ids=["ipv4", "ipv6"])
def test_a_run_of_segments_becomes_one_gso_packet(flow: Flow) -> None:
    segments = flow.stream([MSS] * 10 + [500], last_flags=ACK | PSH)
    (unit,) = coalesce(segments)
    assert kernel(unit) == segments
    header = VnetHeader.decode(unit[0])
    assert header == VnetHeader(
        VnetFlag.NEEDS_CSUM,
        GsoType.TCPV4 if flow is not V6 else GsoType.TCPV6,
        False,
        ihl(segments[0]) + 32,
        MSS,
        ihl(segments[0]),
        16,
    )
    joined = unit[0][VNET_HEADER_SIZE:]
    assert joined[ihl(joined) + 13] == ACK | PSH  # the last segment's PSH
    assert len(joined) == ihl(joined) + 32 + 10 * MSS + 500


def test_one_segment_alone_is_written_as_it_came() -> None:
    (segment,) = Flow().stream([MSS])
    assert coalesce([segment]) == [(PLAIN + segment, 1, len(segment))]


def test_everything_but_tcp_data_is_written_alone_in_order() -> None:
    flow = Flow()
    packets = [
        udp(),
        flow.segment(1, b"", SYN),
        flow.segment(1000, b""),  # a bare ACK
        udp("2001:2::1:2", "2001:2::2:2"),
        flow.segment(2000, b"x" * 100, ACK | URG),
        flow.segment(3000, b"x" * 100, ACK | ECE),
        flow.segment(4000, b"x" * 100, ACK | CWR),
        flow.segment(5000, b"x" * 100, ACK | FIN),
        flow.segment(6000, b"x" * 100, RST | ACK),
    ]
    units = coalesce(packets)
    assert [data for data, _, _ in units] == [PLAIN + packet for packet in packets]
    assert_round_trip(packets, units)


def test_a_fin_or_psh_ends_a_run_and_the_next_segments_start_another() -> None:
    flow = Flow()
    first = flow.stream([MSS] * 3, last_flags=ACK | PSH)
    second = flow.stream([MSS] * 2, start=1000 + 3 * MSS, last_flags=ACK | FIN, first_ident=103)
    third = flow.stream([MSS] * 2, start=1000 + 5 * MSS, first_ident=105)
    units = coalesce(first + second + third)
    assert shapes(units) == [3, 1, 1, 2]  # FIN is never joined: the segment before it stands alone
    assert_round_trip(first + second + third, units)


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([MSS, MSS, MSS], [3]),
        ([MSS, MSS, 1], [3]),  # a shorter last segment ends the run
        ([MSS, 100, MSS], [2, 1]),  # nothing joins after a shorter one
        ([100, MSS, MSS], [1, 2]),  # nor a longer one after the first: it sets the segment size
        ([1, 1, 1], [3]),  # one-octet segments
        ([MSS, MSS + 1, MSS], [1, 2]),
    ],
)
def test_segment_size_boundaries(sizes: list[int], expected: list[int]) -> None:
    segments = Flow().stream(sizes)
    units = coalesce(segments)
    assert shapes(units) == expected
    assert_round_trip(segments, units)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("abdc", [2, 1, 1]),
        ("acbd", [1, 1, 1, 1]),
        ("abbc", [2, 2]),  # b again (a retransmission), then c joins it
        ("dcba", [1, 1, 1, 1]),
    ],
)
def test_segments_out_of_order_are_not_joined_and_keep_their_order(order: str, expected: list[int]) -> None:
    segments = dict(zip("abcd", Flow().stream([MSS] * 4), strict=True))
    packets = [segments[name] for name in order]
    units = coalesce(packets)
    assert shapes(units) == expected
    assert_round_trip(packets, units)


def test_interleaved_flows_are_joined_each_on_its_own() -> None:
    one, two, three = Flow(), Flow(sport=40001), replace(V6, dport=443)
    streams = [flow.stream([MSS] * 6) for flow in (one, two, three)]
    mixed = [stream[i] for i in range(6) for stream in streams]
    units = coalesce(mixed + [udp()])
    assert shapes(units) == [6, 6, 6, 1]
    assert [kernel(unit) for unit in units[:3]] == streams


def test_a_packet_of_the_flow_that_cannot_join_closes_the_run() -> None:
    flow = Flow()
    a, b, c = flow.stream([MSS] * 3)
    bare_ack = flow.segment(1000 + 2 * MSS, b"", ident=99)
    units = coalesce([a, b, bare_ack, c])
    assert shapes(units) == [2, 1, 1]  # c after the bare ACK, as it came
    assert_round_trip([a, b, bare_ack, c], units)


@pytest.mark.parametrize(
    "change",
    [
        {"tos": 0x03},  # ECN CE on the second segment only
        {"ttl": 62},
        {"df": False},
        {"ack": 778},
        {"window": 503},
        {"options": b"\x01\x01\x08\x0a" + bytes(range(2, 10))},  # a newer timestamp
        {"options": b""},
    ],
)
def test_segments_join_only_with_the_same_header_fields(change: dict[str, object]) -> None:
    flow = Flow()
    first = flow.segment(1000, b"a" * MSS, ident=7)
    other = replace(flow, **change).segment(1000 + MSS, b"b" * MSS, ident=8)
    third = replace(flow, **change).segment(1000 + 2 * MSS, b"c" * MSS, ident=9)
    units = coalesce([first, other, third])
    assert shapes(units) == [1, 2]
    assert_round_trip([first, other, third], units)


def test_ecn_ce_segments_join_each_other() -> None:
    segments = replace(Flow(), tos=0x03).stream([MSS] * 4)
    (unit,) = coalesce(segments)
    assert kernel(unit) == segments
    assert unit[0][VNET_HEADER_SIZE + 1] == 0x03


def test_ipv4_identification_must_count_up_unless_df_is_set() -> None:
    loose = Flow(df=False)
    counting = loose.stream([MSS] * 3, first_ident=0xFFFF)  # wraps to 0 and 1
    assert shapes(coalesce(counting)) == [3]
    jumping = [loose.segment(1000 + i * MSS, b"x" * MSS, ident=ident) for i, ident in enumerate((5, 9, 10))]
    assert shapes(coalesce(jumping)) == [1, 2]
    any_ids = [Flow().segment(1000 + i * MSS, b"x" * MSS, ident=ident) for i, ident in enumerate((5, 9, 0))]
    (unit,) = coalesce(any_ids)  # DF: atomic datagrams, identification meaningless (RFC 6864)
    assert [segment[20:] for segment in kernel(unit)] == [segment[20:] for segment in any_ids]


def test_ip_options_fragments_and_extension_headers_are_never_joined() -> None:
    with_options = Flow(ip_options=b"\x94\x04\x00\x00")  # router alert
    optioned = with_options.stream([MSS] * 3)
    fragments = [bytearray(p) for p in Flow(df=False).stream([MSS] * 3)]
    for fragment in fragments:
        fragment[6] |= 0x20  # MF
        struct.pack_into("!H", fragment, 10, 0)
        struct.pack_into("!H", fragment, 10, rfc1071(bytes(fragment[:20])))
    v6 = V6.stream([MSS] * 2)
    extension = [p[:6] + b"\x00" + p[7:] for p in v6]  # next header: hop-by-hop options
    packets = optioned + [bytes(f) for f in fragments] + extension
    assert shapes(coalesce(packets)) == [1] * len(packets)


def test_sequence_numbers_wrap() -> None:
    segments = Flow().stream([MSS] * 4, start=0xFFFFFFFF - MSS - 10)
    (unit,) = coalesce(segments)
    assert kernel(unit) == segments


def test_a_joined_packet_stays_within_its_limit() -> None:
    segments = Flow().stream([MSS] * 60)
    units = coalesce(segments)
    per_unit = (65535 - 52) // MSS
    assert shapes(units) == [per_unit, 60 - per_unit]
    assert all(len(data) - VNET_HEADER_SIZE <= 65535 for data, _, _ in units)
    assert_round_trip(segments, units)
    small = coalesce(segments[:5], Coalescer(max_size=52 + 2 * MSS))
    assert shapes(small) == [2, 2, 1]


@pytest.mark.parametrize("size", [60, 65536])
def test_a_limit_that_cannot_hold_a_joined_packet_is_refused(size: int) -> None:
    with pytest.raises(ValueError):
        Coalescer(max_size=size)


def test_flush_empties_the_coalescer() -> None:
    coalescer = Coalescer()
    segments = Flow().stream([MSS] * 3)
    assert shapes(coalesce(segments[:2], coalescer)) == [2]
    assert coalescer.flush() == []
    assert shapes(coalesce(segments[2:], coalescer)) == [1]  # the next batch starts afresh


# -- property -------------------------------------------------------------------------------------

FLOWS = [Flow(), Flow(sport=40001, df=False), replace(V6, tos=0x10), Flow(options=b"", tos=0x03)]


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """A drained batch: a few flows' segments (sizes, PSH, gaps, reordering, bare ACKs) interleaved with UDP."""
    queues = []
    for number, flow in enumerate(draw(st.lists(st.sampled_from(FLOWS), min_size=1, max_size=3, unique=True))):
        mss = draw(st.integers(1, 1400))
        seq = draw(st.integers(0, 0xFFFFFFFF))
        ident = draw(st.integers(0, 0xFFFF))
        packets = []
        for i in range(draw(st.integers(1, 30))):
            kind = draw(st.sampled_from(["full"] * 6 + ["short", "psh", "gap", "ack", "fin"]))
            size = mss if kind in ("full", "psh", "gap") else draw(st.integers(1, mss))
            seq += 50 if kind == "gap" else 0
            flags = {"psh": ACK | PSH, "fin": ACK | FIN}.get(kind, ACK)
            payload = b"" if kind == "ack" else bytes([number, i % 256]) * (size // 2) + bytes(size % 2)
            packets.append(flow.segment(seq, payload, flags, (ident + i) & 0xFFFF))
            seq += len(payload)
        if draw(st.booleans()) and len(packets) > 2:
            k = draw(st.integers(0, len(packets) - 2))
            packets[k], packets[k + 1] = packets[k + 1], packets[k]
        queues.append(packets)
    queues.append([udp(payload=bytes([n]) * 40, sport=n + 1) for n in range(draw(st.integers(0, 3)))])
    batch = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        batch.append(queue.pop(0))
    return batch


@settings(max_examples=300, deadline=None)
@given(batches())
def test_any_batch_comes_back_whole_and_in_order(batch: list[bytes]) -> None:
    units = coalesce(batch)
    assert_round_trip(batch, units)
    assert sum(packets for _, packets, _ in units) == len(batch)
    assert sum(octets for _, _, octets in units) == sum(map(len, batch))
