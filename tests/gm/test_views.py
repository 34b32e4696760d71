"""`show security group-vpn member ...` views over member cores in memory."""

from __future__ import annotations

import json

import pytest
from member_lab import KS1, KS2, WRONG_KEY, Lab, gateway, key_server, vpn

from groupvpn.gm import views
from groupvpn.gm.member import VpnSettings
from groupvpn.gm.views import MemberState, UnknownGroup
from groupvpn.ks.store import KeyState, KeyStore

WALL = 1_000_000.0  # the cores' clock reads T0 when Unix time is T0 + WALL


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "ks.db") as s:
        yield s


@pytest.fixture
def lab(store):
    bad = vpn("bad", 2, gateway((KS2,), psk=WRONG_KEY, name="bad"), "eth2")
    lab = Lab.make([vpn("lan", 1), bad], {KS1: key_server(store), KS2: key_server(store, KS2)})
    lab.link(True)
    return lab


def state(lab: Lab) -> MemberState:
    return MemberState((lab.member,), lab.sadb, lab.now, WALL)


def test_ike_security_associations(lab):
    view = views.ike_security_associations(state(lab))
    (record,) = view["records"]
    sa = lab.member.connections[KS1].phase1.sa
    assert sa is not None
    assert record == {
        "remote_address": KS1[0],
        "state": "UP",
        "initiator_cookie": sa.icookie.hex(),
        "responder_cookie": sa.rcookie.hex(),
        "mode": "Main",
    }
    assert view["notes"] == ["1 IKE SA up", "vpn bad group 2: interface down"]
    (detail,) = views.ike_security_associations(state(lab), detail=True)["records"]
    assert detail["local_address"] == "198.18.1.2" and detail["suite"] == "aes128-sha256-modp2048"
    assert (detail["local_identity"], detail["remote_identity"]) == ("ID_IPV4_ADDR 198.18.1.2", f"ID_IPV4_ADDR {KS1[0]}")
    assert detail["remaining"] == 86400 and detail["established"] == "2023-11-26 12:00:00 UTC"
    assert (detail["registering"], detail["waiting"]) == (None, [])


def test_kek_security_associations_list_every_vpn_with_its_registration(lab, store):
    (kek,) = store.keks(1, KeyState.ACTIVE)
    view = views.kek_security_associations(state(lab))
    assert view["records"] == [
        {
            "vpn": "bad",
            "group": 2,
            "server": KS2[0],
            "state": "interface down",
            "kek_spi": None,
            "remaining": None,
            "push_seq": None,
        },
        {
            "vpn": "lan",
            "group": 1,
            "server": KS1[0],
            "state": "registered",
            "kek_spi": kek.spi.hex(),
            "remaining": 3600,
            "push_seq": 0,
        },
    ]
    detail = views.kek_security_associations(state(lab), group_id=1, detail=True)["records"][0]
    assert detail["algorithm"] == "AES-128" and detail["signature"] == "ECDSA_256"
    assert detail["push_destination"] == "198.18.1.2 port 848"  # unicast pushes come to our address
    assert detail["registered"] == "2023-11-26 12:00:00 UTC" and detail["last_failure"] is None
    assert "kek_key" not in json.dumps(view)


def test_a_refused_vpn_shows_why_in_every_view(lab):
    lab.link(True, interface="eth2")
    failure = lab.member.registrations["bad"].last_failure
    assert failure is not None and "pre-shared key differs" in failure.reason
    note = f"vpn bad group 2: waiting to retry; last attempt with {KS2[0]}: authentication failed: {failure.reason}"
    for view in (
        views.kek_security_associations(state(lab)),
        views.ipsec_security_associations(state(lab)),
        views.policy(state(lab)),
        views.ike_security_associations(state(lab)),
    ):
        assert note in view["notes"], view["notes"]
    (bad,) = [r for r in views.kek_security_associations(state(lab), detail=True)["records"] if r["vpn"] == "bad"]
    assert bad["state"] == "waiting to retry" and bad["last_failure"].startswith("authentication failed: ")


def test_ipsec_security_associations_and_keys_only_when_asked(lab, store):
    (tek,) = store.teks(1, KeyState.ACTIVE)
    view = views.ipsec_security_associations(state(lab))
    assert view["records"] == [
        {
            "vpn": "lan",
            "group": 1,
            "server": KS1[0],
            "spi": f"0x{tek.spi:08x}",
            "algorithm": tek.suite.name,
            "remaining": 1800,
            "encrypting": True,
        }
    ]
    assert view["notes"] == ["Total active TEKs: 1", "vpn bad group 2: interface down"]
    assert tek.keys.encryption.hex() not in json.dumps(view)
    (detail,) = views.ipsec_security_associations(state(lab), detail=True, show_keys=True)["records"]
    assert detail["selectors"] == ["198.18.10.0/24 -> 198.18.20.0/24", "198.18.20.0/24 -> 198.18.10.0/24"]
    assert detail["anti_replay_window"] == 10 and detail["installed"] == "2023-11-26 12:00:00 UTC"
    assert (detail["encryption_key"], detail["integrity_key"]) == (tek.keys.encryption.hex(), tek.keys.integrity.hex())


def test_policy_lists_the_rules_in_order_with_their_sa(lab, store):
    (tek,) = store.teks(1, KeyState.ACTIVE)
    view = views.policy(state(lab), group_id=1)
    assert [(r["rule"], r["action"], r["selector"], r["sa"]) for r in view["records"]] == [
        (1, "encrypt", "198.18.10.0/24 -> 198.18.20.0/24", f"0x{tek.spi:08x}"),
        (2, "encrypt", "198.18.20.0/24 -> 198.18.10.0/24", f"0x{tek.spi:08x}"),
    ]


def test_unknown_group(lab):
    with pytest.raises(UnknownGroup, match="no group VPN of this member joins group 9"):
        views.policy(state(lab), group_id=9)


def test_a_vpn_applied_to_no_interface_says_so():
    lab = Lab.make([VpnSettings("lan", 1, gateway(), frozenset())], {})
    view = views.kek_security_associations(state(lab))
    assert view["notes"] == ["vpn lan group 1: interface down (its service set is applied to no interface)"]
