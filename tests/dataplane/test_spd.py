"""Policy lookup: order, selectors, fail-open gating, bypass and the flow cache."""

from __future__ import annotations

import struct
from ipaddress import ip_network

import pytest
from dataplane_packets import icmp_echo, make_sa, udp

from groupvpn.dataplane import DropReason
from groupvpn.dataplane.spd import (
    MAX_FAIL_OPEN_RULES,
    MAX_FILTER_TERMS,
    Action,
    FailOpenRule,
    FilterTerm,
    Rule,
    Selector,
    ServiceFilter,
    Spd,
    SpdError,
    flow_of,
)
from groupvpn.wire.ip import IPv6Fragment, fragment_ipv4
from groupvpn.wire.numbers import PolicyAction

KS = "198.18.100.1"
LAN_A, LAN_B = ip_network("198.18.1.0/24"), ip_network("198.18.2.0/24")


def test_flow_of_ipv4_and_ipv6() -> None:
    assert flow_of(udp()) == (bytes([198, 18, 1, 1]), bytes([198, 18, 2, 2]), 17, 5000, 6000)
    assert flow_of(icmp_echo())[2:] == (1, -1, -1)
    v6 = udp("2001:db8::1", "2001:db8::2", sport=7, dport=8)
    assert flow_of(v6) == (v6[8:24], v6[24:40], 17, 7, 8)
    assert flow_of(b"\x45" + bytes(10)) is None
    assert flow_of(b"\x44" + bytes(30)) is None
    assert flow_of(b"\x60" + bytes(30)) is None
    assert flow_of(b"\x50" + bytes(30)) is None


def test_flow_of_walks_ipv6_extension_headers_and_fragments() -> None:
    plain = udp("2001:db8::1", "2001:db8::2", sport=7, dport=8)
    hop_by_hop = bytes([44, 0]) + bytes(6)  # next: Fragment
    first = IPv6Fragment(17, 0, True, 1).encode()
    later = IPv6Fragment(17, 8, False, 1).encode()

    def with_headers(*headers: bytes) -> bytes:
        extra = b"".join(headers)
        return plain[:4] + struct.pack("!HB", len(plain) - 40 + len(extra), 0) + plain[7:40] + extra + plain[40:]

    assert flow_of(with_headers(hop_by_hop, first))[2:] == (17, 7, 8)
    assert flow_of(with_headers(hop_by_hop, later))[2:] == (17, -1, -1)  # no ports after the first fragment
    assert flow_of(with_headers(hop_by_hop)[:41]) is None


def test_non_initial_ipv4_fragments_have_no_ports() -> None:
    fragments = fragment_ipv4(udp(payload=bytes(100)), 60)
    assert flow_of(fragments[0])[3:] == (5000, 6000)
    assert flow_of(fragments[1])[3:] == (-1, -1)


@pytest.mark.parametrize(
    ("selector", "packet", "matches"),
    [
        (Selector(), udp(), True),
        (Selector(), udp("2001:db8::1", "2001:db8::2"), True),
        (Selector(LAN_A, LAN_B), udp(), True),
        (Selector(LAN_B, LAN_A), udp(), False),
        (Selector(LAN_A), udp("2001:db8::1", "2001:db8::2"), False),  # family
        (Selector(ip_network("2001:db8::/64")), udp("2001:db8::1", "2001:db8::2"), True),
        (Selector(protocol=17), udp(), True),
        (Selector(protocol=6), udp(), False),
        (Selector(destination_ports=(6000, 6000)), udp(), True),
        (Selector(destination_ports=(1, 5999)), udp(), False),
        (Selector(source_ports=(4000, 5000)), udp(), True),
        (Selector(source_ports=(0, 10)), icmp_echo(), False),  # no ports to match
        (Selector(destination=ip_network("224.0.0.0/4")), udp(dst="239.1.2.3"), True),
    ],
)
def test_selector_matching(selector: Selector, packet: bytes, matches: bool) -> None:
    flow = flow_of(packet)
    assert flow is not None and selector.matches(flow) is matches


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (dict(source=LAN_A, destination=ip_network("2001:db8::/32")), "mixes address families"),
        (dict(source_ports=(10, 9)), "port range"),
        (dict(destination_ports=(0, 70000)), "port range"),
        (dict(protocol=256), "8 bits"),
    ],
)
def test_selector_errors(arguments: dict[str, object], problem: str) -> None:
    with pytest.raises(SpdError, match=problem):
        Selector(**arguments)  # type: ignore[arg-type]


def test_first_matching_rule_wins_and_nothing_matched_is_dropped() -> None:
    sa = make_sa()
    spd = Spd(
        [
            Rule("web in clear", Selector(LAN_A, LAN_B, protocol=6, destination_ports=(80, 80)), PolicyAction.DENY),
            Rule("lan", Selector(LAN_A, LAN_B)),
            Rule("never reached", Selector(LAN_A, LAN_B), PolicyAction.DENY),
        ]
    )
    spd.set_sa("lan", sa)
    assert spd.lookup(udp()).sa is sa
    tcp80 = bytearray(udp(dport=80))
    tcp80[9] = 6
    assert spd.lookup(bytes(tcp80)).action is Action.BYPASS
    assert spd.lookup(udp(dport=80)).sa is sa
    unmatched = spd.lookup(udp(dst="198.18.3.3"))
    assert (unmatched.action, unmatched.reason) == (Action.DISCARD, DropReason.NO_POLICY)
    assert spd.lookup(b"\x45").reason is DropReason.MALFORMED


def test_permit_without_sa_drops_until_one_is_set() -> None:
    spd = Spd([Rule("lan", Selector(LAN_A, LAN_B))])
    assert spd.lookup(udp()).reason is DropReason.NO_SA
    sa = make_sa()
    spd.set_sa("lan", sa)
    assert spd.lookup(udp()).sa is sa and spd.sa_of("lan") is sa
    spd.set_sa("lan", None)
    assert spd.lookup(udp()).reason is DropReason.NO_SA


def test_bypass_entries_come_first_and_are_never_encrypted() -> None:
    to_ks = Selector(destination=ip_network(f"{KS}/32"), protocol=17, destination_ports=(848, 848))
    spd = Spd([Rule("everything", Selector())], bypass=[FilterTerm((to_ks,))])
    spd.set_sa("everything", make_sa())
    assert spd.lookup(udp(dst=KS, dport=848)).action is Action.BYPASS
    assert spd.lookup(udp(dst=KS, dport=849)).action is Action.PROTECT


UDP_5000 = Selector(protocol=17, destination_ports=(5000, 5000))


def test_the_first_matching_bypass_term_decides_and_service_goes_on_to_the_rules() -> None:
    """A service term ahead of a skip term keeps its traffic in the VPN; a later skip term does not take it back."""
    serviced_host = Selector(destination=ip_network("198.18.2.2/32"))
    terms = [FilterTerm((serviced_host,), skip=False), FilterTerm((UDP_5000,))]
    spd = Spd([Rule("everything", Selector())], bypass=terms)
    spd.set_sa("everything", make_sa())
    assert spd.lookup(udp(dst="198.18.2.2", dport=5000)).action is Action.PROTECT
    assert spd.lookup(udp(dst="198.18.2.3", dport=5000)).action is Action.BYPASS
    assert spd.lookup(udp(dst="198.18.2.3", dport=5001)).action is Action.PROTECT  # no term: on to the rules


def test_a_service_filter_skips_what_no_term_services_in_its_family_only() -> None:
    """Junos's implicit final skip: an IPv4 filter sends unmatched IPv4 traffic in clear and leaves IPv6 alone."""
    only_lan_b = ServiceFilter(4, (FilterTerm((Selector(destination=LAN_B),), skip=False),))
    spd = Spd([Rule("everything", Selector())], bypass=only_lan_b.bypass())
    spd.set_sa("everything", make_sa())
    assert spd.lookup(udp()).action is Action.PROTECT
    assert spd.lookup(udp(dst="198.18.3.3")).action is Action.BYPASS
    assert spd.lookup(udp("2001:db8::1", "2001:db8::2")).action is Action.PROTECT
    ospf = Selector(protocol=89)
    no_ospf = ServiceFilter(6, (FilterTerm((ospf,)), FilterTerm((Selector(),), skip=False)))
    assert no_ospf.bypass() == (
        FilterTerm((Selector(ip_network("::/0"), protocol=89),)),
        FilterTerm((Selector(ip_network("::/0")),), skip=False),
        FilterTerm((Selector(ip_network("::/0")),)),
    )
    spd = Spd([Rule("everything", Selector())], bypass=no_ospf.bypass())
    spd.set_sa("everything", make_sa())
    v6_ospf = bytearray(udp("2001:db8::1", "2001:db8::2"))
    v6_ospf[6] = 89
    v4_ospf = bytearray(udp())
    v4_ospf[9] = 89
    assert spd.lookup(bytes(v6_ospf)).action is Action.BYPASS
    assert spd.lookup(bytes(v4_ospf)).action is Action.PROTECT
    assert spd.lookup(udp("2001:db8::1", "2001:db8::2")).action is Action.PROTECT


def test_what_of_a_service_filter_esp_can_match() -> None:
    host = ip_network("198.18.2.2/32")
    service_filter = ServiceFilter(
        4,
        (
            FilterTerm((UDP_5000, Selector(protocol=17))),  # never ESP
            FilterTerm((Selector(source=host), Selector(protocol=50, source_ports=(1, 1))), skip=False),
            FilterTerm((Selector(protocol=50),)),
        ),
    )
    assert service_filter.esp_only() == ServiceFilter(
        4,
        (
            FilterTerm((Selector(source=host, protocol=50),), skip=False),
            FilterTerm((Selector(protocol=50),)),
        ),
    )


@pytest.mark.parametrize(
    ("family", "terms", "problem"),
    [
        (5, (), "address family 5"),
        (4, (FilterTerm((Selector(destination=ip_network("2001:db8::/32")),)),), "2001:db8::/32 is not an IPv4"),
        (6, (FilterTerm((Selector(source=LAN_A),)),), "198.18.1.0/24 is not an IPv6"),
        (4, (FilterTerm((Selector(),)),) * (MAX_FILTER_TERMS + 1), "33 terms; a service filter has at most 32"),
    ],
)
def test_service_filter_errors(family: int, terms: tuple[FilterTerm, ...], problem: str) -> None:
    with pytest.raises(SpdError, match=problem):
        ServiceFilter(family, terms)


def test_fail_open_rules_apply_only_while_the_flag_is_up() -> None:
    spd = Spd([Rule("lan", Selector(LAN_A, LAN_B))], fail_open=[FailOpenRule(LAN_A, ip_network("198.18.2.0/25"))])
    assert spd.lookup(udp()).reason is DropReason.NO_SA  # fail closed by default
    spd.fail_open = True
    assert spd.fail_open and spd.lookup(udp()).action is Action.BYPASS
    assert spd.lookup(udp(dst="198.18.2.200")).reason is DropReason.NO_SA  # outside the fail-open rule
    assert spd.lookup(udp(dst="10.9.9.9")).reason is DropReason.NO_POLICY
    spd.fail_open = False
    assert spd.lookup(udp()).reason is DropReason.NO_SA


def test_fail_open_works_before_any_rule_arrived() -> None:
    spd = Spd(fail_open=[FailOpenRule(LAN_A, LAN_B)])
    spd.fail_open = True
    assert spd.lookup(udp()).action is Action.BYPASS


def test_at_most_ten_fail_open_rules() -> None:
    rules = [FailOpenRule(ip_network(f"198.18.{i}.0/24"), LAN_B) for i in range(MAX_FAIL_OPEN_RULES + 1)]
    Spd(fail_open=rules[:MAX_FAIL_OPEN_RULES])
    with pytest.raises(SpdError, match="11 fail-open rules; a VPN allows at most 10"):
        Spd(fail_open=rules)


def test_fail_open_rule_families_must_agree() -> None:
    with pytest.raises(SpdError, match="mixes address families"):
        Spd(fail_open=[FailOpenRule(LAN_A, ip_network("2001:db8::/32"))])


def test_cache_is_invalidated_by_every_policy_change() -> None:
    first, second = make_sa(spi=0x1000), make_sa(spi=0x2000)
    spd = Spd([Rule("lan", Selector(LAN_A, LAN_B))])
    spd.set_sa("lan", first)
    assert spd.lookup(udp()).sa is first
    assert spd.lookup(udp()).sa is first  # served from the cache
    spd.set_sa("lan", second)
    assert spd.lookup(udp()).sa is second
    spd.replace_rules([Rule("lan", Selector(LAN_A, LAN_B), PolicyAction.DENY)])
    assert spd.lookup(udp()).action is Action.BYPASS
    spd.replace_rules([Rule("lan", Selector(LAN_A, LAN_B))])
    assert spd.lookup(udp()).reason is DropReason.NO_SA  # a deny rule keeps no SA


def test_rules_keep_their_sa_by_name_across_replacement() -> None:
    sa = make_sa()
    spd = Spd([Rule("lan", Selector(LAN_A, LAN_B)), Rule("other", Selector(LAN_B, LAN_A))])
    spd.set_sa("lan", sa)
    spd.replace_rules([Rule("lan", Selector(LAN_A, LAN_B)), Rule("new", Selector())])
    assert spd.lookup(udp()).sa is sa
    assert spd.sa_of("other") is None and spd.sa_of("new") is None
    assert [rule.name for rule in spd.rules] == ["lan", "new"]


def test_cache_is_bounded() -> None:
    spd = Spd([Rule("lan", Selector())], cache_limit=4)
    spd.set_sa("lan", make_sa())
    for port in range(1, 10):
        assert spd.lookup(udp(sport=port)).action is Action.PROTECT
    assert 0 < spd.cached_flows <= 4


def test_rule_errors() -> None:
    spd = Spd([Rule("deny", Selector(), PolicyAction.DENY)])
    with pytest.raises(SpdError, match="no rule named"):
        spd.set_sa("missing", make_sa())
    with pytest.raises(SpdError, match="deny rule"):
        spd.set_sa("deny", make_sa())
    with pytest.raises(SpdError, match="unique"):
        Spd([Rule("a", Selector()), Rule("a", Selector())])
