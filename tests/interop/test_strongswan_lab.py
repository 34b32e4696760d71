"""The strongSwan harness on its own: charon to charon, Main Mode PSK, key dumps agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongswan import (
    Charon,
    NetnsPair,
    established,
    key_dumps,
    listed_sas,
    netns_pair,  # noqa: F401  (fixture)
    psk_connection,
    requires_strongswan,
)

pytestmark = [requires_strongswan, pytest.mark.strongswan, pytest.mark.netns]

PSK = "lab-psk-of-at-least-20-chars"


def test_charon_to_charon_main_mode(netns_pair: NetnsPair, tmp_path: Path) -> None:
    left, right = netns_pair.left, netns_pair.right
    responder = Charon(netns_pair, right, tmp_path / "r")
    initiator = Charon(netns_pair, left, tmp_path / "i")
    for charon in (responder, initiator):
        charon.start()
    responder.load(psk_connection(local=right.address, remote="%any", psk=PSK, proposals="aes128-sha256-modp2048"))
    initiator.load(psk_connection(local=left.address, remote=right.address, psk=PSK, proposals="aes128-sha256-modp2048"))
    done = initiator.initiate()
    assert "initiate completed successfully" in done.stdout, done.stdout + done.stderr
    responder.wait_log(r"IKE_SA lab\[\d+\] established")
    (up_r,) = established(responder.log())
    (up_i,) = established(initiator.log())
    assert (up_r.local, up_r.remote) == (right.address, left.address)
    assert (up_i.local, up_i.remote) == (left.address, right.address)
    keys_r = key_dumps(responder.log())[up_r.uid]
    keys_i = key_dumps(initiator.log())[up_i.uid]
    assert set(keys_r) == {"SKEYID", "SKEYID_d", "SKEYID_a", "SKEYID_e", "encryption key Ka", "initial IV"}
    assert keys_r == keys_i
    assert len(keys_r["SKEYID"]) == 32 and len(keys_r["encryption key Ka"]) == 16
    (listed_i,) = listed_sas(initiator.list_sas())
    (listed_r,) = listed_sas(responder.list_sas())
    assert listed_i.state == listed_r.state == "ESTABLISHED"
    assert (listed_i.initiator_cookie, listed_i.responder_cookie) == (listed_r.initiator_cookie, listed_r.responder_cookie)
