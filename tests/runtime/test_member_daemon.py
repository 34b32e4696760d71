"""`groupvpn member` as a real process against a real `groupvpn ks` on loopback addresses.

Each test takes its own 127.x.y.0/24 addresses (the member listens on port
848, so it needs root) and watches ``lo``, which is always up; interface
changes and namespaces are in tests/system/test_registration.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gm"))
from processes import Daemon, groupvpn, ks_conf, member_conf, wait_for  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the member listens on UDP 848: needs root")

PSK = "members-of-group-one-key"


@dataclass
class Loopback:
    """A key server at .1 and a member address .2 (listed for group 1) in one 127.x.y.0/24."""

    directory: Path
    prefix: str
    port: int
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def ks_address(self) -> str:
        return f"{self.prefix}.1"

    def address(self, host: int) -> str:
        return f"{self.prefix}.{host}"

    def ks(self) -> Daemon:
        text = ks_conf(
            listen=self.ks_address,
            port=self.port,
            state_file=self.directory / "ks.db",
            psk=PSK,
            members=[self.address(2)],
            others=[self.address(9)],
        )
        return self._made(Daemon("ks", "ks", self.directory).write(text))

    def member_text(self, host: int = 2, **changes: object) -> str:
        fields: dict[str, object] = {
            "servers": [self.ks_address],
            "local": self.address(host),
            "group": 1,
            "psk": PSK,
            "interface": "lo",
            "server_port": self.port,
        }
        fields.update(changes)
        return member_conf(**fields)  # type: ignore[arg-type]

    def member(self, name: str = "gm", host: int = 2, **changes: object) -> Daemon:
        return self._made(Daemon("member", name, self.directory).write(self.member_text(host, **changes)))

    def _made(self, daemon: Daemon) -> Daemon:
        self.daemons.append(daemon)
        return daemon


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.fixture
def net(tmp_path):
    prefix = f"127.{random.randrange(1, 255)}.{random.randrange(0, 255)}"
    lab = Loopback(tmp_path, prefix, free_port(f"{prefix}.1"))
    try:
        yield lab
    finally:
        for daemon in lab.daemons:
            daemon.stop()


def registered(member: Daemon, vpn: str = "lan") -> dict | None:  # type: ignore[type-arg]
    view = member.try_show("kek-security-associations", detail=True)
    if view is None:
        return None
    (record,) = [r for r in view["records"] if r["vpn"] == vpn]
    return record if record["state"] == "registered" else None


def test_registers_and_shows_what_the_key_server_serves(net):
    ks = net.ks().start()
    member = net.member().start()
    kek = wait_for(lambda: registered(member), what="registration")
    (server_kek,) = ks.records("kek-security-associations", group=1)
    assert kek["kek_spi"] == server_kek["kek_spi"] and kek["server"] == net.ks_address
    (tek,) = member.records("ipsec-security-associations", detail=True)
    (server_tek,) = ks.records("ipsec-security-associations", group=1)
    assert tek["spi"] == server_tek["spi"] and tek["algorithm"] == server_tek["suite"]
    assert tek["selectors"] == ["198.18.10.0/24 -> 198.18.20.0/24", "198.18.20.0/24 -> 198.18.10.0/24"]
    assert [m["member"] for m in ks.records("registered-members")] == [net.address(2)]
    # The operator's command line, and keys only when asked for.
    words = ["security", "group-vpn", "member", "ipsec", "security-associations", "--socket", str(member.socket)]
    shown = groupvpn("show", *words, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["records"][0]["spi"] == tek["spi"] and "encryption_key" not in shown.stdout
    keyed = groupvpn("show", *words, "--json", "--show-keys")
    assert json.loads(keyed.stdout)["records"][0]["encryption_key"]
    text = groupvpn("show", *words[:3], "ike", "security-associations", "--socket", str(member.socket))
    assert "UP" in text.stdout and net.ks_address in text.stdout
    assert f"vpn lan registered to group 1 with key server {net.ks_address}: KEK {kek['kek_spi']}" in member.log
    assert PSK not in member.log and kek["kek_spi"] not in ks.log


def test_an_invalid_configuration_is_refused_with_every_position(net):
    member = net.member()
    text = net.member_text().replace("group 1;", "group one;").replace("ike-gateway kss;", "ike-gateway nowhere;")
    member.write(text)
    result = groupvpn("member", "--config", str(member.config), "--socket", str(member.socket), "--foreground")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(f"{member.config}: line " in line and ", column " in line for line in lines)
    assert "undefined ike gateway 'nowhere'" in result.stderr and "invalid value 'one' for 'group'" in result.stderr


def test_a_refusal_shows_its_reason(net):
    net.ks().start()
    member = net.member(psk="not-the-key-of-this-group").start()
    record = wait_for(
        lambda: (r := member.records("kek-security-associations", detail=True)[0])["last_failure"] and r,
        what="the first failed attempt",
    )
    assert record["state"] == "waiting to retry"
    assert record["last_failure"].startswith("authentication failed: Phase 1: authentication failed")
    notes = member.show("ipsec-security-associations")["notes"]
    assert any("authentication failed" in note for note in notes)
    wait_for(lambda: "registration with key server" in member.log, what="the failure's log line")
    assert "(authentication failed)" in member.log and "next attempt in 10 s" in member.log


def test_clear_registers_again_over_the_same_ike_sa(net):
    net.ks().start()
    member = net.member().start()
    wait_for(lambda: registered(member))
    (ike,) = member.records("ike-security-associations")
    words = ["security", "group-vpn", "member", "ipsec", "security-associations", "--socket", str(member.socket)]
    cleared = groupvpn("clear", *words)
    assert cleared.returncode == 0 and "SAs cleared, registering again: vpn lan" in cleared.stdout
    wait_for(lambda: member.log.count("vpn lan registered to group 1") == 2, what="the second registration")
    assert "SAs cleared (cleared by the operator; registering again)" in member.log
    assert member.records("ike-security-associations") == [ike]  # no new Phase 1


def test_reload_of_a_changed_vpn_reregisters_and_a_bad_file_is_refused(net):
    net.ks().start()
    member = net.member().start()
    wait_for(lambda: registered(member))
    (ike,) = member.records("ike-security-associations")
    member.write(net.member_text(df_bit="copy"))
    reloaded = groupvpn("member", "reload", "--socket", str(member.socket))
    assert reloaded.returncode == 0 and "configuration reloaded: vpn lan" in reloaded.stdout
    wait_for(lambda: member.log.count("vpn lan registered to group 1") == 2, what="re-registration")
    assert "SAs cleared (configuration changed)" in member.log
    (again,) = wait_for(lambda: member.records("ike-security-associations"))
    assert again["initiator_cookie"] != ike["initiator_cookie"]  # a fresh Phase 1, as the seed says
    member.write(net.member_text().replace("group 1;", "group 0;"))
    refused = groupvpn("member", "reload", "--socket", str(member.socket))
    assert refused.returncode == 1
    assert "the running configuration stays" in refused.stderr and "line " in refused.stderr
    assert registered(member) is not None


def test_sighup_reloads_and_sigterm_deletes_the_ike_sa(net):
    ks = net.ks().start()
    member = net.member().start()
    wait_for(lambda: registered(member))
    member.write(net.member_text(df_bit="set"))
    member.signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded: vpn lan" in member.log, what="the SIGHUP reload")
    wait_for(lambda: member.log.count("vpn lan registered to group 1") == 2, what="re-registration")
    assert member.stop() == 0
    assert "IKE SA with key server" in member.log and "ended: deleted locally" in member.log
    wait_for(lambda: f"IKE SA with {net.address(2)} ended: deleted by the peer" in ks.log, what="the delete")
