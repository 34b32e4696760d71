"""Member configurations as typed values: the fixture, defaults, IPv6, several groups."""

from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path

from groupvpn.config.junos import parse, render_curly, render_set
from groupvpn.config.model import (
    FailOpenRule,
    FilterTerm,
    InterfaceUnit,
    MemberConfig,
    ServiceAttachment,
    ServiceFilter,
    load,
    load_member,
)
from groupvpn.config.schema import MEMBER
from groupvpn.config.values import DfBit, Direction, FilterAction

FIXTURES = Path(__file__).parent / "fixtures"
TEXT = (FIXTURES / "member.set").read_text()
M = "set security group-vpn member "
KEY = 'Zq8#Wv2 kP0x-"Jy7"Lm4'
BGP = (179, 179)
BYPASS_BGP = ServiceFilter(
    "bypass-bgp",
    4,
    (
        FilterTerm("bgp", protocols=(6,), destination_ports=(BGP,), action=FilterAction.SKIP),
        FilterTerm("bgp-replies", protocols=(6,), source_ports=(BGP,), action=FilterAction.SKIP),
        FilterTerm("rest"),
    ),
)


def test_the_fixture():
    config = load(TEXT)
    assert isinstance(config, MemberConfig)
    (vpn,) = config.vpns
    assert config.vpn("lan") is vpn
    assert (vpn.group_id, vpn.match_direction, vpn.df_bit, vpn.fail_open) == (1234, Direction.OUTPUT, DfBit.COPY, ())
    gateway = vpn.gateway
    assert (gateway.name, gateway.servers, gateway.local_address, gateway.routing_instance, gateway.server_port) == (
        "ks-pair",
        (ip_address("198.18.0.1"), ip_address("198.18.0.5")),
        ip_address("198.18.0.2"),
        "wan",
        848,
    )
    assert gateway.policy.psk.secret == KEY.encode() and KEY not in repr(config)
    assert [s.name for s in gateway.policy.suites] == ["aes128-sha256-modp2048"]
    eth1 = InterfaceUnit("eth1", 0, (ip_interface("198.18.0.2/30"),))
    assert config.interfaces == (eth1,)
    service_set = vpn.service_set
    assert service_set is not None and config.service_sets == (service_set,)
    assert (service_set.name, service_set.vpn, service_set.service_interface) == ("gvpn", "lan", "ms-0/0/0")
    assert service_set.attachments == (
        ServiceAttachment(eth1, Direction.INPUT, BYPASS_BGP),
        ServiceAttachment(eth1, Direction.OUTPUT),
    )
    assert config.service_filters == (BYPASS_BGP,)


def test_active_fail_open_rules():
    (vpn,) = load_member(TEXT.replace("deactivate security group-vpn member ipsec vpn lan fail-open\n", "")).vpns
    assert vpn.fail_open == (FailOpenRule("ntp", ip_network("10.1.0.0/16"), ip_network("10.0.0.123/32")),)


def test_the_curly_form_is_the_same_configuration():
    assert load_member(render_curly(parse(TEXT, MEMBER))) == load_member(TEXT)


def test_defaults_ipv6_and_a_hexadecimal_key():
    text = "".join(
        f"{M}{line}\n"
        for line in [
            "ike proposal p authentication-algorithm sha-384",
            "ike proposal p dh-group group20",
            "ike proposal p encryption-algorithm aes-256-cbc",
            "ike policy v6 proposals p",
            f"ike policy v6 pre-shared-key hexadecimal {'0123456789abcdef' * 3}",
            "ike gateway ks ike-policy v6",
            "ike gateway ks server-address 2001:db8::1",
            "ike gateway ks local-address 2001:db8::10",
            "ipsec vpn v6 ike-gateway ks",
            "ipsec vpn v6 group 4294967295",
        ]
    )
    (vpn,) = load_member(text).vpns
    assert (vpn.group_id, vpn.match_direction, vpn.df_bit, vpn.service_set) == (
        4294967295,
        Direction.OUTPUT,
        DfBit.CLEAR,
        None,
    )
    gateway = vpn.gateway
    assert (gateway.servers, gateway.local_address, gateway.server_port, gateway.routing_instance) == (
        (ip_address("2001:db8::1"),),
        ip_address("2001:db8::10"),
        848,
        None,
    )
    assert gateway.policy.psk.secret == bytes.fromhex("0123456789abcdef" * 3)
    assert [(s.name, s.lifetime) for s in gateway.policy.suites] == [("aes256-sha384-ecp384", 3600)]


def test_service_sets_apply_under_family_inet6_and_once_under_both_families():
    text = TEXT + "".join(
        f"{line}\n"
        for line in [
            "set interfaces eth2 unit 0 family inet6 service output service-set gvpn",
            "set interfaces eth2 unit 0 family inet6 address 2001:2::11/64",
            "set interfaces eth1 unit 0 family inet6 service output service-set gvpn",
            "set interfaces eth1 unit 0 family inet6 address 2001:2:0:1::2/64",
        ]
    )
    config = load_member(text)
    eth1 = InterfaceUnit("eth1", 0, (ip_interface("198.18.0.2/30"), ip_interface("2001:2:0:1::2/64")))
    eth2 = InterfaceUnit("eth2", 0, (ip_interface("2001:2::11/64"),))
    assert config.interfaces == (eth1, eth2)
    service_set = config.vpn("lan").service_set
    assert service_set is not None and service_set.attachments == (
        ServiceAttachment(eth1, Direction.INPUT, BYPASS_BGP),
        ServiceAttachment(eth1, Direction.OUTPUT),
        ServiceAttachment(eth2, Direction.OUTPUT),
    )


def test_two_groups_in_two_service_sets():
    text = TEXT + "".join(
        f"{line}\n"
        for line in [
            f"{M}ipsec vpn voice ike-gateway ks-pair",
            f"{M}ipsec vpn voice group 77",
            f"{M}ipsec vpn voice match-direction input",
            f"{M}ike gateway ks-pair server-port 1848",
            "set services service-set gvoice ipsec-group-vpn voice",
            "set interfaces eth2 unit 5 family inet service output service-set gvoice",
            "set interfaces eth2 unit 5 family inet address 198.18.1.1/24",
            "set interfaces eth2 unit 5 family inet address 198.18.2.1/24",
        ]
    )
    config = load_member(text)
    voice = config.vpn("voice")
    assert (voice.group_id, voice.match_direction, voice.gateway.server_port) == (77, Direction.INPUT, 1848)
    eth2 = InterfaceUnit("eth2", 5, (ip_interface("198.18.1.1/24"), ip_interface("198.18.2.1/24")))
    assert voice.service_set is not None
    assert voice.service_set.attachments == (ServiceAttachment(eth2, Direction.OUTPUT),)
    assert [s.name for s in config.service_sets] == ["gvpn", "gvoice"]
    assert config.vpn("lan").service_set is not None and config.vpn("lan").service_set.name == "gvpn"


FILTERS = """
firewall {
    family inet {
        service-filter keep-out {
            term routing {
                from {
                    source-address {
                        198.18.0.0/15;
                        198.51.100.7;
                    }
                    protocol [ ospf 112 ];
                }
                then skip;
            }
            term web {
                from {
                    destination-address {
                        198.18.10.0/24;
                    }
                    protocol tcp;
                    destination-port [ https 8000-8080 ];
                }
            }
        }
    }
    family inet6 {
        service-filter keep-out {
            term bgp {
                from {
                    next-header [ tcp 6 ];
                    source-port bgp;
                }
                then {
                    skip;
                }
            }
        }
    }
}
interfaces {
    eth1 {
        unit 0 {
            family inet6 {
                service {
                    input {
                        service-set gvpn service-filter keep-out;
                    }
                }
            }
        }
    }
}
"""


def test_service_filters_of_both_families_in_either_syntax():
    config = load_member(TEXT + render_set(parse(FILTERS, MEMBER)))
    routing = FilterTerm(
        "routing",
        sources=(ip_network("198.18.0.0/15"), ip_network("198.51.100.7/32")),
        protocols=(89, 112),
        action=FilterAction.SKIP,
    )
    web = FilterTerm(
        "web",
        destinations=(ip_network("198.18.10.0/24"),),
        protocols=(6,),
        destination_ports=((443, 443), (8000, 8080)),
    )
    inet = ServiceFilter("keep-out", 4, (routing, web))
    inet6 = ServiceFilter(
        "keep-out", 6, (FilterTerm("bgp", protocols=(6,), source_ports=(BGP,), action=FilterAction.SKIP),)
    )
    assert config.service_filters == (BYPASS_BGP, inet, inet6)
    service_set = config.vpn("lan").service_set
    eth1 = InterfaceUnit("eth1", 0, (ip_interface("198.18.0.2/30"),))
    assert service_set is not None and service_set.attachments == (
        ServiceAttachment(eth1, Direction.INPUT, BYPASS_BGP),
        ServiceAttachment(eth1, Direction.OUTPUT),
        ServiceAttachment(eth1, Direction.INPUT, inet6),
    )
    assert load_member(render_curly(parse(TEXT, MEMBER)) + FILTERS) == config
