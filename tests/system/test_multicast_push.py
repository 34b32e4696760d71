"""Multicast rekey end to end: `groupvpn ks` pushing to 239.192.18.1 and two `groupvpn member` processes.

Topology (names unique to the run, 198.18.0.0/24, no route out): the lab
bridge joins the key server's and both members' namespaces and carries
the group.  The members register by unicast, join the group their KEK
names, and a rekey forced from the command line reaches both by
multicast alone: each installs the key server's new TEK.  Waits are
bounded polling; the lab fixture's teardown stops the daemons and deletes
the namespaces.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from netns_lab import Lab, registered, server_head

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gm"))
from processes import Daemon, groupvpn, member_conf, wait_for  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
    pytest.mark.timeout(120),
]

PSK = "members-of-group-one-key"
KS = "198.18.0.1"
MEMBERS = {"gm1": "198.18.0.11", "gm2": "198.18.0.12"}
GROUP = "239.192.18.1"


def ks_text(lab: Lab) -> str:
    return server_head(KS, lab.directory / "ks.db", PSK, MEMBERS.values()) + f"""\
            ipsec {{
                proposal lan {{
                    authentication-algorithm hmac-sha-256-128;
                    encryption-algorithm aes-128-cbc;
                    lifetime-seconds 3600;
                }}
            }}
            group one {{
                group-id 1;
                ike-gateway gms;
                server-member-communication {{
                    communication-type multicast;
                    multicast-group {GROUP};
                    lifetime-seconds 600;
                    retransmission-period 2;
                    number-of-retransmission 1;
                }}
                ipsec-sa lan {{
                    proposal lan;
                    match-policy out {{ source 198.18.10.0/24; destination 198.18.20.0/24; }}
                    match-policy back {{ source 198.18.20.0/24; destination 198.18.10.0/24; }}
                }}
            }}
        }}
    }}
}}
"""


def active_tek(ks: Daemon) -> str:
    (tek,) = [r["spi"] for r in ks.records("ipsec-security-associations") if r["state"] == "active"]
    return tek


def teks(member: Daemon) -> set[str]:
    return {t["spi"] for t in member.records("ipsec-security-associations")}


def test_a_forced_rekey_reaches_every_member_by_multicast(lab: Lab) -> None:
    lab.host("ks", KS)
    for role, address in MEMBERS.items():
        lab.host(role, address)
    ks = lab.ks(ks_text(lab)).start()
    members = {}
    for role, address in MEMBERS.items():
        text = member_conf(servers=[KS], local=address, group=1, psk=PSK, interface="wan", routing_instance=lab.namespace(role))
        members[role] = lab.member(role, text, inside=False)
        members[role].extra = ("--no-dataplane",)
        members[role].launch()
    for role, member in members.items():
        member.ready()
        wait_for(lambda m=member: registered(m), timeout=10, what=f"{role} to register")
        joined = f"joined multicast group {GROUP} port 848 on {MEMBERS[role]} in routing instance {lab.namespace(role)}"
        wait_for(lambda m=member: joined in m.log, timeout=5, what=f"{role} to join {GROUP}")
    before = active_tek(ks)
    assert all(before in teks(m) for m in members.values())

    forced = groupvpn("request", "security", "group-vpn", "server", "rekey", "group", "1", "--socket", str(ks.socket))
    assert forced.returncode == 0, forced.stderr
    assert f"sent to multicast {GROUP} port 848" in forced.stdout  # to the group alone, no member listed
    wait_for(lambda: active_tek(ks) != before, timeout=5, what="the key server's new TEK")
    after = active_tek(ks)
    for role, member in members.items():
        wait_for(lambda m=member: after in teks(m), timeout=10, what=f"{role} to install {after}")
        assert f"from {KS}" in member.log and "push SEQ" in member.log
