"""Operational command parsing, rendering, and the control socket round trip."""

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading

import pytest

from groupvpn.ops.show import parse_words, render
from groupvpn.runtime.control import ControlError, ControlServer, call


def test_words_select_the_longest_matching_command_and_options():
    command, options = parse_words(
        "show", "security group-vpn member ipsec security-associations detail".split()
    )
    assert (command.role, command.topic, options) == ("member", "ipsec-security-associations", {"detail": True})
    command, options = parse_words("show", "security group-vpn server registered-members group 7".split())
    assert (command.role, command.topic, options) == ("server", "registered-members", {"group": 7})
    command, options = parse_words(
        "clear", "security group-vpn server registered-members member 198.18.1.2 method dtd".split()
    )
    assert options == {"member": "198.18.1.2", "method": "dtd"}


@pytest.mark.parametrize(
    "verb, words, message",
    [
        ("show", "security group-vpn member bogus", "unknown command"),
        ("show", "security ipsec member policy", "expected 'security group-vpn'"),
        ("show", "security group-vpn server registered-members group", "'group' needs a value"),
        ("show", "security group-vpn server registered-members group x", "'x' is not a valid group"),
        ("clear", "security group-vpn server registered-members member 1.2.3 method delete", "not a valid member"),
        ("show", "security group-vpn member policy extra", "unexpected 'extra'"),
    ],
)
def test_bad_words_get_a_precise_error(verb, words, message):
    with pytest.raises(ControlError, match=message):
        parse_words(verb, words.split())


def test_render_table_and_detail():
    view = {
        "title": "Group VPN members",
        "records": [{"member": "198.18.1.2", "group": 1, "state": "active"}, {"member": "198.18.2.2", "group": 1}],
        "notes": ["2 members"],
    }
    table = render(view, detail=False).splitlines()
    assert table[0] == "Group VPN members"
    assert table[1].split() == ["Member", "Group", "State"]
    assert table[2].split() == ["198.18.1.2", "1", "active"]
    assert table[3].split() == ["198.18.2.2", "1"]
    assert table[-1] == "2 members"
    detail = render(view, detail=True)
    assert "  Member: 198.18.1.2" in detail and "  State:  active" in detail
    assert "(none)" in render({"title": "x", "records": []}, detail=False)
    counts = {"title": "x", "records": [{"vpn": "lan", "drops": {"no_policy": 3, "unknown_spi": 1}}, {"drops": {}}]}
    assert render(counts, detail=False).splitlines()[2:] == ["lan  no_policy 3, unknown_spi 1", "     -"]


class _Daemon:
    """A control server on its own event loop thread, answering like a daemon."""

    def __init__(self, path):
        self.path = path
        self.requests = []
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, self.handle)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handle(self, request):
        self.requests.append(request)
        if request["topic"] == "policy":
            raise ControlError("no group VPN is configured")
        if request["topic"] == "kek-security-associations":
            raise RuntimeError("bug")
        return {"title": "IKE SAs", "records": [{"remote": "198.18.0.10", "state": "UP"}]}

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_control_socket_round_trip_errors_and_mode(tmp_path):
    path = tmp_path / "run" / "member.sock"
    with _Daemon(path) as daemon:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        view = call(path, {"op": "show", "topic": "ike-security-associations"})
        assert view["records"] == [{"remote": "198.18.0.10", "state": "UP"}]
        with pytest.raises(ControlError, match="no group VPN is configured"):
            call(path, {"op": "show", "topic": "policy"})
        with pytest.raises(ControlError, match="internal error"):
            call(path, {"op": "show", "topic": "kek-security-associations"})
        # the daemon survives a failing handler and garbage
        with pytest.raises(ControlError, match="needs an 'op'"):
            call(path, {"topic": "x"})
        assert call(path, {"op": "show", "topic": "ike-security-associations"})["records"]
        # the real CLI, as an operator runs it
        cli = [sys.executable, "-m", "groupvpn.cli", "show", "security", "group-vpn", "member", "ike",
               "security-associations", "--socket", str(path)]
        out = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[1].split() == ["Remote", "State"]
        out = subprocess.run(cli + ["--json", "--show-keys"], capture_output=True, text=True, timeout=30)
        assert json.loads(out.stdout)["records"][0]["state"] == "UP"
        assert "reveals" in out.stderr or "secret" in out.stderr
        assert daemon.requests[-1]["show_keys"] is True
    assert not path.exists()
    with pytest.raises(ControlError, match="no daemon is listening"):
        call(path, {"op": "show"})
