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
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gm"))
from processes import PYTHON, Daemon, groupvpn, ks_conf, member_conf, wait_for  # noqa: E402

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


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Lab:
    """Namespaces on one bridge, and the daemons started in or for them."""

    directory: Path
    tag: str = field(default_factory=lambda: f"gvr{os.getpid() % 100000}{uuid.uuid4().hex[:4]}")
    namespaces: list[str] = field(default_factory=list)
    daemons: list[Daemon] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def namespace(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def _add(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def build(self) -> None:
        self._add(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")

    def host(self, role: str, address: str) -> str:
        """A namespace for ``role`` with interface ``wan`` at ``address`` on the bridge."""
        name = self.namespace(role)
        self._add(name)
        port = f"p-{role}"
        ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "wan", "netns", name)
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip("-n", name, "addr", "add", f"{address}/24", "dev", "wan")
        ip("-n", name, "link", "set", "wan", "up")
        return name

    def ks(self) -> Daemon:
        text = ks_conf(
            listen=KS,
            state_file=self.directory / "ks.db",
            psk=PSK,
            members=[*GOOD.values(), *LISTED],
            others=[OUTSIDER],
        )
        return self._made(Daemon("ks", "ks", self.directory, self.namespace("ks")).write(text))

    def member(self, role: str, address: str, *, inside: bool = False, **changes: Any) -> Daemon:
        """A member for the namespace of ``role``: run inside it, or from here with a routing instance."""
        namespace = self.namespace(role)
        fields: dict[str, Any] = {"servers": [KS], "local": address, "group": 1, "psk": PSK, "interface": "wan"}
        fields["routing_instance"] = None if inside else namespace
        fields.update(changes)
        daemon = Daemon("member", role, self.directory, namespace if inside else None)
        return self._made(daemon.write(member_conf(**fields)))

    def rogue(self) -> None:
        psk_file = self.directory / "rogue.psk"
        psk_file.write_text(PSK)
        command = [PYTHON, str(ROGUE_SCRIPT), "--address", ROGUE, "--psk-file", str(psk_file)]
        self.processes.append(
            subprocess.Popen(["ip", "netns", "exec", self.namespace("rogue"), *command], stderr=subprocess.PIPE)
        )

    def _made(self, daemon: Daemon) -> Daemon:
        self.daemons.append(daemon)
        return daemon

    def teardown(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        for process in self.processes:
            process.kill()
            process.wait(10)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


def registration(member: Daemon) -> dict[str, Any] | None:
    view = member.try_show("kek-security-associations", detail=True)
    return None if view is None else view["records"][0]


def registered(member: Daemon) -> dict[str, Any] | None:
    record = registration(member)
    return record if record is not None and record["state"] == "registered" else None


def failed(member: Daemon) -> dict[str, Any] | None:
    record = registration(member)
    return record if record is not None and record["last_failure"] else None


def show_json(member: Daemon, *words: str) -> dict[str, Any]:
    """`groupvpn show security group-vpn member WORDS --json`, as an operator would run it."""
    result = groupvpn("show", "security", "group-vpn", "member", *words, "--json", "--socket", str(member.socket))
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_members_register_agree_survive_a_key_server_crash_and_follow_their_interface(lab):
    lab.host("ks", KS)
    for role, address in GOOD.items():
        lab.host(role, address)
    ks = lab.ks().start()
    members = {role: lab.member(role, GOOD[role]).launch() for role in ("gm1", "gm2", "gm3")}
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
    newcomer = lab.member("gm4", GOOD["gm4"]).start()
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
    ks = lab.ks().start()
    lab.rogue()
    members = {role: lab.member(role, address, inside=True, **more) for role, (address, more, *_) in REFUSALS.items()}
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
