"""`groupvpn ks` as a real process on loopback: registration, show, kill -9 and restart, refusals, signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from groupvpn.gdoi import RegistrationComplete, RegistrationFailed
from groupvpn.ike import FailureReason, PreSharedKey
from groupvpn.ks.store import KeyState, KeyStore
from groupvpn.runtime.control import ControlError, call
from member_client import TestMember, register_over_udp

KS_HOST = "127.0.0.1"
GM_KEY = "members-of-group-one-key"
WIDE_KEY = "the-group-wide-pre-shared-key"
GROUP_TWO = """
            group g2 {
                group-id 2;
                ike-gateway [ gm anyone ];
                ipsec-sa sa1 {
                    proposal aes128-sha256;
                    match-policy lan { source 198.18.30.0/24; destination 198.18.40.0/24; }
                }
            }"""


def config_text(port: int, extra_groups: str = "") -> str:
    return f"""\
security {{
    group-vpn {{
        server {{
            listen-address {KS_HOST};
            port {port};
            ike {{
                proposal p1 {{
                    authentication-method pre-shared-keys;
                    authentication-algorithm sha-256;
                    dh-group group14;
                    encryption-algorithm aes-128-cbc;
                }}
                policy gms {{ mode main; proposals p1; pre-shared-key ascii-text "{GM_KEY}"; }}
                policy wide {{ mode main; proposals p1; pre-shared-key ascii-text "{WIDE_KEY}"; }}
                gateway gm {{ ike-policy gms; address [ 127.0.0.2 127.0.0.3 ]; }}
                gateway anyone {{ ike-policy wide; any-address; }}
            }}
            ipsec {{
                proposal aes128-sha256 {{
                    authentication-algorithm hmac-sha-256-128;
                    encryption-algorithm aes-128-cbc;
                    lifetime-seconds 3600;
                }}
            }}
            group g1 {{
                group-id 1;
                ike-gateway gm;
                anti-replay-time-window 10;
                ipsec-sa sa1 {{
                    proposal aes128-sha256;
                    match-policy out {{ source 198.18.10.0/24; destination 198.18.20.0/24; }}
                    match-policy back {{ source 198.18.20.0/24; destination 198.18.10.0/24; }}
                }}
            }}{extra_groups}
        }}
    }}
}}
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((KS_HOST, 0))
        return probe.getsockname()[1]


def groupvpn(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "groupvpn.cli", *args], capture_output=True, text=True, timeout=timeout)


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``condition`` until it returns something true, for at most ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class KsProcess:
    """One `groupvpn ks --foreground` run over a state directory that outlives it."""

    directory: Path
    port: int = field(default_factory=free_udp_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.directory / "ks.conf"

    @property
    def socket(self) -> Path:
        return self.directory / "ks.sock"

    @property
    def log(self) -> Path:
        return self.directory / "ks.log"

    @property
    def server(self) -> tuple[str, int]:
        return KS_HOST, self.port

    def write(self, extra_groups: str = "") -> KsProcess:
        self.config.write_text(config_text(self.port, extra_groups))
        return self

    def start(self, *extra: str) -> KsProcess:
        command = [sys.executable, "-m", "groupvpn.cli", "ks", "--config", str(self.config), "--foreground", *extra]
        command += ["--state-dir", str(self.directory / "state"), "--socket", str(self.socket), "--log-file", str(self.log)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._answers, what="the key server's control socket")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"groupvpn ks exited {self.process.returncode}: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            self.show("statistics")
        except ControlError:
            return False
        return True

    def show(self, *words: str, keys: bool = False) -> dict:  # type: ignore[type-arg]
        topic = "-".join(words)
        return call(self.socket, {"op": "show", "role": "server", "topic": topic, "show_keys": keys})

    def lines(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def kill(self, signum: int = signal.SIGKILL) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(timeout=20)
        self.process.stderr.close()  # type: ignore[union-attr]
        return code


@pytest.fixture
def ks(tmp_path) -> Iterator[KsProcess]:
    server = KsProcess(tmp_path).write()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()


def member(ks: KsProcess, host: str, groups: tuple[int, ...], key: str = GM_KEY, **kw: object) -> TestMember:
    return register_over_udp(TestMember((host, 0), ks.server, PreSharedKey(key.encode()), groups, **kw))  # type: ignore[arg-type]


def test_registration_survives_kill_9_and_a_new_member_gets_the_same_keys(ks):
    ks.start()
    first = member(ks, "127.0.0.2", (1,))
    before = first.results[1]
    assert isinstance(before, RegistrationComplete), before
    shown = groupvpn("show", "security", "group-vpn", "server", "registered-members", "--json", "--socket", str(ks.socket))
    assert shown.returncode == 0, shown.stderr
    assert [(r["group"], r["member"], r["ike_sa"]) for r in json.loads(shown.stdout)["records"]] == [(1, "127.0.0.2", "up")]
    assert "member 127.0.0.2 registered to group 1" in ks.lines()

    assert ks.kill() == -signal.SIGKILL
    ks.start()
    second = member(ks, "127.0.0.3", (1,))
    after = second.results[1]
    assert isinstance(after, RegistrationComplete), after
    assert after.policy.kek.spi == before.policy.kek.spi  # type: ignore[union-attr]
    assert [t.spi for t in after.policy.teks] == [t.spi for t in before.policy.teks]
    assert (after.policy.kek_keys, after.policy.tek_keys) == (before.policy.kek_keys, before.policy.tek_keys)
    members = ks.show("registered", "members")["records"]
    assert [(r["member"], r["ike_sa"]) for r in members] == [("127.0.0.2", "down"), ("127.0.0.3", "up")]


def test_keys_are_shown_only_when_asked(ks):
    ks.start()
    registered = member(ks, "127.0.0.2", (1,)).results[1]
    assert isinstance(registered, RegistrationComplete)
    key = registered.policy.tek_keys[0].material.encryption.hex()
    words = ["show", "security", "group-vpn", "server", "ipsec", "security-associations", "--json", "--socket", str(ks.socket)]
    hidden = groupvpn(*words)
    assert hidden.returncode == 0 and key not in hidden.stdout and "encryption_key" not in hidden.stdout
    shown = groupvpn(*words, "--show-keys")
    assert json.loads(shown.stdout)["records"][0]["encryption_key"] == key
    assert "--show-keys prints secret key material" in shown.stderr
    assert key not in ks.lines()


def test_every_refusal_has_its_reason_in_the_log_and_the_statistics(ks):
    ks.write(GROUP_TWO).start()
    wrong = member(ks, "127.0.0.2", (1,), key="not-the-key-anybody-configured")
    assert wrong.ike_failure is not None and wrong.ike_failure.reason is FailureReason.AUTHENTICATION_FAILED
    unknown = member(ks, "127.0.0.2", (99,))
    assert isinstance(unknown.results[99], RegistrationFailed) and "unknown group 99" in unknown.results[99].reason
    outsider = member(ks, "127.0.0.4", (1, 2), key=WIDE_KEY)
    assert "member 127.0.0.4 not authorized for group 1" in outsider.results[1].reason  # type: ignore[union-attr]
    assert isinstance(outsider.results[2], RegistrationComplete)
    proposal = member(ks, "127.0.0.3", (1,), suites=("3des-sha1-modp1024",))
    assert proposal.ike_failure is not None and proposal.ike_failure.reason is FailureReason.NO_PROPOSAL_CHOSEN

    log = wait_for(lambda: (text := ks.lines()).count("127.0.0.3") and text, what="the last refusal in the log")
    assert "Phase 1 with 127.0.0.2 failed: authentication failed:" in log
    assert "refused member 127.0.0.2 for group 99: unknown group 99" in log
    assert "refused member 127.0.0.4 for group 1: member 127.0.0.4 not authorized for group 1" in log
    assert "member 127.0.0.4 registered to group 2" in log
    assert "Phase 1 with 127.0.0.3 failed: no proposal chosen" in log
    assert GM_KEY not in log and WIDE_KEY not in log
    counters = {(r["scope"], r["counter"]): r["value"] for r in ks.show("statistics")["records"]}
    assert counters[("server", "refusals: INVALID_ID_INFORMATION")] == 1
    assert counters[("server", "refusals: AUTHENTICATION_FAILED")] == 1
    assert counters[("group 1", "refusals: AUTHENTICATION_FAILED")] == 1
    assert counters[("group 2", "registrations")] == 1


def test_an_invalid_configuration_is_refused_with_lines_and_columns(tmp_path):
    bad = tmp_path / "bad.conf"
    text = config_text(free_udp_port()).replace("group-id 1;", "group-id x;").replace("ike-gateway gm;", "ike-gateway nope;")
    bad.write_text(text)

    def at(word: str) -> str:
        (line,) = [n for n, line in enumerate(text.splitlines(), 1) if word in line]
        return f"line {line}, column {text.splitlines()[line - 1].index(word) + 1}"

    result = groupvpn("ks", "--config", str(bad), "--foreground", "--socket", str(tmp_path / "s"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}: {at('x;')}: invalid value 'x' for 'group-id' (expected a number from 1 to 4294967295)",
        f"{bad}: {at('nope')}: undefined ike gateway 'nope' (defined: gm, anyone)",
    ]
    assert not (tmp_path / "s").exists()


def test_sigterm_stops_cleanly_and_sighup_reloads(ks):
    ks.start()
    ks.write(GROUP_TWO)
    ks.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded: groups 1, 2" in ks.lines(), what="the reload")
    assert isinstance(member(ks, "127.0.0.2", (2,)).results[2], RegistrationComplete)
    ks.config.write_text("security { group-vpn { server { bogus; } } }")
    ks.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "still serving the previous configuration" in ks.lines(), what="the refused reload")
    scopes = [r["scope"] for r in ks.show("statistics")["records"] if r["counter"] == "registrations"]
    assert scopes == ["server", "group 1", "group 2"]
    assert ks.kill(signal.SIGTERM) == 0
    assert "ks stopping" in ks.lines() and not ks.socket.exists()


def test_detached_start_returns_once_serving(ks):
    started = groupvpn(
        "ks", "--config", str(ks.config), "--state-dir", str(ks.directory / "state"),
        "--socket", str(ks.socket), "--log-file", str(ks.log),
    )
    assert started.returncode == 0, started.stderr
    pid = int(wait_for(lambda: _pid(ks.lines()), what="the daemon's pid in its log"))
    try:
        assert ks.show("statistics")["title"] == "Group VPN server statistics"
        again = groupvpn(
            "ks", "--config", str(ks.config), "--state-dir", str(ks.directory / "state2"),
            "--socket", str(ks.directory / "other.sock"), "--log-file", str(ks.directory / "other.log"),
        )
        assert again.returncode == 1
        assert f"cannot listen on UDP {KS_HOST} port {ks.port}: Address already in use" in again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "ks stopping" in ks.lines(), what="the daemon to stop")


def _pid(log: str) -> str | None:
    marker = "ks running (pid "
    if marker not in log:
        return None
    return log.split(marker, 1)[1].split(")", 1)[0]


def operator(ks: KsProcess, verb: str, *words: str) -> subprocess.CompletedProcess[str]:
    """`groupvpn VERB security group-vpn server WORDS` against ``ks``."""
    return groupvpn(verb, "security", "group-vpn", "server", *words, "--socket", str(ks.socket))


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} groupvpn\.ks\[\d+\] (INFO|WARNING): (.*)$")


def test_rekey_removal_and_reauthorization_from_the_command_line(ks):
    ks.start()
    assert isinstance(member(ks, "127.0.0.2", (1,)).results[1], RegistrationComplete)
    (kek,) = ks.show("kek", "security-associations")["records"]

    rekeyed = operator(ks, "request", "rekey", "group", "1")
    assert rekeyed.returncode == 0, rekeyed.stderr
    assert rekeyed.stdout.startswith("Group VPN server rekey of group 1\n")
    assert f"group 1: push SEQ 1 under KEK {kek['kek_spi']} (new KEK, rekey requested by the administrator) " \
        "sent to 1 member (127.0.0.2)" in rekeyed.stdout
    states = {r["kek_spi"]: r["state"] for r in ks.show("kek", "security-associations")["records"]}
    assert states[kek["kek_spi"]] == "retired" and list(states.values()).count("active") == 1
    for words, error in (
        (("rekey", "group", "9"), "error: group 9 is not configured on this key server"),
        (("rekey",), "error: name the group: request security group-vpn server rekey group N"),
    ):
        refused = operator(ks, "request", *words)
        assert (refused.returncode, refused.stderr.strip()) == (1, error)

    removed = operator(ks, "clear", "registered-members", "member", "127.0.0.2", "method", "dtd")
    assert removed.returncode == 0, removed.stderr
    assert "group 1: member 127.0.0.2 removed by the administrator (method dtd)" in removed.stdout
    (record,) = ks.show("registered", "members")["records"]
    assert (record["state"], record["reason"]) == ("removed", "removed by the administrator (method dtd)")
    again = member(ks, "127.0.0.2", (1,)).results[1]
    assert isinstance(again, RegistrationFailed) and "member 127.0.0.2 was removed from group 1" in again.reason
    unknown = operator(ks, "clear", "registered-members", "member", "127.0.0.9")
    assert (unknown.returncode, unknown.stderr.strip()) == (1, "error: 127.0.0.9 is not a member of any group")

    back = operator(ks, "request", "reauthorize", "member", "127.0.0.2", "group", "1")
    assert back.returncode == 0 and "group 1: member 127.0.0.2 re-authorized" in back.stdout, back.stderr
    assert isinstance(member(ks, "127.0.0.2", (1,)).results[1], RegistrationComplete)

    # One timestamped line per step of each rekey, in the order they happened.
    lines = [m.group(2) for m in map(LOG_LINE.match, ks.lines().splitlines()) if m and m.group(2).startswith("group 1: ")]
    assert [line.split(" ")[2] for line in lines[:5]] == ["generated", "generated", "push", "now", "push"]
    assert "group 1: member 127.0.0.2 removed by the administrator (method dtd); " \
        "its registrations are refused until it is re-authorized" in lines


def test_a_key_server_killed_before_its_push_sends_the_same_keys_with_a_higher_seq(ks):
    ks.start("--crash-before-push")
    assert isinstance(member(ks, "127.0.0.2", (1,)).results[1], RegistrationComplete)
    (kek,) = ks.show("kek", "security-associations")["records"]
    died = operator(ks, "request", "rekey", "group", "1")
    assert died.returncode == 1 and ks.process.wait(timeout=20) == -signal.SIGKILL
    assert f"test hook: push SEQ 1 under KEK {kek['kek_spi']} claimed; killing the key server" in ks.lines()
    ks.process.stderr.close()  # type: ignore[union-attr]
    with KeyStore(ks.directory / "state" / "ks.db") as store:  # what the dead server left
        (pending,) = store.keks(1, KeyState.PENDING)
        assert store.last_push_seq(bytes.fromhex(kek["kek_spi"])) == 1

    ks.start()
    wait_for(lambda: "push SEQ 1 under KEK" in ks.lines().split("key server on UDP")[-1], what="the recovered pushes")
    after = ks.lines().split("key server on UDP")[-1]
    assert f"KEK {pending.spi.hex()} was generated before a restart and never pushed; pushing it now" in after
    assert f"push SEQ 2 under KEK {kek['kek_spi']} (new KEK, scheduled rekey)" in after  # due since made
    assert f"push SEQ 1 under KEK {pending.spi.hex()} (new TEKs" in after
    states = {r["kek_spi"]: (r["state"], r["push_seq"]) for r in ks.show("kek", "security-associations")["records"]}
    assert states[kek["kek_spi"]] == ("retired", 2) and states[pending.spi.hex()] == ("active", 1)
