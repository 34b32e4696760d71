"""The lab's addressing plan and configurations, checked without creating anything."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from groupvpn.config.errors import ConfigError
from groupvpn.config.junos import Node, parse_curly
from groupvpn.config.schema import MEMBER, SERVER
from groupvpn.ops import lab_configs
from groupvpn.ops.lab import LAB_NET, LAN_NET, Lab, LabError, configurations
from groupvpn.ops.netlab import Link, NetlabError, Port, Route, Topology

PSK = "lab-psk-of-enough-length-0123"


def at(node: Node, *path: str) -> Node:
    for keyword in path:
        found = node.child(keyword)
        assert found is not None, f"no {keyword} under {node.keyword}"
        node = found
    return node


def test_every_address_is_in_the_lab_range_and_unique():
    topology = Lab("gvx-", 5).topology()
    ports = [port for link in topology.links for port in (link.a, link.b)]
    addresses = [port.address.ip for port in ports]
    assert all(address in LAB_NET for address in addresses)
    assert len(set(addresses)) == len(addresses)
    assert all(route.destination.subnet_of(LAB_NET) for route in topology.routes)
    assert len(topology.links) == 1 + 2 * 5


def test_the_wan_router_carries_each_lan_to_its_member_and_nothing_has_a_default_route():
    lab = Lab("gvx-", 3)
    topology = lab.topology()
    wan_routes = {route.destination: route.gateway for route in topology.routes if route.netns == lab.wan}
    assert wan_routes == {lab.lan(n): lab.member_wan(n).ip for n in lab.numbers}
    assert not [route for route in topology.routes if route.destination.prefixlen == 0]
    assert topology.routers == {lab.wan, lab.gm(1), lab.gm(2), lab.gm(3)}
    assert lab.host_address(2) == IPv4Interface("198.19.2.2/24")
    assert lab.ks_address == IPv4Interface("198.18.0.2/24")


def test_batches_create_veths_inside_the_namespaces_only():
    lab = Lab("gvx-", 2)
    topology = lab.topology()
    assert topology.host_batch()[0] == "link add ks netns gvx-wan type veth peer name wan netns gvx-ks"
    assert topology.namespace_batch(lab.host(2)) == [
        "link set lo up",
        "addr add 198.19.2.2/24 dev eth0",
        "link set eth0 up",
        "route add 198.18.0.0/15 via 198.19.2.1",
    ]


def test_names_belong_to_one_prefix():
    lab = Lab("gvx-")
    assert lab.owns("gvx-gm12") and lab.owns("gvx-wan") and lab.owns("gvx-h1")
    assert not lab.owns("gvx-gm") and not lab.owns("gvy-wan") and not lab.owns("gvx-wan2")


@pytest.mark.parametrize(("prefix", "members"), [("bad/prefix", 3), ("", 3), ("gv-", 0), ("gv-", 17)])
def test_bad_prefixes_and_sizes_are_refused(prefix, members):
    with pytest.raises(LabError):
        Lab(prefix, members)


def test_inconsistent_topologies_are_refused():
    a = Port("n1", "x", IPv4Interface("198.18.0.1/24"))
    with pytest.raises(NetlabError, match="not on one subnet"):
        Topology(("n1", "n2"), (Link(a, Port("n2", "y", IPv4Interface("198.18.1.1/24"))),), (), frozenset())
    with pytest.raises(NetlabError, match="unknown namespace"):
        Topology(("n1",), (Link(a, Port("n2", "y", IPv4Interface("198.18.0.2/24"))),), (), frozenset())
    link = Link(a, Port("n2", "interface-name-too-long", IPv4Interface("198.18.0.2/24")))
    with pytest.raises(NetlabError, match="not a Linux interface name"):
        Topology(("n1", "n2"), (link,), (), frozenset())
    good = Link(a, Port("n2", "y", IPv4Interface("198.18.0.2/24")))
    with pytest.raises(NetlabError, match="gateway 198.18.9.1 is on none of its links"):
        Topology(("n1", "n2"), (good,), (Route("n1", LAB_NET, IPv4Address("198.18.9.1")),), frozenset())


def test_server_configuration_admits_each_member_for_the_lan_group():
    lab = Lab("gvx-", 3)
    members = [lab.member_wan(n).ip for n in lab.numbers]
    tree = parse_curly(lab_configs.server_config(lab.ks_address.ip, members, LAN_NET, PSK), SERVER)
    server = at(tree, "security", "group-vpn", "server")
    gateways = at(server, "ike").children_named("gateway")
    assert [(g.value, at(g, "address").value, at(g, "local-address").value) for g in gateways] == [
        ("gm1", "198.18.1.2", "198.18.0.2"),
        ("gm2", "198.18.2.2", "198.18.0.2"),
        ("gm3", "198.18.3.2", "198.18.0.2"),
    ]
    group = at(server, "group")
    assert at(group, "group-id").value == str(lab_configs.GROUP_ID)
    assert at(group, "ike-gateway").values == ("gm1", "gm2", "gm3")
    assert at(group, "server-address").value == "198.18.0.2"
    policy = at(group, "ipsec-sa", "match-policy")
    assert (at(policy, "source").value, at(policy, "destination").value) == ("198.19.0.0/16", "198.19.0.0/16")
    assert at(server, "ike", "policy", "pre-shared-key", "ascii-text").value == PSK


@pytest.mark.parametrize(
    ("esp", "algorithms"),
    [
        ("aes128gcm16", {"encryption-algorithm": "aes-128-gcm"}),
        ("aes256-sha256", {"encryption-algorithm": "aes-256-cbc", "authentication-algorithm": "hmac-sha-256-128"}),
    ],
)
def test_the_group_protects_its_lans_with_the_chosen_esp_suite(esp, algorithms):
    lab = Lab("gvx-", 2)
    tree = parse_curly(configurations(lab, esp)["ks.conf"], SERVER)
    server = at(tree, "security", "group-vpn", "server")
    proposal = at(server, "ipsec", "proposal")
    assert {keyword: at(proposal, keyword).value for keyword in algorithms} == algorithms
    assert at(server, "group", "ipsec-sa", "proposal").value == proposal.value == f"lab-{esp}"


def test_member_configuration_registers_from_its_wan_address():
    text = lab_configs.member_config(IPv4Address("198.18.0.2"), IPv4Interface("198.18.2.2/24"), "wan", PSK)
    tree = parse_curly(text, MEMBER)
    member = at(tree, "security", "group-vpn", "member")
    gateway = at(member, "ike", "gateway")
    assert (at(gateway, "server-address").values, at(gateway, "local-address").value) == (("198.18.0.2",), "198.18.2.2")
    assert at(member, "ipsec", "vpn", "group").value == str(lab_configs.GROUP_ID)
    inet = at(tree, "interfaces", "wan", "unit", "family")
    assert at(inet, "address").value == "198.18.2.2/24"
    assert at(inet, "service", "output", "service-set").value == lab_configs.SERVICE_SET
    assert at(tree, "services", "service-set", "ipsec-group-vpn").value == "lab"


def test_a_pre_shared_key_with_quotes_survives_rendering():
    psk = 'with "quotes" and \\ and spaces'
    text = lab_configs.member_config(IPv4Address("198.18.0.2"), IPv4Interface("198.18.1.2/24"), "wan", psk)
    tree = parse_curly(text, MEMBER)
    assert at(tree, "security", "group-vpn", "member", "ike", "policy", "pre-shared-key", "ascii-text").value == psk


def test_short_pre_shared_keys_are_refused():
    with pytest.raises(ValueError, match="at least 20"):
        lab_configs.server_config(IPv4Address("198.18.0.2"), [], IPv4Network("198.19.0.0/16"), "short")


def test_configurations_are_checked_against_the_schema():
    with pytest.raises(ConfigError):
        lab_configs.member_config(IPv4Address("198.18.0.2"), IPv4Interface("198.18.1.2/24"), "{", PSK)


def test_a_lab_shares_one_fresh_pre_shared_key_between_server_and_members():
    def psks(files: dict[str, str]) -> set[str]:
        found = set()
        for name, text in files.items():
            role = "server" if name == "ks.conf" else "member"
            tree = parse_curly(text, SERVER if role == "server" else MEMBER)
            found.add(at(tree, "security", "group-vpn", role, "ike", "policy", "pre-shared-key", "ascii-text").value)
        return found

    lab = Lab("gvx-", 3)
    first, second = configurations(lab), configurations(lab)
    assert sorted(first) == ["gm1.conf", "gm2.conf", "gm3.conf", "ks.conf"]
    (key,) = psks(first)
    assert len(key) >= lab_configs.MIN_PSK_LENGTH
    assert psks(second) != {key}
