"""The steering plan as ``ip`` commands, and how ``Steering`` installs, connects, changes and removes them
(no root: a fake ``ip``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from ipaddress import ip_network

import pytest

from groupvpn.dataplane.spd import FilterTerm, Selector, ServiceFilter
from groupvpn.dataplane.steering import (
    MAIN_RULE_PRIORITY,
    PLAN_PREFERENCES,
    IpCommand,
    IpFailed,
    Steering,
    SteeringError,
    SteeringPlan,
    key_server_bypass,
    remove_leftovers,
    selector_arguments,
)
from groupvpn.wire.numbers import IpProtocol

KS = "198.18.0.1"


def plan(**changes: object) -> SteeringPlan:
    fields: dict[str, object] = {
        "outbound_tun": "tout",
        "inbound_tun": "tin",
        "lan": ("lan",),
        "wan": ("wan",),
        "outbound_table": 100,
        "inbound_table": 101,
        "priority": 500,
    }
    fields.update(changes)
    return SteeringPlan(**fields)  # type: ignore[arg-type]


def adds(commands: Iterable[IpCommand]) -> list[str]:
    return [f"-{c.family} {' '.join(c.add)}" for c in commands]


def deletes(commands: Iterable[IpCommand]) -> list[str]:
    return [f"-{c.family} {' '.join(c.delete)}" for c in commands]


def test_the_guard_is_blackholes_then_bypass_then_steering_and_the_tun_routes_come_apart() -> None:
    bypass = (Selector(destination=ip_network(f"{KS}/32"), protocol=IpProtocol.UDP, destination_ports=(848, 848)),)
    steered = plan(bypass=bypass)
    assert adds(steered.guard) == [
        "-4 route add blackhole default metric 4294967295 table 100 proto 71",
        "-4 route add blackhole default metric 4294967295 table 101 proto 71",
        "-4 rule add pref 500 iif lan to 198.18.0.1/32 ipproto 17 dport 848 lookup main protocol 71",
        "-4 rule add pref 500 iif wan to 198.18.0.1/32 ipproto 17 dport 848 lookup main protocol 71",
        "-4 rule add pref 501 iif lan lookup 100 protocol 71",
        "-4 rule add pref 501 iif wan ipproto 50 lookup 101 protocol 71",
    ]
    assert adds(steered.tun_routes) == [
        "-4 route add default dev tout table 100 proto 71",
        "-4 route add default dev tin table 101 proto 71",
    ]
    for command in (*steered.guard, *steered.tun_routes):
        assert command.delete == (command.add[0], "del", *command.add[2:])


UDP_5000 = Selector(protocol=IpProtocol.UDP, destination_ports=(5000, 5000))
LAN_B, ELSEWHERE = ip_network("198.18.2.0/24"), ip_network("198.19.0.0/16")


def test_service_filters_replace_the_steering_rules_term_by_term_with_nothing_after_them() -> None:
    """Skip terms go to the main table, service terms to the TUN's; unmatched traffic falls through (implicit skip)."""
    ks = Selector(destination=ip_network(f"{KS}/32"), protocol=IpProtocol.UDP, destination_ports=(848, 848))
    outbound = ServiceFilter(
        4, (FilterTerm((UDP_5000,)), FilterTerm((Selector(destination=LAN_B), Selector(destination=ELSEWHERE)), False))
    )
    inbound = ServiceFilter(4, (FilterTerm((UDP_5000,)), FilterTerm((Selector(source=LAN_B),), skip=False)))
    steered = plan(bypass=(ks,), outbound_filters=(outbound,), inbound_filters=(inbound,))
    assert adds(steered.guard)[2:] == [
        "-4 rule add pref 500 iif lan to 198.18.0.1/32 ipproto 17 dport 848 lookup main protocol 71",
        "-4 rule add pref 500 iif wan to 198.18.0.1/32 ipproto 17 dport 848 lookup main protocol 71",
        "-4 rule add pref 501 iif lan ipproto 17 dport 5000 lookup main protocol 71",
        "-4 rule add pref 502 iif lan to 198.18.2.0/24 lookup 100 protocol 71",
        "-4 rule add pref 502 iif lan to 198.19.0.0/16 lookup 100 protocol 71",
        "-4 rule add pref 501 iif wan from 198.18.2.0/24 ipproto 50 lookup 101 protocol 71",  # UDP is never ESP
    ]
    assert steered.spd_bypass == (FilterTerm((ks,)), *outbound.bypass())  # the key servers first, always
    assert plan(outbound_filters=(outbound,)).spd_bypass == outbound.bypass()


def test_a_family_without_a_filter_is_steered_whole() -> None:
    only_v4 = ServiceFilter(4, (FilterTerm((Selector(destination=LAN_B),), skip=False),))
    rules = [line for line in adds(plan(families=(4, 6), outbound_filters=(only_v4,)).guard) if " rule " in line]
    assert rules == [
        "-4 rule add pref 501 iif lan to 198.18.2.0/24 lookup 100 protocol 71",
        "-4 rule add pref 501 iif wan ipproto 50 lookup 101 protocol 71",
        "-6 rule add pref 501 iif lan lookup 100 protocol 71",
        "-6 rule add pref 501 iif wan ipproto 50 lookup 101 protocol 71",
    ]
    nothing_serviced = ServiceFilter(4)  # a filter without terms skips everything
    assert [line for line in adds(plan(inbound_filters=(nothing_serviced,)).guard) if " rule " in line] == [
        "-4 rule add pref 501 iif lan lookup 100 protocol 71"
    ]


@pytest.mark.parametrize(
    ("selector", "arguments"),
    [
        (Selector(), ""),
        (Selector(source=ip_network("198.19.0.0/16")), "from 198.19.0.0/16"),
        (Selector(protocol=89), "ipproto 89"),
        (Selector(source=ip_network("0.0.0.0/0"), destination=ip_network("0.0.0.0/0")), ""),  # shown as "all"
        (Selector(source=ip_network("::/0"), protocol=58), "ipproto 58"),
        (Selector(protocol=6, source_ports=(179, 179)), "ipproto 6 sport 179"),
        (Selector(protocol=17, destination_ports=(5000, 5999)), "ipproto 17 dport 5000-5999"),
        (
            Selector(ip_network("2001:db8:1::/48"), ip_network("2001:db8:2::/48"), 6, (1, 2), (3, 3)),
            "from 2001:db8:1::/48 to 2001:db8:2::/48 ipproto 6 sport 1-2 dport 3",
        ),
    ],
)
def test_selectors_become_rule_selectors(selector: Selector, arguments: str) -> None:
    assert " ".join(selector_arguments(selector)) == arguments


def test_bypass_selectors_go_to_the_families_they_name() -> None:
    v4, v6 = Selector(destination=ip_network("198.18.0.1/32")), Selector(destination=ip_network("2001:db8::1/128"))
    both = Selector(protocol=89)
    dual = plan(bypass=(v4, v6, both), families=(4, 6))
    bypass_rules = [line for line in adds(dual.guard) if "lookup main" in line]
    assert sorted(line[:2] + line.split("iif")[1].split("lookup")[0] for line in bypass_rules) == sorted(
        [
            "-4 lan to 198.18.0.1/32 ",
            "-4 wan to 198.18.0.1/32 ",
            "-6 lan to 2001:db8::1/128 ",
            "-6 wan to 2001:db8::1/128 ",
            "-4 lan ipproto 89 ",
            "-4 wan ipproto 89 ",
            "-6 lan ipproto 89 ",
            "-6 wan ipproto 89 ",
        ]
    )
    assert not any("2001:db8" in line for line in adds(plan(bypass=(v6,)).guard))


def test_key_server_bypass_covers_both_directions_and_each_port_once() -> None:
    selectors = key_server_bypass([KS, "198.18.0.5"], ports=(848, 500, 848))
    assert len(selectors) == 8
    assert Selector(destination=ip_network(f"{KS}/32"), protocol=17, destination_ports=(500, 500)) in selectors
    assert Selector(source=ip_network("198.18.0.5/32"), protocol=17, source_ports=(848, 848)) in selectors


def test_numbered_plans_never_share_names_tables_or_preferences() -> None:
    first, second = (SteeringPlan.numbered(n, ["lan"], ["wan"]) for n in (0, 1))
    assert {first.outbound_tun, first.inbound_tun}.isdisjoint({second.outbound_tun, second.inbound_tun})
    assert {first.outbound_table, first.inbound_table}.isdisjoint({second.outbound_table, second.inbound_table})
    assert first.priority + PLAN_PREFERENCES == second.priority  # the first's filter terms fit in between
    last = SteeringPlan.numbered(99, ["lan"], ["wan"])
    assert len(last.outbound_tun) <= 15 and last.priority + PLAN_PREFERENCES < MAIN_RULE_PRIORITY


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"lan": ()}, "at least one LAN"),
        ({"wan": ("lan",)}, "named twice"),
        ({"inbound_tun": "tout"}, "named twice"),
        ({"lan": ("a/b",)}, "not a Linux interface name"),
        ({"lan": ("x" * 16,)}, "not a Linux interface name"),
        ({"inbound_table": 100}, "must differ"),
        ({"outbound_table": 254}, "reserved"),
        ({"outbound_table": 0}, "reserved"),
        ({"priority": 32765}, "room before the main table"),
        ({"priority": 0}, "room before the main table"),
        ({"families": (4, 5)}, "address families"),
        ({"families": ()}, "address families"),
        ({"outbound_filters": (ServiceFilter(6),)}, r"families \[6\]: one at most for each of \(4,\)"),
        ({"inbound_filters": (ServiceFilter(4), ServiceFilter(4))}, r"families \[4, 4\]"),
    ],
)
def test_plan_errors(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(SteeringError, match=problem):
        plan(**changes)


class FakeIp:
    """Answers ``ip`` like a namespace with forwarding LAN/WAN interfaces and empty tables; records changes."""

    def __init__(
        self,
        fail: dict[str, str] | None = None,
        tables: str = "[]",
        forwarding: str = "on",
        rules: str = "[]",
        all_forwarding: str = "on",
    ) -> None:
        self.fail = fail or {}
        self.tables = tables
        self.forwarding = forwarding
        self.all_forwarding = all_forwarding
        self.rules = rules
        self.changes: list[str] = []

    def __call__(self, command: Sequence[str]) -> str:
        line = " ".join(command)
        assert line.startswith("ip -n lab ")
        for pattern, message in self.fail.items():
            if pattern in line:
                raise IpFailed(command, message)
        if " netconf show dev " in line:
            return f"inet {command[-1]} forwarding {self.forwarding} rp_filter off mc_forwarding off\n"
        if line.endswith(" netconf show"):
            devices = [("lan", self.forwarding), ("all", self.all_forwarding), ("default", "off")]
            return "".join(f"inet6 {name} forwarding {state} mc_forwarding off\n" for name, state in devices)
        if " route show table " in line:
            return self.tables
        if " rule show" in line:
            return self.rules if " -4 " in line else "[]"
        self.changes.append(line.removeprefix("ip -n lab "))
        return ""


def test_apply_adds_the_guard_once_and_remove_deletes_it_newest_first() -> None:
    ip = FakeIp()
    steering = Steering(plan(), "lab", runner=ip)
    steering.apply()
    steering.apply()
    assert ip.changes == adds(plan().guard) and steering.guarding and not steering.connected
    ip.changes.clear()
    steering.remove()
    assert ip.changes == deletes(reversed(plan().guard))
    assert steering.installed == ()


def test_the_tun_routes_come_and_go_over_the_guard() -> None:
    ip = FakeIp()
    steering = Steering(plan(), "lab", runner=ip)
    with pytest.raises(SteeringError, match="guard is not installed"):
        steering.connect()
    assert ip.changes == []
    steering.apply()
    ip.changes.clear()
    steering.connect()
    assert ip.changes == adds(plan().tun_routes) and steering.connected
    ip.changes.clear()
    steering.disconnect()
    assert ip.changes == deletes(reversed(plan().tun_routes))
    assert steering.installed == plan().guard  # the blackholes and the rules stay: the traffic is dropped
    steering.connect()
    ip.changes.clear()
    steering.remove()  # the TUN routes first, the blackholes last
    assert ip.changes == deletes(reversed((*plan().guard, *plan().tun_routes)))


def test_a_change_adds_the_new_guard_before_deleting_what_it_lacks() -> None:
    ip = FakeIp()
    steering = Steering(plan(lan=("lan", "lan2")), "lab", runner=ip)
    steering.apply()
    ip.changes.clear()
    steering.change(plan())
    assert ip.changes == ["-4 rule del pref 501 iif lan2 lookup 100 protocol 71"]
    ip.changes.clear()
    dual = plan(families=(4, 6))
    steering.change(dual)
    assert ip.changes == [line for line in adds(dual.guard) if line.startswith("-6")]
    assert sorted(steering.installed, key=str) == sorted(dual.guard, key=str) and steering.plan == dual


def test_a_change_is_refused_while_connected_or_for_a_plan_that_cannot_be_installed() -> None:
    ip = FakeIp()
    steering = Steering(plan(), "lab", runner=ip)
    steering.apply()
    steering.connect()
    with pytest.raises(SteeringError, match="connected data plane"):
        steering.change(plan(lan=("lan2",)))
    steering.disconnect()
    ip.changes.clear()
    ip.fail = {"netconf show dev lan2": 'Device "lan2" does not exist.'}
    with pytest.raises(SteeringError, match="there is no interface lan2"):
        steering.change(plan(lan=("lan2",)))
    assert ip.changes == [] and steering.plan == plan() and steering.installed == plan().guard


def test_what_a_predecessor_left_is_adopted_and_removed_with_the_rest() -> None:
    ip = FakeIp(fail={"rule add pref 501 iif lan": "RTNETLINK answers: File exists"})
    steering = Steering(plan(), "lab", runner=ip)
    steering.apply()
    assert steering.installed == plan().guard
    ip.fail = {}
    steering.remove()
    assert "-4 rule del pref 501 iif lan lookup 100 protocol 71" in ip.changes


def test_a_failure_half_way_removes_what_was_added() -> None:
    ip = FakeIp(fail={"rule add pref 501 iif wan": "RTNETLINK answers: Invalid argument"})
    steering = Steering(plan(), "lab", runner=ip)
    with pytest.raises(SteeringError, match="Invalid argument"):
        steering.apply()
    added = [line for line in ip.changes if " add " in line]
    deleted = [line for line in ip.changes if " del " in line]
    assert [line.replace(" del ", " add ") for line in deleted] == list(reversed(added))
    assert steering.installed == ()


def test_removal_tolerates_what_is_already_gone_and_reports_the_rest() -> None:
    ip = FakeIp()
    steering = Steering(plan(), "lab", runner=ip)
    steering.apply()
    steering.connect()
    ip.fail = {
        "route del default dev tin": 'Cannot find device "tin"',  # the TUN went with the last worker
        "rule del pref 501 iif lan": "Operation not permitted",
    }
    with pytest.raises(SteeringError, match="Operation not permitted"):
        steering.remove()
    assert steering.installed == ()  # everything else was still deleted
    assert sum(" del " in line for line in ip.changes) == len(plan().guard) + len(plan().tun_routes) - 2


def test_tables_holding_other_routes_are_refused_before_anything_changes() -> None:
    ip = FakeIp(tables='[{"dst":"default","gateway":"198.18.0.9","protocol":"static"}]')
    with pytest.raises(SteeringError, match="table 100 is in use"):
        Steering(plan(), "lab", runner=ip).apply()
    assert ip.changes == []
    ours = FakeIp(tables='[{"type":"blackhole","dst":"default","protocol":"71","metric":4294967295}]')
    Steering(plan(), "lab", runner=ours).apply()


def test_interfaces_must_exist_and_forward() -> None:
    with pytest.raises(SteeringError, match="there is no interface wan"):
        Steering(plan(), "lab", runner=FakeIp(fail={"netconf show dev wan": 'Device "wan" does not exist.'})).apply()
    with pytest.raises(SteeringError, match=r"lan does not forward IPv4 \(net.ipv4.conf.lan.forwarding is 0\)"):
        Steering(plan(), "lab", runner=FakeIp(forwarding="off")).apply()


def test_ipv6_is_steered_only_where_the_namespace_forwards_it() -> None:
    """IPv6 forwarding is the namespace's ``all`` setting alone: forwarding interfaces are not enough."""
    dual = plan(families=(4, 6))
    Steering(dual, "lab", runner=FakeIp()).apply()
    Steering(plan(), "lab", runner=FakeIp(all_forwarding="off")).apply()  # IPv4 only: not asked
    ip = FakeIp(all_forwarding="off")
    problem = r"^the namespace does not forward IPv6 \(net.ipv6.conf.all.forwarding is 0\)$"
    with pytest.raises(SteeringError, match=problem):
        Steering(dual, "lab", runner=ip).apply()
    assert ip.changes == []


def test_leftovers_of_other_numbered_plans_are_removed_and_nothing_else() -> None:
    rules = [
        {"priority": 0, "src": "all", "table": "local"},
        {"priority": 7100, "iif": "lan", "dst": "198.18.0.1", "table": "main", "protocol": "71"},  # kept: VPN 0
        {"priority": 7101, "iif": "lan", "table": "7100", "protocol": "71"},
        {"priority": 7101, "iif": "lan", "ipproto": "udp", "dport": 5000, "table": "main", "protocol": "71"},
        {  # a term of VPN 0's filter before it was edited
            "priority": 7102,
            **{"iif": "lan", "src": "198.18.0.0", "srclen": 16, "ipproto": "ipproto-253"},
            **{"sport_start": 1, "sport_end": 9, "table": "7100", "protocol": "71"},
        },
        {"priority": 7133, "iif": "eth1", "dst": "198.18.0.1", "table": "main", "protocol": "71"},  # VPN 1's
        {"priority": 7134, "iif": "eth1", "table": "7102", "protocol": "71"},
        {"priority": 7134, "iif": "eth2", "table": "7102", "protocol": "71"},
        {"priority": 7135, "iif": "eth3", "table": "7104"},  # someone else's: another protocol
        {"priority": 20000, "iif": "eth1", "table": "9", "protocol": "71"},  # outside the numbered range
        {"priority": 32766, "src": "all", "table": "main"},
    ]
    routes = [
        {"type": "blackhole", "dst": "default", "table": "7100", "metric": 4294967295},
        {"type": "blackhole", "dst": "default", "table": "7102", "metric": 4294967295},
        {"type": "blackhole", "dst": "default", "table": "7103", "metric": 4294967295},
        {"type": "blackhole", "dst": "default", "table": "9", "metric": 4294967295},
    ]
    ip = FakeIp(tables=json.dumps(routes), rules=json.dumps(rules))
    kept = SteeringPlan.numbered(0, ["lan"], ["wan"], [Selector(destination=ip_network("198.18.0.1/32"))])
    deleted = remove_leftovers("lab", [kept], runner=ip)
    assert ip.changes == [
        "-4 rule del pref 7101 iif lan ipproto 17 dport 5000 lookup main protocol 71",
        "-4 rule del pref 7102 iif lan from 198.18.0.0/16 ipproto 253 sport 1-9 lookup 7100 protocol 71",
        "-4 rule del pref 7133 iif eth1 to 198.18.0.1/32 lookup main protocol 71",
        "-4 rule del pref 7134 iif eth1 lookup 7102 protocol 71",
        "-4 rule del pref 7134 iif eth2 lookup 7102 protocol 71",
        "-4 route flush table 7102 proto 71",
        "-4 route flush table 7103 proto 71",
        "-6 route flush table 7102 proto 71",
        "-6 route flush table 7103 proto 71",
    ]
    assert deleted[:3] == [
        "IPv4 rule 7101 iif lan ipproto 17 dport 5000 lookup main",
        "IPv4 rule 7102 iif lan from 198.18.0.0/16 ipproto 253 sport 1-9 lookup 7100",
        "IPv4 rule 7133 iif eth1 to 198.18.0.1/32 lookup main",
    ]
    assert remove_leftovers("lab", [kept], runner=FakeIp()) == []
