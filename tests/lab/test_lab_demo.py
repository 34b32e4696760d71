"""``groupvpn lab demo`` end to end in real network namespaces (root, the lab tools and the daemons).

Two members keep it short (two host pairs); the prefix and directory are
unique to the run and teardown removes the lab even when a test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from groupvpn.ops import lab as lab_module
from groupvpn.ops.lab import Lab
from groupvpn.ops.lab_demo import PING_COUNT, TOOLS
from groupvpn.ops.netlab import existing_namespaces

pytestmark = [
    pytest.mark.netns,
    pytest.mark.tshark,
    pytest.mark.skipif(
        os.geteuid() != 0 or None in (shutil.which("ip"), *map(shutil.which, TOOLS)),
        reason=f"needs root, iproute2 and {', '.join(TOOLS)} (`make deps` installs them)",
    ),
    pytest.mark.timeout(180),
]


@pytest.fixture
def lab(tmp_path):
    lab = Lab(f"gvd{os.getpid() % 10000}{uuid.uuid4().hex[:4]}-", members=2)
    try:
        yield lab
    finally:
        lab_module.remove(tmp_path / "lab", lab.prefix)


def demo(lab: Lab, directory, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["lab", "demo", "--dir", str(directory), "--prefix", lab.prefix, "--members", str(lab.members), *extra]
    return subprocess.run(
        [sys.executable, "-m", "groupvpn.cli", *argv], check=False, capture_output=True, text=True, timeout=150
    )


def summary(output: str) -> dict[str, str]:
    """The summary's rows, label -> value."""
    rows = output.split("\nSummary\n", 1)[1].splitlines()
    return dict(re.split(r"\s{2,}", row.strip(), maxsplit=1) for row in rows if row.startswith("  "))


def test_the_demo_refuses_a_lab_already_up_then_replaces_it_shows_the_group_at_work_and_removes_it(lab, tmp_path):
    directory = tmp_path / "lab"
    lab_module.create(directory, lab)  # namespaces only: a lab someone left up
    refused = demo(lab, directory)
    assert refused.returncode == 1 and "a lab is already up" in refused.stderr
    assert "Summary" not in refused.stdout and set(lab.namespaces) <= existing_namespaces()  # left alone

    done = demo(lab, directory, "--replace")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = summary(done.stdout)
    pairs = lab.members * (lab.members - 1)
    esp = 2 * (lab.members - 1) * PING_COUNT * 2  # on gm1's link: h1's pairs both ways, echo and reply
    assert rows["registered members"] == "2 of 2"
    assert rows["data planes running"] == "2 of 2"
    assert rows[f"pings ({PING_COUNT} per host pair)"] == f"{pairs * PING_COUNT} of {pairs * PING_COUNT} replied"
    assert float(re.fullmatch(r"([0-9.]+) Mbit/s", rows["iperf3 h1 -> h2 (3 s TCP)"]).group(1)) > 0
    assert rows["ESP seen"] == f"{esp} packets on the WAN router's link to gm1"
    assert rows["hosts' addresses outside"] == "yes"
    assert rows["tshark decrypt"] == f"ok ({esp} of {esp} ESP packets show the inner ICMP)"
    assert rows["result"] == "ok"
    assert "reveals the lab group's keys" in done.stdout
    for role, view in (("server", "registered-members"), ("member", "ipsec security-associations"),
                       ("member", "ipsec statistics")):  # fmt: skip
        assert f"== groupvpn show security group-vpn {role} {view}" in done.stdout
    assert "lab down: removed" in done.stdout
    assert not existing_namespaces() & set(lab.namespaces)
