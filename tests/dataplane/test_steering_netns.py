"""Steering with service filters in a real namespace: the kernel's rules read back as the plan wrote them.

``remove_leftovers`` compares the rules ``ip -j rule show`` lists with the
plans' own commands; these tests hold that comparison to what iproute2
and the kernel print (protocol names, host prefixes, port ranges, IPv6).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from ipaddress import ip_network

import pytest

from groupvpn.dataplane.spd import FilterTerm, Selector, ServiceFilter
from groupvpn.dataplane.steering import Steering, SteeringPlan, key_server_bypass, remove_leftovers

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
]

UDP_5000 = Selector(protocol=17, destination_ports=(5000, 5000))
OSPF = Selector(protocol=89)
BGP_RANGE = Selector(source=ip_network("198.18.7.9/32"), protocol=6, source_ports=(179, 180))
V4 = ServiceFilter(
    4,
    (
        FilterTerm((UDP_5000, OSPF, BGP_RANGE)),
        FilterTerm((Selector(destination=ip_network("198.18.2.0/24")), Selector(protocol=253)), skip=False),
    ),
)
V6 = ServiceFilter(6, (FilterTerm((Selector(ip_network("2001:2::/48"), protocol=58),), skip=False),))


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10).stdout


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"gvsteer{os.getpid() % 10000}-{uuid.uuid4().hex[:6]}"
    ip("netns", "add", name)
    try:
        for device in ("lan", "wan"):
            ip("-n", name, "link", "add", device, "type", "veth", "peer", "name", f"{device}-peer")
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            ip("netns", "exec", name, "sysctl", "-qw", key)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def plan(*filters: ServiceFilter) -> SteeringPlan:
    bypass = key_server_bypass(["198.18.0.1", "2001:2::1"])
    return SteeringPlan.numbered(3, ["lan"], ["wan"], bypass, (4, 6), filters, filters)


def ours(namespace: str) -> list[dict[str, object]]:
    rules = [rule for family in ("-4", "-6") for rule in json.loads(ip("-n", namespace, family, "-j", "rule", "show"))]
    return [rule for rule in rules if rule.get("protocol") == "71"]


def test_the_rules_of_a_plan_are_its_own_when_read_back(namespace: str) -> None:
    steering = Steering(plan(V4, V6), namespace)
    steering.apply()
    rules = ours(namespace)
    assert len(rules) == sum(command.add[0] == "rule" for command in steering.plan.guard)
    assert remove_leftovers(namespace, [steering.plan]) == []
    assert ours(namespace) == rules
    steering.remove()
    assert ours(namespace) == []


def test_a_predecessor_s_edited_filter_is_removed_and_the_rest_adopted(namespace: str) -> None:
    before = plan(V4, V6)
    Steering(before, namespace).apply()  # a member that exited with its guard in place
    edited = ServiceFilter(4, V4.terms[1:])  # UDP 5000, OSPF and BGP are no longer skipped; IPv6 is unfiltered
    steering = Steering(plan(edited), namespace)
    steering.apply()
    stale = [c for c in before.guard if c.add[0] == "rule" and c not in steering.plan.guard]
    assert sorted(remove_leftovers(namespace, [steering.plan])) == sorted(
        f"IPv{c.family} rule {' '.join(c.delete[3:-2])}" for c in stale
    )
    assert any("dport 5000 lookup main" in " ".join(c.add) for c in stale)
    assert len(ours(namespace)) == sum(command.add[0] == "rule" for command in steering.plan.guard)
    assert remove_leftovers(namespace, [steering.plan]) == []
