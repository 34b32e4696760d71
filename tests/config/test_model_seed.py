"""The seed's configuration samples, completed with what they refer to, make one valid member.

The samples name placeholders (``<IP_KS1>``, ``group-ID``, ``vpn-name``)
and each shows one corner of the configuration; substituted and put
together they are a member configuration, which must load, mean what the
samples say, and mean the same in the ``set`` form.
"""

from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path

import pytest

from groupvpn.config.errors import ConfigError
from groupvpn.config.junos import parse, render_set
from groupvpn.config.model import FilterTerm, ServiceFilter, load, load_member
from groupvpn.config.schema import MEMBER
from groupvpn.config.values import DfBit, Direction, FilterAction
from groupvpn.wire.numbers import DhGroup, EncryptionAlgorithm, HashAlgorithm

SEED = Path(__file__).parent / "fixtures" / "seed"
CURLY = [
    "apply-service-set",
    "df-bit",
    "fail-open.fixed",
    "gdoi-ipsec.fixed",
    "ikev1",
    "service-filter",
    "service-set.fixed",
]
KEY = "a pre-shared key of the seed group"
PLACEHOLDERS = {
    "<IP_KS1>": "198.18.0.1",
    "<IP_KS2>": "198.18.0.5",
    "<IP_KS3>": "198.18.0.9",
    "<IP_KS4>": "198.18.0.13",
    "<IP_GM>": "198.18.0.2",
    "group group-ID": "group 4242",
    "source-ip-address": "198.51.100.0/24",
    "destination-ip-address": "192.0.2.0/24",
    # The samples show one VPN under three names.
    "vpn-group-name": "vpn-name",
    "group-vpn-name": "vpn-name",
}


# The service-filter sample names a filter it does not show: this one keeps OSPF out of the VPN.
FILTER = """firewall {
    family inet {
        service-filter filter-name {
            term ospf {
                from {
                    protocol ospf;
                }
                then skip;
            }
            term rest {
                then service;
            }
        }
    }
}
"""


def complete(text: str, key: str = KEY) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    return text.replace('"SECRET DATA"', f'"{key}"')


def absolute(path: Path) -> str:
    """A curly sample relative to its ``[edit ...]`` line, as a top-level block."""
    banner, _, body = path.read_text().partition("\n")
    hierarchy = banner[len("[edit") : -1].split()
    return f"{' '.join(hierarchy)} {{\n{body}}}\n" if hierarchy else body


def curly(key: str = KEY) -> str:
    return complete("".join(absolute(SEED / f"{name}.conf") for name in CURLY) + FILTER, key)


def set_form() -> str:
    samples = "".join((SEED / f"{name.removesuffix('.fixed')}.set").read_text() for name in CURLY)
    return complete(samples + render_set(parse(FILTER, MEMBER)))


def test_the_completed_samples_are_one_valid_member():
    config = load(curly())
    (vpn,) = config.vpns
    assert (vpn.name, vpn.group_id, vpn.match_direction, vpn.df_bit) == (
        "vpn-name",
        4242,
        Direction.OUTPUT,
        DfBit.CLEAR,
    )
    gateway = vpn.gateway
    assert gateway.servers == tuple(map(ip_address, ["198.18.0.1", "198.18.0.5", "198.18.0.9", "198.18.0.13"]))
    assert (gateway.local_address, gateway.routing_instance, gateway.server_port) == (
        ip_address("198.18.0.2"),
        "routing-instance-name",
        848,
    )
    (proposal,) = gateway.policy.proposals
    suite = proposal.suite
    assert (suite.encryption, suite.key_length, suite.hash, suite.group, suite.lifetime) == (
        EncryptionAlgorithm.AES_CBC,
        128,
        HashAlgorithm.SHA1,
        DhGroup.MODP_1536,
        3600,
    )
    assert gateway.policy.psk.secret == KEY.encode()
    # gdoi-ipsec's rule comes after fail-open's and sets the same statements
    (rule,) = vpn.fail_open
    assert (rule.name, rule.source, rule.destination) == (
        "rule-name",
        ip_network("198.51.100.0/24"),
        ip_network("192.0.2.0/24"),
    )
    service_set = vpn.service_set
    assert service_set is not None and config.service_sets == (service_set,)
    assert (service_set.name, service_set.service_interface) == ("service-set-name", "service-interface-name")
    (unit,) = config.interfaces
    assert (unit.interface, unit.unit, unit.addresses) == ("interface-name", 0, (ip_interface("10.0.30.2/30"),))
    ospf = FilterTerm("ospf", protocols=(89,), action=FilterAction.SKIP)
    service_filter = ServiceFilter("filter-name", 4, (ospf, FilterTerm("rest")))
    assert config.service_filters == (service_filter,)
    assert [(a.unit, a.direction, a.service_filter) for a in service_set.attachments] == [
        (unit, Direction.INPUT, service_filter),
        (unit, Direction.OUTPUT, service_filter),
    ]


def test_the_set_form_of_the_samples_is_the_same_member():
    assert load_member(set_form()) == load_member(curly())


def test_the_seed_key_itself_is_too_short():
    text = curly(key="SECRET DATA")
    with pytest.raises(ConfigError) as caught:
        load(text)
    line = next(n for n, line in enumerate(text.split("\n"), 1) if "SECRET DATA" in line)
    column = text.split("\n")[line - 1].index('"SECRET DATA"') + 1
    assert [(p.line, p.column, p.message) for p in caught.value.problems] == [
        (line, column, "pre-shared key for policy policy-name has 11 characters; at least 20 are required")
    ]
    assert "SECRET" not in str(caught.value)
