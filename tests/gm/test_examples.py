"""The example member configurations register with the example key server (both cores in memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
from member_lab import T0, Lab

from groupvpn.gm.member import IkeSaUp, Registered
from groupvpn.ks.server import KeyServer
from groupvpn.ks.store import KeyStore
from groupvpn.runtime import ks_daemon, member_daemon

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KS = ("198.18.0.1", 848)


@pytest.fixture(scope="module")
def key_server(tmp_path_factory):
    config = ks_daemon.load(EXAMPLES / "ks.conf")
    assert config.listen == KS
    with KeyStore(tmp_path_factory.mktemp("ks") / "ks.db") as store:
        yield KeyServer(config.settings, store, T0)


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("member-branch.conf", {"branch-lans": 10}),
        ("member-datacenter.conf", {"replication": 20}),
        ("member-guest.conf", {"guest-lan": 30}),
        ("member-two-groups.conf", {"branch-lans": 10, "replication": 20}),
    ],
)
def test_every_example_member_registers_with_the_example_key_server(key_server, example, expected):
    registered = {}
    for vpns in member_daemon.load(EXAMPLES / example).values():
        lab = Lab.make(list(vpns), {KS: key_server})
        for vpn in vpns:
            for interface in vpn.interfaces:
                lab.link(True, interface=interface)
        registered |= {e.vpn: e.group_id for e in lab.of(Registered)}
        assert all(e.server == KS[0] for e in lab.of(Registered))
        # The key server takes the member's first proposal (the data centre prefers AES-256/SHA-384/ECP-384).
        assert [e.sa.suite for e in lab.of(IkeSaUp)] == [vpns[0].gateway.suites[0]]
    assert registered == expected

