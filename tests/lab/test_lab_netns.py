"""``groupvpn lab up|status|down`` in real network namespaces (root only).

Each lab gets a prefix unique to this run, so parallel runs and an
operator's own ``gv-`` lab never collide; teardown runs ``down`` even when
a test fails.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from itertools import permutations

import pytest

from groupvpn.ops import lab as lab_module
from groupvpn.ops.lab import Lab, LabError
from groupvpn.ops.netlab import alive, existing_namespaces, routes_out
from groupvpn.runtime.control import call

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("ping") is None,
        reason="needs root, iproute2 and ping (iputils-ping)",
    ),
]

PING_TIMEOUT = 10


def unique_prefix() -> str:
    return f"gvt{os.getpid() % 10000}{uuid.uuid4().hex[:4]}-"


def groupvpn(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "groupvpn.cli", *args], check=False, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def running_lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lab")
    lab = Lab(unique_prefix(), 3)
    try:
        done = groupvpn("lab", "up", "--dir", str(directory), "--prefix", lab.prefix, "--no-daemons")
        assert done.returncode == 0, done.stderr
        yield lab, directory
    finally:
        lab_module.remove(directory, lab.prefix)


def ping_all(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Ping every (namespace, address) pair at once: one echo each, bounded wait."""
    running = {
        (netns, address): subprocess.Popen(
            ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", "1", "-W", "2", address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for netns, address in pairs
    }
    return {pair: process.wait(PING_TIMEOUT) for pair, process in running.items()}


def test_every_host_reaches_every_other_host_in_clear_through_the_wan(running_lab):
    lab, _ = running_lab
    pairs = [(lab.host(a), str(lab.host_address(b).ip)) for a, b in permutations(lab.numbers, 2)]
    pairs += [(lab.gm(n), str(lab.ks_address.ip)) for n in lab.numbers]
    assert ping_all(pairs) == {pair: 0 for pair in pairs}


def test_traffic_between_lans_crosses_the_wan_router(running_lab):
    lab, _ = running_lab
    route = subprocess.run(
        ["ip", "-j", "-n", lab.gm(1), "route", "get", str(lab.host_address(2).ip)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (hop,) = json.loads(route.stdout)
    assert (hop["dev"], hop["gateway"]) == ("wan", "198.18.1.1")


def test_no_lab_namespace_has_a_route_out(running_lab):
    lab, _ = running_lab
    assert {netns: routes_out(netns) for netns in lab.namespaces} == {netns: [] for netns in lab.namespaces}
    # The probe itself works: the lab's own addresses are routable.
    assert routes_out(lab.host(1), (str(lab.host_address(3).ip),)) == [str(lab.host_address(3).ip)]


def test_status_shows_only_veths_between_lab_namespaces(running_lab):
    lab, directory = running_lab
    done = groupvpn("lab", "status", "--dir", str(directory), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["namespaces"] == {netns: True for netns in lab.namespaces}
    links = [i for i in report["interfaces"] if i["ifname"] != "lo"]
    assert {(i["netns"], i["ifname"]) for i in links} == {
        (port.netns, port.ifname) for link in lab.topology().links for port in (link.a, link.b)
    }
    assert all(i["kind"] == "veth" and i["peer"].split("/")[0] in lab.namespaces for i in links)
    wan = {i["ifname"]: (i["addresses"], i["peer"]) for i in links if i["netns"] == lab.wan}
    assert wan["gm2"] == (["198.18.2.1/24"], f"{lab.gm(2)}/wan")
    assert report["routes_out"] == {netns: [] for netns in lab.namespaces}
    assert set(report["daemons"]) == set()  # --no-daemons

    text = io.StringIO()
    lab_module.render_status(report, text)
    assert "8 of 8 namespaces present" in text.getvalue()
    rows = [line.split() for line in text.getvalue().splitlines()]
    assert [lab.host(3), "eth0", "veth", "UP", "198.19.3.2/24", f"{lab.gm(3)}/lan"] in rows
    assert "Routes out of the lab: none" in text.getvalue()


def test_a_second_up_is_refused_and_leaves_the_lab_alone(running_lab, tmp_path):
    lab, directory = running_lab
    again = groupvpn("lab", "up", "--dir", str(directory), "--prefix", lab.prefix, "--no-daemons")
    assert again.returncode == 1
    assert f"a lab is already up in {directory}" in again.stderr
    with pytest.raises(LabError, match="network namespaces already exist"):
        lab_module.create(tmp_path / "other", lab)
    assert set(lab.namespaces) <= existing_namespaces()
    assert (directory / "lab.json").exists()


def test_configurations_are_private_files_in_the_lab_directory(running_lab):
    _, directory = running_lab
    for name in ("ks.conf", "gm1.conf", "gm2.conf", "gm3.conf"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600
    assert "local-address 198.18.3.2;" in (directory / "gm3.conf").read_text()


def test_down_removes_everything_and_is_idempotent(tmp_path):
    lab = Lab(unique_prefix(), 2)
    try:
        lab_module.create(tmp_path, lab)
        # A process left in a namespace must not keep it (and its veths) alive.
        sleeper = subprocess.Popen(["ip", "netns", "exec", lab.wan, "sleep", "60"])
        down = groupvpn("lab", "down", "--dir", str(tmp_path))
        assert down.returncode == 0, down.stderr
        assert "removed 6 namespaces" in down.stdout
        assert sleeper.wait(10) == -signal.SIGTERM
        assert not [netns for netns in existing_namespaces() if netns.startswith(lab.prefix)]
        assert not (tmp_path / "lab.json").exists()
        assert lab_module.remove(tmp_path, lab.prefix) == []
    finally:
        lab_module.remove(tmp_path, lab.prefix)


def test_down_cleans_up_after_a_crashed_up(tmp_path):
    lab = Lab(unique_prefix(), 3)
    state = tmp_path / "lab.json"
    try:
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "groupvpn.cli",
                "lab",
                "up",
                "--dir",
                str(tmp_path),
                "--prefix",
                lab.prefix,
                "--no-daemons",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and up.poll() is None:
            if state.exists() and len(json.loads(state.read_text() or "{}").get("namespaces", [])) >= 2:
                break
            time.sleep(0.001)
        os.killpg(up.pid, signal.SIGKILL)  # the command and any `ip` it was running, as a crash would
        up.wait(10)
        assert [netns for netns in existing_namespaces() if netns.startswith(lab.prefix)]
        assert lab_module.remove(tmp_path)
        assert not [netns for netns in existing_namespaces() if netns.startswith(lab.prefix)]
    finally:
        lab_module.remove(tmp_path, lab.prefix)


def test_down_without_a_state_file_finds_the_lab_by_prefix(tmp_path):
    lab = Lab(unique_prefix(), 1)
    try:
        lab_module.create(tmp_path / "a", lab)
        removed = lab_module.remove(tmp_path / "b", lab.prefix)
        assert sorted(removed) == sorted(lab.namespaces)
    finally:
        lab_module.remove(tmp_path / "a", lab.prefix)


@pytest.mark.skipif(
    not {"ks", "member"} <= lab_module.available_commands(),
    reason="the ks and member daemons are not in this groupvpn yet",
)
def test_up_starts_the_daemons_which_register_and_down_stops_them(tmp_path):
    lab = Lab(unique_prefix(), 2)
    members = {str(lab.member_wan(n).ip) for n in lab.numbers}
    request = {"op": "show", "role": "server", "topic": "registered-members", "show_keys": False}
    try:
        up = groupvpn("lab", "up", "--dir", str(tmp_path), "--prefix", lab.prefix, "--members", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "ks: started\ngm1: started\ngm2: started\n" in up.stdout
        deadline = time.monotonic() + 20
        registered: set[str] = set()
        while registered != members and time.monotonic() < deadline:
            time.sleep(0.1)
            registered = {r["member"] for r in call(tmp_path / "ks.sock", request)["records"]}
        assert registered == members, (tmp_path / "ks.log").read_text()

        report = lab_module.status(tmp_path)
        assert set(report["daemons"]) == {"ks", "gm1", "gm2"}
        assert all(d["running"] and d["socket_present"] for d in report["daemons"].values()), report["daemons"]
        assert report["daemons"]["ks"]["summary"] == "members registered: 2"
        assert report["daemons"]["gm2"]["summary"] == "TEKs installed: 1"
        pids = [pid for d in report["daemons"].values() for pid in d["pids"]]
        lab_module.remove(tmp_path)
        assert not [pid for pid in pids if alive(pid)]
    finally:
        lab_module.remove(tmp_path, lab.prefix)
