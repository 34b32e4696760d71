"""Registration end to end: a `groupvpn ks` and `groupvpn member` processes in lab namespaces.

Topology (every name unique to the run, 198.18.0.0/24, no route out):

    switch namespace: bridge br0 --veth-- ks      198.18.0.1    groupvpn ks (ip netns exec)
                                  --veth-- gm1..gm4 198.18.0.11-14  groupvpn member, routing-instance = namespace
                                  --veth-- bad*   198.18.0.2x   groupvpn member (ip netns exec), each refused
                                  --veth-- rogue  198.18.0.200  a key server sending unpaired policies

The good members run in the root namespace and reach theirs through
``local-address ... routing-instance NS`` (socket and link watcher inside
it); the refused ones run inside their namespace.  Polling is bounded;
teardown stops every process and deletes every namespace, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from netns_lab import Lab, failed, ip, registered, registration, show_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gm"))
from processes import PYTHON, Daemon, ks_conf, member_conf, wait_for  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
    pytest.mark.timeout(300),
]

PSK = "members-of-group-one-key"
KS = "198.18.0.1"
ROGUE = "198.18.0.200"
GOOD = {"gm1": "198.18.0.11", "gm2": "198.18.0.12", "gm3": "198.18.0.13", "gm4": "198.18.0.14"}
LISTED = ["198.18.0.21", "198.18.0.22", "198.18.0.24"]  # members of group 1 that are refused for other reasons
OUTSIDER = "198.18.0.29"  # listed only in the gateway of group 2
ROGUE_SCRIPT = Path(__file__).resolve().parents[1] / "gm" / "rogue_server.py"


def key_server(lab: Lab) -> Daemon:
    members = [*GOOD.values(), *LISTED]
    return lab.ks(ks_conf(listen=KS, state_file=lab.directory / "ks.db", psk=PSK, members=members, others=[OUTSIDER]))


def new_member(lab: Lab, role: str, address: str, *, inside: bool = False, **changes: Any) -> Daemon:
    """A member for the namespace of ``role``: run inside it, or from here with a routing instance."""
    fields: dict[str, Any] = {"servers": [KS], "local": address, "group": 1, "psk": PSK, "interface": "wan"}
    fields["routing_instance"] = None if inside else lab.namespace(role)
    fields.update(changes)
    return lab.member(role, member_conf(**fields), inside=inside)


def rogue(lab: Lab) -> None:
    psk_file = lab.directory / "rogue.psk"
    psk_file.write_text(PSK)
    lab.spawn("rogue", [PYTHON, str(ROGUE_SCRIPT), "--address", ROGUE, "--psk-file", str(psk_file)])


def test_members_register_agree_survive_a_key_server_crash_and_follow_their_interface(lab):
    lab.host("ks", KS)
    for role, address in GOOD.items():
        lab.host(role, address)
    ks = key_server(lab).start()
    members = {role: new_member(lab, role, GOOD[role]).launch() for role in ("gm1", "gm2", "gm3")}
    for member in members.values():
        member.ready()
    for member in members.values():
        wait_for(lambda m=member: registered(m), timeout=5, what=f"{member.name} to register")

    # Every member holds what the key server serves: the same KEK, TEK and policy.
    (server_kek,) = ks.records("kek-security-associations", group=1)
    (server_tek,) = ks.records("ipsec-security-associations", group=1)
    keks = {role: show_json(m, "kek", "security-associations")["records"] for role, m in members.items()}
    teks = {role: show_json(m, "ipsec", "security-associations", "detail")["records"] for role, m in members.items()}
    policies = {role: show_json(m, "policy")["records"] for role, m in members.items()}
    for role in members:
        (kek,) = keks[role]
        (tek,) = teks[role]
        assert (kek["group"], kek["server"], kek["kek_spi"]) == (1, KS, server_kek["kek_spi"])
        assert (tek["spi"], tek["algorithm"]) == (server_tek["spi"], server_tek["suite"])
        assert tek["selectors"] == server_tek["selectors"]
        assert policies[role] == policies["gm1"]
        assert "encryption_key" not in json.dumps(teks[role])
    listed = {m["member"] for m in ks.records("registered-members", group=1)}
    assert listed == {GOOD[r] for r in members}

    # Interface down clears the group and stops registration; up registers again (same IKE SA).
    gm1 = members["gm1"]
    (ike,) = gm1.records("ike-security-associations")
    ip("-n", lab.namespace("gm1"), "link", "set", "dev", "wan", "down")
    wait_for(lambda: registration(gm1)["state"] == "interface down", timeout=10, what="gm1 to notice the link")
    assert gm1.records("ipsec-security-associations") == []
    assert "vpn lan group 1: SAs cleared (interface wan down)" in gm1.log
    ip("-n", lab.namespace("gm1"), "link", "set", "dev", "wan", "up")
    wait_for(lambda: registered(gm1), timeout=10, what="gm1 to register again")
    assert gm1.log.count("vpn lan registered to group 1") == 2
    assert f"interface wan in routing instance {lab.namespace('gm1')} is down" in gm1.log
    assert gm1.records("ike-security-associations") == [ike]

    # kill -9 and restart: the same keys for a new member, the old members still listed.
    ks.kill()
    ks.start()
    newcomer = new_member(lab, "gm4", GOOD["gm4"]).start()
    late = wait_for(lambda: registered(newcomer), timeout=10, what="gm4 to register after the restart")
    assert late["kek_spi"] == server_kek["kek_spi"]
    (late_tek,) = newcomer.records("ipsec-security-associations")
    assert late_tek["spi"] == server_tek["spi"]
    assert {m["member"] for m in ks.records("registered-members", group=1)} == set(GOOD.values())
    assert PSK not in gm1.log and server_kek["kek_spi"] not in ks.log


REFUSALS = {
    # role: (address, member configuration changes, failure, reason the key server or Phase 1 gave)
    "bad-psk": ("198.18.0.21", {"psk": "not-the-key-of-this-group"}, "authentication failed", "pre-shared key differs"),
    "bad-group": (
        "198.18.0.22",
        {"group": 99},
        "refused by the key server",
        f"key server {KS} refused registration to group 99: INVALID_ID_INFORMATION (unknown group 99)",
    ),
    "outsider": (
        OUTSIDER,
        {},
        "refused by the key server",
        f"AUTHENTICATION_FAILED (member {OUTSIDER} not authorized for group 1)",
    ),
    "bad-prop": (
        "198.18.0.24",
        {"proposal": "3des-cbc"},
        "no proposal chosen",
        f"Phase 1: no proposal chosen by {KS} (offered: 3des-sha256-modp2048)",
    ),
    "unpaired": (
        "198.18.0.25",
        {"servers": [ROGUE]},
        "policy rejected",
        f"group 1 policy from key server {ROGUE} rejected: TEK 0000beef carries two unpaired policies "
        "(198.18.110.0/24 -> 198.18.120.0/24; 198.18.110.0/24 -> 198.18.130.0/24)",
    ),
}


def test_every_refusal_is_reported_with_its_precise_reason(lab):
    lab.host("ks", KS)
    lab.host("rogue", ROGUE)
    for role, (address, *_) in REFUSALS.items():
        lab.host(role, address)
    ks = key_server(lab).start()
    rogue(lab)
    members = {role: new_member(lab, role, address, inside=True, **more) for role, (address, more, *_) in REFUSALS.items()}
    for member in members.values():
        member.launch()
    for member in members.values():
        member.ready()
    for role, member in members.items():
        _, _, failure, reason = REFUSALS[role]
        record = wait_for(lambda m=member: failed(m), timeout=15, what=f"{role} to fail")
        assert record["state"] == "waiting to retry" and record["kek_spi"] is None, record
        assert record["last_failure"].startswith(f"{failure}: ") and reason in record["last_failure"], record
        notes = show_json(member, "ipsec", "security-associations")["notes"]
        assert any(reason in note for note in notes), notes
        wait_for(lambda m=member: "registration with key server" in m.log, timeout=5, what=f"{role}'s log line")
        line = next(line for line in member.log.splitlines() if "registration with key server" in line)
        assert f"({failure})" in line and reason in line, line
    unpaired = members["unpaired"].log
    assert " ERROR: " in next(line for line in unpaired.splitlines() if "policy rejected" in line)
    # The key server logged its side of the refusals it made.
    wait_for(lambda: "unknown group 99" in ks.log and f"member {OUTSIDER} not authorized" in ks.log, timeout=5)
    assert ks.records("registered-members") == []
