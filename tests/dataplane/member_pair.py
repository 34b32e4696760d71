"""Two group members with a WAN router between them and a host behind each, in network namespaces.

::

    ha 198.19.1.2 -- lan|ma|wan 198.18.1.2 -- to-a|wan|to-b -- 198.18.2.2 wan|mb|lan -- hb 198.19.2.2
                  198.19.1.1            198.18.1.1  198.18.2.1             198.19.2.1

Everything is in 198.18.0.0/15; nothing has a default route (every namespace
routes 198.18.0.0/15 only), so nothing can leave the lab.  The WAN router
routes each LAN to its member, which is what header-preserving ESP needs.
Names carry the test run's PID and a random suffix, so parallel runs never
collide; ``remove`` deletes every namespace (and with them the veths and
whatever ran inside) and is safe after a partial ``build``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from ipaddress import ip_network

from groupvpn.crypto.suites import EspSuite
from groupvpn.dataplane.channel import PolicyState
from groupvpn.dataplane.esp_path import SaConfig
from groupvpn.dataplane.spd import Rule, Selector
from groupvpn.wire.numbers import IpProtocol, PolicyAction

LAN_A, LAN_B = ip_network("198.19.1.0/24"), ip_network("198.19.2.0/24")
HOST_A, HOST_B = "198.19.1.2", "198.19.2.2"
WAN_A, WAN_B = "198.18.1.2", "198.18.2.2"
ROUTER_A, ROUTER_B = "198.18.1.1", "198.18.2.1"
LAB = "198.18.0.0/15"
DENIED_PORT = 9  # UDP discard: a deny rule lets it pass in clear
SPI = 0x4A7E0001


def ip(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, timeout=20)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class MemberPair:
    prefix: str

    @classmethod
    def unique(cls) -> MemberPair:
        return cls(f"gvd{os.getpid() % 10000}{uuid.uuid4().hex[:4]}-")

    @property
    def host_a(self) -> str:
        return self.prefix + "ha"

    @property
    def member_a(self) -> str:
        return self.prefix + "ma"

    @property
    def wan(self) -> str:
        return self.prefix + "wan"

    @property
    def member_b(self) -> str:
        return self.prefix + "mb"

    @property
    def host_b(self) -> str:
        return self.prefix + "hb"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.host_a, self.member_a, self.wan, self.member_b, self.host_b)

    def build(self) -> None:
        for name in self.namespaces:
            ip("netns", "add", name)
        links = [
            (self.host_a, "eth0", f"{HOST_A}/24", self.member_a, "lan", "198.19.1.1/24"),
            (self.member_a, "wan", f"{WAN_A}/24", self.wan, "to-a", f"{ROUTER_A}/24"),
            (self.wan, "to-b", f"{ROUTER_B}/24", self.member_b, "wan", f"{WAN_B}/24"),
            (self.member_b, "lan", "198.19.2.1/24", self.host_b, "eth0", f"{HOST_B}/24"),
        ]
        batches: dict[str, list[str]] = {name: ["link set lo up"] for name in self.namespaces}
        for ns1, if1, addr1, ns2, if2, addr2 in links:
            ip("link", "add", "name", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2)
            for ns, ifname, address in ((ns1, if1, addr1), (ns2, if2, addr2)):
                batches[ns] += [f"addr add {address} dev {ifname}", f"link set dev {ifname} up"]
        batches[self.host_a].append(f"route add {LAB} via 198.19.1.1")
        batches[self.host_b].append(f"route add {LAB} via 198.19.2.1")
        batches[self.member_a].append(f"route add {LAB} via {ROUTER_A}")
        batches[self.member_b].append(f"route add {LAB} via {ROUTER_B}")
        batches[self.wan] += [f"route add {LAN_A} via {WAN_A}", f"route add {LAN_B} via {WAN_B}"]
        for name, lines in batches.items():
            ip("-n", name, "-batch", "-", stdin="\n".join(lines) + "\n")
        for name in (self.member_a, self.wan, self.member_b):
            ip("netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def remove(self) -> None:
        existing = ip("netns", "list")
        for name in self.namespaces:
            if name in existing:
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def policy(suite: EspSuite, keys: object, version: int = 1, **sa: object) -> PolicyState:
    """The group's policy as both members hold it: UDP discard denied, LAN A <-> LAN B encrypted under one SA."""
    a_to_b, b_to_a = Selector(LAN_A, LAN_B), Selector(LAN_B, LAN_A)
    discard = Selector(protocol=IpProtocol.UDP, destination_ports=(DENIED_PORT, DENIED_PORT))
    rules = (
        Rule("deny-discard", discard, PolicyAction.DENY),
        Rule("a-b", a_to_b),
        Rule("b-a", b_to_a),
    )
    config = SaConfig(SPI, suite, keys, selectors=(a_to_b, b_to_a), **sa)  # type: ignore[arg-type]
    return PolicyState(version, rules, (config,), {"a-b": SPI, "b-a": SPI})
