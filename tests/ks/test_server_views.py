"""`show security group-vpn server ...` views of a key server core that served real registrations."""

from __future__ import annotations

import json

import pytest

from groupvpn.ks.server import KeyServer, UnknownGroup
from groupvpn.ks.store import KeyState, KeyStore
from groupvpn.ks.views import (
    ipsec_security_associations,
    kek_security_associations,
    registered_members,
    statistics,
)
from test_server import T0, WIDE_KEY, Net, settings


@pytest.fixture
def served(tmp_path):
    """Two members of group 1 (one also of group 2), one refusal, one member whose IKE SA ended."""
    with KeyStore(tmp_path / "ks.db") as store:
        net = Net(KeyServer(settings(), store, T0))
        net.join("198.18.1.2", (1, 2))
        net.join("198.18.1.3", (1,))
        net.join("198.18.2.2", (1,), psk=WIDE_KEY)
        net.deliver()
        for datagram in net.members["198.18.1.3"].phase1.delete(T0).datagrams:
            net.to_server("198.18.1.3", datagram.data)
        yield net.server


def test_registered_members_lists_every_group_or_one(served):
    view = registered_members(served)
    rows = [(r["group"], r["member"], r["state"], r["ike_sa"]) for r in view["records"]]
    assert rows == [
        (1, "198.18.1.2", "active", "up"),
        (1, "198.18.1.3", "active", "down"),
        (2, "198.18.1.2", "active", "up"),
    ]
    assert view["records"][0]["first_registered"] == "2023-11-14 22:13:20 UTC"
    assert view["notes"] == ["3 members in 2 groups"]
    assert [r["member"] for r in registered_members(served, 2)["records"]] == ["198.18.1.2"]
    with pytest.raises(UnknownGroup, match="group 7 is not configured"):
        registered_members(served, 7)


def test_kek_view_shows_keys_only_when_asked(served):
    store = served.store
    (kek,) = store.keks(1, KeyState.ACTIVE)
    view = kek_security_associations(served, T0 + 100, group_id=1)
    (record,) = view["records"]
    assert record["kek_spi"] == kek.spi.hex() and record["state"] == "active"
    assert (record["algorithm"], record["signature"]) == ("AES-128", "ECDSA_256")
    assert (record["lifetime"], record["remaining"], record["push_seq"]) == (3600, 3500, 0)
    assert kek.kek.key.hex() not in json.dumps(view) and "key" not in record
    shown = kek_security_associations(served, T0, group_id=1, show_keys=True)["records"][0]
    assert (shown["key"], shown["iv"]) == (kek.kek.key.hex(), kek.kek.iv.hex())
    assert view["notes"] == ["1 active"]


def test_ipsec_view_shows_selectors_and_keys_only_when_asked(served):
    (tek,) = served.store.teks(2, KeyState.ACTIVE)
    view = ipsec_security_associations(served, T0, group_id=2)
    (record,) = view["records"]
    assert (record["sa"], record["spi"], record["suite"]) == ("sa1", f"0x{tek.spi:08x}", tek.suite.name)
    assert record["selectors"] == ["198.18.10.0/24 -> 198.18.20.0/24", "198.18.20.0/24 -> 198.18.10.0/24"]
    assert tek.keys.encryption.hex() not in json.dumps(view)
    shown = ipsec_security_associations(served, T0, group_id=2, show_keys=True)["records"][0]
    assert (shown["encryption_key"], shown["integrity_key"]) == (tek.keys.encryption.hex(), tek.keys.integrity.hex())
    assert len(ipsec_security_associations(served, T0)["records"]) == 2


def test_statistics_count_registrations_and_refusals_per_group(served):
    view = statistics(served)
    counters = {(r["scope"], r["counter"]): r["value"] for r in view["records"]}
    assert counters[("server", "registrations")] == 3
    assert counters[("server", "refusals: AUTHENTICATION_FAILED")] == 1
    assert counters[("server", "pulls rate limited")] == 0
    assert counters[("group 1", "registrations")] == 2 and counters[("group 2", "registrations")] == 1
    assert counters[("group 1", "refusals: AUTHENTICATION_FAILED")] == 1
    assert view["notes"] == ["2 IKE SAs up, 0 half open, 0 GROUPKEY-PULLs in progress"]
    only = statistics(served, 2)
    assert {r["scope"] for r in only["records"]} == {"group 2"}
