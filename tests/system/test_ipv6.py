"""Registration and rekey pushes over IPv6 end to end, and quick recovery after a key server restart.

Topology (every name unique to the run; IPv6 only on the links, in the
RFC 5180 benchmarking range 2001:2::/48, without duplicate address
detection; no route out):

    switch namespace: bridge br0 --veth-- ks        2001:2::1    groupvpn ks (ip netns exec)
                                  --veth-- gm1       2001:2::11   groupvpn member, routing-instance = namespace
                                  --veth-- gm2       2001:2::12   groupvpn member inside its namespace
                                  --veth-- bad-psk   2001:2::21   listed, but with another pre-shared key
                                  --veth-- outsider  2001:2::29   listed only in the gateway of group 2

Group 1 has a TEK for IPv6 LANs and one for IPv4 LANs, and the key server lists the
members' addresses in uncanonical spellings: pre-shared keys and
authorization are looked up by address, whatever way it was written.
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from netns_lab import Lab, failed, registered

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gm"))
from processes import Daemon, groupvpn, ks_conf, member_conf, wait_for  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
    pytest.mark.timeout(300),
]

PSK = "members-of-group-one-key"
KS = "2001:2::1"
GOOD = {"gm1": "2001:2::11", "gm2": "2001:2::12"}
LISTED = {"2001:2::11": "2001:0002:0000::0011", "2001:2::12": "2001:2:0:0:0:0:0:12", "2001:2::21": "2001:2::21"}
BAD_PSK = "2001:2::21"
OUTSIDER = "2001:2::29"
LANS = (("2001:2:0:10::/64", "2001:2:0:20::/64"), ("198.18.10.0/24", "198.18.20.0/24"))


def key_server(lab: Lab) -> Daemon:
    text = ks_conf(
        listen=KS,
        state_file=lab.directory / "ks.db",
        psk=PSK,
        members=list(LISTED.values()),
        others=[OUTSIDER],
        lans=LANS,
    )
    return lab.ks(text)


def new_member(lab: Lab, role: str, address: str, *, inside: bool, psk: str = PSK) -> Daemon:
    """An IPv6 member, its service set applied under ``family inet6``."""
    instance = None if inside else lab.namespace(role)
    text = member_conf(
        servers=[KS], local=address, group=1, psk=psk, interface="wan", routing_instance=instance, family="inet6"
    )
    return lab.member(role, text, inside=inside)


def logged_at(daemon: Daemon, text: str) -> float:
    """When the daemon last logged a line containing ``text`` (log times have milliseconds)."""
    line = next(line for line in reversed(daemon.log.splitlines()) if text in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def ike_sa(member: Daemon) -> dict[str, Any]:
    (record,) = member.records("ike-security-associations", detail=True)
    return dict(record)


def test_members_register_and_are_rekeyed_over_ipv6_and_recover_within_seconds_from_a_key_server_restart(lab):
    lab.host("ks", KS)
    for role, address in [*GOOD.items(), ("bad-psk", BAD_PSK), ("outsider", OUTSIDER)]:
        lab.host(role, address)
    ks = key_server(lab).start()
    members = {
        "gm1": new_member(lab, "gm1", GOOD["gm1"], inside=False),
        "gm2": new_member(lab, "gm2", GOOD["gm2"], inside=True),
    }
    refused = {
        "bad-psk": new_member(lab, "bad-psk", BAD_PSK, inside=True, psk="not-the-key-of-this-group"),
        "outsider": new_member(lab, "outsider", OUTSIDER, inside=True),
    }
    for daemon in [*members.values(), *refused.values()]:
        daemon.launch()
    for daemon in [*members.values(), *refused.values()]:
        daemon.ready()
    for role, member in members.items():
        wait_for(lambda m=member: registered(m), timeout=10, what=f"{role} to register over IPv6")

    # Phase 1 with ID_IPV6_ADDR both ways, PULL over IPv6, a TEK for IPv6 traffic and one for IPv4.
    (server_kek,) = ks.records("kek-security-associations", group=1)
    server_teks = {t["spi"]: t["selectors"] for t in ks.records("ipsec-security-associations", group=1)}
    assert len(server_teks) == 2
    assert {m["member"] for m in ks.records("registered-members", group=1)} == set(GOOD.values())
    for role, member in members.items():
        address = GOOD[role]
        sa = ike_sa(member)
        assert (sa["remote_address"], sa["state"], sa["local_address"]) == (KS, "UP", address)
        assert (sa["local_identity"], sa["remote_identity"]) == (f"ID_IPV6_ADDR {address}", f"ID_IPV6_ADDR {KS}")
        (kek,) = member.records("kek-security-associations", detail=True)
        assert (kek["server"], kek["kek_spi"]) == (KS, server_kek["kek_spi"])
        assert (kek["push_source"], kek["push_destination"]) == (f"{KS} port 848", f"{address} port 848")
        teks = member.records("ipsec-security-associations", detail=True)
        assert {t["spi"]: t["selectors"] for t in teks} == server_teks
        selectors = [rule["selector"] for rule in member.records("policy")]
        assert selectors == [f"{a} -> {b}" for pair in LANS for a, b in (pair, pair[::-1])]
    words = ("security", "group-vpn", "member", "ike", "security-associations", "detail")
    shown = groupvpn("show", *words, "--socket", str(members["gm1"].socket))
    assert shown.returncode == 0, shown.stderr
    fields = dict(tuple(part.strip() for part in line.split(":", 1)) for line in shown.stdout.splitlines() if ": " in line)
    assert (fields["Remote identity"], fields["Local identity"]) == (f"ID_IPV6_ADDR {KS}", f"ID_IPV6_ADDR {GOOD['gm1']}")

    # The key for an IPv6 address is that address's key; an address of another gateway is not let in.
    wrong = wait_for(lambda: failed(refused["bad-psk"]), timeout=15, what="bad-psk to fail")
    assert wrong["last_failure"].startswith("authentication failed: ") and "pre-shared key differs" in wrong["last_failure"]
    outsider = wait_for(lambda: failed(refused["outsider"]), timeout=15, what="outsider to be refused")
    assert f"AUTHENTICATION_FAILED (member {OUTSIDER} not authorized for group 1)" in outsider["last_failure"]

    # A rekey pushed over IPv6 reaches both members, and each acknowledges it (RFC 8263) over IPv6.
    rekey = groupvpn("request", "security", "group-vpn", "server", "rekey", "group", "1", "--socket", str(ks.socket))
    assert rekey.returncode == 0, rekey.stderr
    for address in GOOD.values():
        wait_for(lambda a=address: f"member {a} acknowledged push SEQ" in ks.log, timeout=10, what=f"{address}'s ack")
    for member in members.values():
        assert f"group 1: push SEQ 1 under KEK {server_kek['kek_spi']} from {KS}" in member.log

    # kill -9 and restart: the IKE SA gm1 holds is unknown to the new process.  `clear` registers
    # again at once: the PULL goes unanswered, so does the DPD probe, and a fresh Phase 1 follows;
    # the restarted key server serves the keys it pushed.
    gm1 = members["gm1"]
    stale = ike_sa(gm1)
    pushed = {t["spi"] for t in gm1.records("ipsec-security-associations") if t["encrypting"]}
    kek = registered(gm1)
    ks.kill()
    ks.start()
    cleared = groupvpn("clear", "security", "group-vpn", "member", "ipsec", "security-associations", "--socket", str(gm1.socket))
    assert cleared.returncode == 0, cleared.stderr
    wait_for(lambda: gm1.log.count("vpn lan registered to group 1") == 2, timeout=10, what="gm1 to register again")
    took = logged_at(gm1, "vpn lan registered to group 1") - logged_at(gm1, "clear requested")
    assert took < 5.0, took  # 1 s to the PULL's first resend, 3 probes 1 s apart, then Main Mode and PULL
    fresh = ike_sa(gm1)
    assert fresh["initiator_cookie"] != stale["initiator_cookie"] and fresh["remote_identity"] == f"ID_IPV6_ADDR {KS}"
    assert f"IKE SA with key server {KS} ended: peer stopped answering dead peer detection" in gm1.log
    assert "registration with key server" not in gm1.log  # no attempt failed on the way
    again = wait_for(lambda: registered(gm1), timeout=5, what="gm1's view")
    assert kek is not None and again["kek_spi"] == kek["kek_spi"]
    assert {t["spi"] for t in gm1.records("ipsec-security-associations")} == pushed  # the pushed TEKs, not the old
    print(f"registered again {took:.2f} s after the clear that followed the key server restart")
