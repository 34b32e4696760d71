"""Rekeying end to end: `groupvpn ks` and three `groupvpn member` processes in lab namespaces.

Topology (every name unique to the run, 198.18.0.0/24, no route out):

    switch namespace: bridge br0 --veth-- ks       198.18.0.1    groupvpn ks (ip netns exec)
                                  --veth-- gm1..3   198.18.0.11-13 groupvpn member, routing-instance = namespace

Group 1's TEK lives 30 s and is rekeyed at 50 % (every 15 s), its KEK
lives 600 s; pushes are retransmitted every 2 s, twice.  One test runs a
push rekey, a pull rekey (a member the key server cannot reach during
the push registers again at 5-7 % of its TEK's lifetime), a forced rekey from
the command line and a key server killed (``--crash-before-push``)
between storing the keys of a rekey and pushing them; the other reloads
a changed GAP (SIGHUP), removes members by both methods and re-authorizes
one.  Every wait is bounded
polling; teardown stops the daemons and deletes the namespaces.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from netns_lab import Lab, failed, ip, registered, server_head, show_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gm"))
from processes import Daemon, groupvpn, member_conf, wait_for  # noqa: E402

from groupvpn.ks.store import KeyState, KeyStore

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
    pytest.mark.timeout(300),
]

PSK = "members-of-group-one-key"
KS = "198.18.0.1"
MEMBERS = {"gm1": "198.18.0.11", "gm2": "198.18.0.12", "gm3": "198.18.0.13"}
GENERATED_TEK = re.compile(r"group 1: generated TEK (0x[0-9a-f]{8}) for SA lan")


def ks_text(lab: Lab, *, tek_lifetime: int, dtd: int | None = None, atd: int | None = None) -> str:
    gap = f"\n                deactivation-time-delay {dtd};" if dtd is not None else ""
    gap += f"\n                activation-time-delay {atd};" if atd is not None else ""
    return server_head(KS, lab.directory / "ks.db", PSK, MEMBERS.values()) + f"""\
            ipsec {{
                proposal short {{
                    authentication-algorithm hmac-sha-256-128;
                    encryption-algorithm aes-128-cbc;
                    lifetime-seconds {tek_lifetime};
                }}
            }}
            group one {{
                group-id 1;
                ike-gateway gms;
                rekey-percentage 50;{gap}
                server-member-communication {{
                    lifetime-seconds 600;
                    retransmission-period 2;
                    number-of-retransmission 2;
                }}
                ipsec-sa lan {{
                    proposal short;
                    match-policy out {{ source 198.18.10.0/24; destination 198.18.20.0/24; }}
                    match-policy back {{ source 198.18.20.0/24; destination 198.18.10.0/24; }}
                }}
            }}
        }}
    }}
}}
"""


def start(lab: Lab, tek_lifetime: int, dtd: int | None = None) -> tuple[Daemon, dict[str, Daemon]]:
    """The key server, then the three members (control plane only), all registered."""
    lab.host("ks", KS)
    for role, address in MEMBERS.items():
        lab.host(role, address)
    ks = lab.ks(ks_text(lab, tek_lifetime=tek_lifetime, dtd=dtd)).start()
    members = {}
    for role, address in MEMBERS.items():
        text = member_conf(
            servers=[KS], local=address, group=1, psk=PSK, interface="wan", routing_instance=lab.namespace(role)
        )
        members[role] = lab.member(role, text, inside=False)
        members[role].extra = ("--no-dataplane",)
        members[role].launch()
    for role, member in members.items():
        member.ready()
        wait_for(lambda m=member: registered(m), timeout=10, what=f"{role} to register")
    return ks, members


def server_keys(ks: Daemon) -> tuple[str, str]:
    """The KEK SPI and TEK SPI the key server serves now."""
    (kek,) = [r["kek_spi"] for r in ks.records("kek-security-associations") if r["state"] == "active"]
    (tek,) = [r["spi"] for r in ks.records("ipsec-security-associations") if r["state"] == "active"]
    return kek, tek


def member_keys(member: Daemon, cli: bool = False) -> tuple[str | None, set[str]]:
    """The KEK SPI and the TEK SPIs a member shows: from its control socket, or ``cli`` as an operator reads them."""
    if cli:
        (kek,) = show_json(member, "kek", "security-associations")["records"]
        teks = show_json(member, "ipsec", "security-associations")["records"]
    else:
        (kek,) = member.records("kek-security-associations")
        teks = member.records("ipsec-security-associations")
    return kek["kek_spi"], {t["spi"] for t in teks}


def everyone_holds(members: dict[str, Daemon], kek: str, tek: str, cli: bool = False) -> bool:
    return all((held := member_keys(m, cli))[0] == kek and tek in held[1] for m in members.values())


def operator(ks: Daemon, verb: str, *words: str) -> Any:
    return groupvpn(verb, "security", "group-vpn", "server", *words, "--socket", str(ks.socket))


def acks(ks: Daemon, kek: str, seq: int) -> set[str]:
    """The members the key server logged as acknowledging push ``seq`` under ``kek``."""
    found = re.findall(rf"group 1: member (\S+) acknowledged push SEQ {seq} under KEK {kek}\b", ks.log)
    return set(found)


def test_push_and_pull_rekeys_a_forced_rekey_and_a_key_server_killed_between_key_and_push(lab):
    ks, members = start(lab, tek_lifetime=30)
    gm3 = members["gm3"]
    # The key server cannot reach gm3 (a blackhole route: nothing waits in a neighbour queue), so gm3
    # misses the first push and its retransmissions while keeping its SAs.
    unreachable = ("-n", lab.namespace("ks"), "route", "add", "blackhole", f"{MEMBERS['gm3']}/32")
    ip(*unreachable)
    assert "push SEQ 1" not in ks.log, "the members took half the TEK's lifetime to register"
    kek0, tek0 = server_keys(ks)
    assert everyone_holds(members, kek0, tek0)
    pushed = f"group 1: push SEQ 1 under KEK {kek0} (new TEKs, scheduled rekey) sent to 3 members ({', '.join(MEMBERS.values())})"
    wait_for(lambda: pushed in ks.log, timeout=20, what="the scheduled push at 50 % of the TEK's lifetime")
    (tek1,) = GENERATED_TEK.findall(ks.log)
    wait_for(lambda: acks(ks, kek0, 1) == {MEMBERS["gm1"], MEMBERS["gm2"]}, timeout=5, what="gm1 and gm2 to ack")
    last_copy = f"retransmission 2 of 2 of push SEQ 1 under KEK {kek0} to 1 member ({MEMBERS['gm3']})"
    wait_for(lambda: last_copy in ks.log, timeout=10, what="the retransmissions to gm3")
    ip(*unreachable[:3], "del", *unreachable[4:])

    # Pull rekey: with no successor to its TEK, gm3 registers again at 5-7 % of its lifetime.
    wait_for(lambda: "group 1: re-registering with GROUPKEY-PULL" in gm3.log, timeout=20, what="gm3's pull rekey")
    wait_for(lambda: tek1 in member_keys(gm3)[1], timeout=5, what="gm3 to hold the TEK the others were pushed")
    assert f"push SEQ 1 under KEK {kek0} from {KS}" not in gm3.log
    for role in ("gm1", "gm2"):
        assert f"group 1: push SEQ 1 under KEK {kek0} from {KS}" in members[role].log

    # The next scheduled push reaches all three; every member acknowledges it and shows its TEK.
    wait_for(lambda: acks(ks, kek0, 2) == set(MEMBERS.values()), timeout=20, what="every ack of push SEQ 2")
    tek2 = GENERATED_TEK.findall(ks.log)[1]
    wait_for(lambda: everyone_holds(members, kek0, tek2), timeout=5, what="every member to show push SEQ 2's TEK")
    assert everyone_holds(members, kek0, tek2, cli=True)  # `show ... --json`, as an operator reads it
    rows = ks.records("registered-members", group=1)
    assert {r["member"] for r in rows if r["state"] == "active" and r["last_ack_seq"] >= 2} == set(MEMBERS.values())

    # Forced rekey from the command line: a new KEK under the old one, then new TEKs under the new KEK.
    forced = operator(ks, "request", "rekey", "group", "1")
    assert forced.returncode == 0, forced.stderr
    kek1, tek3 = server_keys(ks)
    assert kek1 != kek0 and f"push SEQ 1 under KEK {kek1} (new TEKs, rekey requested by the administrator)" in forced.stdout
    wait_for(lambda: everyone_holds(members, kek1, tek3), timeout=5, what="every member to hold the forced keys")
    wait_for(lambda: acks(ks, kek1, 1) == set(MEMBERS.values()), timeout=5, what="every ack under the new KEK")

    # Killed after the keys of a rekey are stored and its SEQ claimed, before the push leaves.
    ks.stop()
    ks.extra = ("--crash-before-push",)
    ks.start()
    died = operator(ks, "request", "rekey", "group", "1")
    assert died.returncode == 1 and ks.process is not None and ks.process.wait(10) == -signal.SIGKILL
    with KeyStore(lab.directory / "ks.db") as store:
        (pending_kek,) = store.keks(1, KeyState.PENDING)
        (pending_tek,) = store.teks(1, KeyState.PENDING)
        claimed = store.last_push_seq(bytes.fromhex(kek1))
    kek2, tek4 = pending_kek.spi.hex(), f"0x{pending_tek.spi:08x}"
    assert f"test hook: push SEQ {claimed} under KEK {kek1} claimed" in ks.log
    ks.extra = ()
    ks.start()
    wait_for(lambda: everyone_holds(members, kek2, tek4), timeout=10, what="the members to accept the recovered keys")
    restarted = ks.log.rsplit("key server on UDP", 1)[1]
    assert f"KEK {kek2} was generated before a restart and never pushed; pushing it now" in restarted
    assert f"push SEQ {claimed + 1} under KEK {kek1} (new KEK, scheduled rekey)" in restarted
    for member in members.values():
        assert f"group 1: push SEQ {claimed + 1} under KEK {kek1} from {KS}" in member.log
        assert f"push SEQ {claimed} under KEK {kek1} from" not in member.log  # it never left
    wait_for(lambda: acks(ks, kek2, 1) == set(MEMBERS.values()), timeout=5, what="every ack of the recovered TEKs")
    assert PSK not in ks.log and all(PSK not in m.log for m in members.values())


def test_a_reload_pushes_the_gap_and_removal_by_delete_and_by_dtd_is_refused_until_reauthorized(lab):
    ks, members = start(lab, tek_lifetime=600, dtd=20)
    gm1, gm2, gm3 = members["gm1"], members["gm2"], members["gm3"]
    kek0, tek0 = server_keys(ks)

    # SIGHUP with new activation and deactivation delays: one push restates the SA with the new GAP.
    ks.write(ks_text(lab, tek_lifetime=600, dtd=25, atd=2))
    ks.signal(signal.SIGHUP)
    update = f"group 1: push SEQ 1 under KEK {kek0} (policy update, configuration changed) sent to 3 members"
    wait_for(lambda: update in ks.log, timeout=10, what="the reload's push")
    for role, member in members.items():
        applied = f"group 1: push SEQ 1 under KEK {kek0} from {KS}: "
        line = wait_for(lambda m=member: next((x for x in m.log.splitlines() if applied in x), None), timeout=5, what=role)
        assert "GAP ATD 2 s, DTD 25 s" in line, line
    assert server_keys(ks) == (kek0, tek0)  # same keys, new policy

    # Delete: gm3 drops its SAs at once, tries to register again and is refused with the reason.
    removed = operator(ks, "clear", "registered-members", "member", MEMBERS["gm3"], "method", "delete")
    assert removed.returncode == 0, removed.stderr
    assert f"group 1: member {MEMBERS['gm3']} removed by the administrator (method delete)" in removed.stdout
    reason = f"member {MEMBERS['gm3']} was removed from group 1 by the administrator"
    record = wait_for(lambda: (r := failed(gm3)) and reason in r["last_failure"] and r, timeout=10, what="gm3's refusal")
    assert record["kek_spi"] is None and show_json(gm3, "ipsec", "security-associations")["records"] == []
    assert any(reason in note for note in show_json(gm3, "ipsec", "security-associations")["notes"])
    assert "removed from group 1 by the key server" in gm3.log and reason in gm3.log
    kek1, tek1 = server_keys(ks)
    assert kek1 != kek0 and tek1 != tek0
    wait_for(lambda: everyone_holds({"gm1": gm1, "gm2": gm2}, kek1, tek1), timeout=5, what="the others' new keys")
    assert tek1 not in member_keys(gm3)[1]

    # DTD: gm2 keeps only its old SAs, for 5 s (the group's DTD is 20 s), then is refused too.
    dtd = operator(ks, "clear", "registered-members", "member", MEMBERS["gm2"], "group", "1", "method", "dtd")
    assert dtd.returncode == 0, dtd.stderr
    reason2 = f"member {MEMBERS['gm2']} was removed from group 1 by the administrator"
    wait_for(lambda: (r := failed(gm2)) and reason2 in r["last_failure"], timeout=15, what="gm2's refusal")
    assert show_json(gm2, "ipsec", "security-associations")["records"] == []
    assert "to be deleted in 5 s (DTD)" in gm2.log and reason2 in gm2.log
    kek2, tek2 = server_keys(ks)
    wait_for(lambda: everyone_holds({"gm1": gm1}, kek2, tek2), timeout=5, what="gm1's newest keys")
    rows = {r["member"]: r for r in ks.records("registered-members", group=1)}
    assert (rows[MEMBERS["gm2"]]["state"], rows[MEMBERS["gm2"]]["reason"]) == (
        "removed",
        "removed by the administrator (method dtd)",
    )
    assert rows[MEMBERS["gm3"]]["reason"] == "removed by the administrator (method delete)"
    assert f"refused member {MEMBERS['gm3']} for group 1: {reason}" in ks.log

    # Re-authorized, gm3 registers again (at once after a clear) and holds the current keys.
    back = operator(ks, "request", "reauthorize", "member", MEMBERS["gm3"], "group", "1")
    assert back.returncode == 0 and f"member {MEMBERS['gm3']} re-authorized" in back.stdout, back.stderr
    cleared = groupvpn("clear", "security", "group-vpn", "member", "ipsec", "security-associations", "--socket", str(gm3.socket))
    assert cleared.returncode == 0, cleared.stderr
    wait_for(lambda: registered(gm3), timeout=15, what="gm3 to register again")
    assert everyone_holds({"gm1": gm1, "gm3": gm3}, kek2, tek2)
    assert failed(gm2) is not None  # still refused
