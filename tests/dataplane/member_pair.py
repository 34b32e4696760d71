"""Two group members of ``groupvpn lab``'s topology, with the WAN router between them and a host behind each.

::

    h1 198.19.1.2 -- lan|gm1|wan 198.18.1.2 -- gm1|wan|gm2 -- 198.18.2.2 wan|gm2|lan -- h2 198.19.2.2
                     198.19.1.1          198.18.1.1   198.18.2.1          198.19.2.1
                                                  ks|
                                                     198.18.0.2 ks

``ops.lab`` builds it: everything in 198.18.0.0/15, no default routes, the
WAN router routing each LAN to its member (which header-preserving ESP
needs).  Names carry the test run's PID and a random suffix, so parallel
runs never collide.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass

from groupvpn.crypto.suites import EspSuite
from groupvpn.dataplane.channel import PolicyState
from groupvpn.dataplane.esp_path import SaConfig
from groupvpn.dataplane.spd import Rule, Selector
from groupvpn.ops.lab import Lab
from groupvpn.ops.netlab import build, destroy
from groupvpn.wire.numbers import IpProtocol, PolicyAction

LAN_A, LAN_B = Lab.lan(1), Lab.lan(2)
HOST_A, HOST_B = str(LAN_A[2]), str(LAN_B[2])
DENIED_PORT = 9  # UDP discard: a deny rule lets it pass in clear
SPI = 0x4A7E0001


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20).stdout


@dataclass(frozen=True)
class MemberPair:
    lab: Lab

    @classmethod
    def unique(cls) -> MemberPair:
        return cls(Lab(f"gvd{os.getpid() % 10000}{uuid.uuid4().hex[:4]}-", members=2))

    @property
    def host_a(self) -> str:
        return self.lab.host(1)

    @property
    def member_a(self) -> str:
        return self.lab.gm(1)

    @property
    def wan(self) -> str:
        return self.lab.wan

    @property
    def member_b(self) -> str:
        return self.lab.gm(2)

    @property
    def host_b(self) -> str:
        return self.lab.host(2)

    @property
    def key_server(self) -> str:
        return self.lab.ks

    @property
    def key_server_address(self) -> str:
        return str(self.lab.ks_address.ip)

    @property
    def member_a_wan(self) -> str:
        return str(self.lab.member_wan(1).ip)

    wan_to_a = "gm1"  # the WAN router's interface towards member A

    def build(self) -> None:
        build(self.lab.topology(), lambda namespace: None)

    def remove(self) -> None:
        destroy(self.lab.namespaces)


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
