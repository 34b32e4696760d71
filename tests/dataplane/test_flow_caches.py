"""The per-flow caches answer exactly what matching selectors against the packet's flow answers.

``SelectorCache`` (decryption's selector check) and ``Spd.lookup`` (the
outbound verdict) key their caches by raw header octets; these tests hold
them to the uncached answer for the same packets, first and repeated.
"""

from __future__ import annotations

from ipaddress import ip_network

from dataplane_packets import icmp_echo, udp
from hypothesis import given, settings
from hypothesis import strategies as st

from groupvpn.dataplane.spd import MALFORMED, FilterTerm, Rule, Selector, SelectorCache, Spd, flow_of
from groupvpn.wire.numbers import PolicyAction

V4 = ["198.18.1.1", "198.18.2.2", "198.19.1.2", "10.0.0.1"]
V6 = ["2001:db8::1", "2001:db8:1::2", "fd00::5"]
PREFIXES = [None, "198.18.0.0/16", "198.18.1.0/24", "198.19.1.2/32", "2001:db8::/32", "fd00::/8"]


def uncached(selectors: tuple[Selector, ...], packet: bytes) -> bool:
    flow = flow_of(packet)
    return flow is not None and any(selector.matches(flow) for selector in selectors)


@st.composite
def selectors(draw: st.DrawFn) -> Selector:
    source, destination = draw(st.sampled_from(PREFIXES)), draw(st.sampled_from(PREFIXES))
    if source and destination and ip_network(source).version != ip_network(destination).version:
        destination = None
    protocol = draw(st.sampled_from([None, 17, 1]))
    ports = draw(st.sampled_from([(0, 0xFFFF), (5000, 5000), (6000, 7000)]))
    return Selector(
        ip_network(source) if source else None, ip_network(destination) if destination else None, protocol, ports
    )


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    family = draw(st.sampled_from([V4, V6]))
    src, dst = draw(st.sampled_from(family)), draw(st.sampled_from(family))
    if family is V4 and draw(st.booleans()):
        return icmp_echo(src, dst)
    return udp(src, dst, sport=draw(st.sampled_from([5000, 6500])), dport=draw(st.sampled_from([6000, 9])))


@settings(max_examples=300)
@given(st.lists(selectors(), min_size=1, max_size=3), st.lists(packets(), min_size=1, max_size=12))
def test_answers_match_the_selectors_on_first_and_repeated_packets(chosen: list[Selector], seen: list[bytes]) -> None:
    cache = SelectorCache(chosen)
    for packet in seen + seen:
        assert cache.admits(packet) is uncached(tuple(chosen), packet)


def test_address_only_selectors_still_refuse_unusable_headers() -> None:
    cache = SelectorCache([Selector(ip_network("198.18.0.0/16"))])
    assert cache.admits(udp()) is True
    assert cache.admits(udp("10.0.0.1")) is False
    towards = SelectorCache([Selector(destination=ip_network("198.18.2.0/24"))])
    assert towards.admits(udp(dst="198.18.2.9")) is True
    assert towards.admits(udp(dst="198.18.3.9")) is False
    assert cache.admits(b"\x45" + bytes(10)) is False
    assert cache.admits(b"\x55" + bytes(40)) is False


def test_the_cache_stays_within_its_limit() -> None:
    cache = SelectorCache([Selector(ip_network("198.18.0.0/16"))], limit=4)
    for last in range(1, 20):
        assert cache.admits(udp(dst=f"198.18.2.{last}")) is True
    assert cache.cached_flows <= 4


def fragment(packet: bytes, offset_units: int, more: bool, cut: int | None = None) -> bytes:
    """``packet`` (IPv4) relabelled as a fragment; its checksum is not the SPD's business."""
    out = bytearray(packet[:cut])
    out[6:8] = ((0x2000 if more else 0) | offset_units).to_bytes(2, "big")
    return bytes(out)


@st.composite
def outbound_packets(draw: st.DrawFn) -> bytes:
    packet = draw(packets())
    if packet[0] >> 4 == 4 and draw(st.booleans()):
        packet = fragment(
            packet, draw(st.sampled_from([0, 0, 3])), draw(st.booleans()), draw(st.sampled_from([None, 20, 22, 24]))
        )
    return packet


@settings(max_examples=300)
@given(
    st.lists(st.tuples(selectors(), st.booleans()), min_size=1, max_size=4),
    st.lists(st.tuples(selectors(), st.booleans()), max_size=3),
    st.lists(outbound_packets(), min_size=1, max_size=12),
)
def test_spd_lookup_gives_each_packet_its_flows_decision(
    rules: list[tuple[Selector, bool]], bypass: list[tuple[Selector, bool]], seen: list[bytes]
) -> None:
    spd = Spd(
        [Rule(f"r{i}", s, PolicyAction.PERMIT if permit else PolicyAction.DENY) for i, (s, permit) in enumerate(rules)],
        bypass=[FilterTerm((selector,), skip) for selector, skip in bypass],
    )
    for packet in seen + seen[::-1]:
        flow = flow_of(packet)
        assert spd.lookup(packet) == (MALFORMED if flow is None else spd.decide(flow))


def test_spd_lookup_tells_fragments_and_protocols_apart() -> None:
    ported = Selector(protocol=17, source_ports=(5000, 5000))
    spd = Spd([Rule("udp-5000", ported, PolicyAction.DENY), Rule("icmp", Selector(protocol=1))])
    whole = udp(sport=5000)
    later = fragment(whole, 3, False)
    first = fragment(whole, 0, True)
    echo = icmp_echo()
    for packet in (later, whole, first, echo, later, whole, echo):
        assert spd.lookup(packet) == spd.decide(flow_of(packet))
    assert spd.lookup(whole).action == spd.lookup(first).action != spd.lookup(later).action
    assert spd.lookup(echo).reason != spd.lookup(later).reason
