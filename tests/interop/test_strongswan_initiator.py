"""Our initiator (the real `groupvpn ike test` CLI and the test peer) against charon as responder.

One namespace pair and one charon serve the whole module; each test loads
the connection it needs and reads only the part of charon's log written
after it started.  Proof of success is charon's own "IKE_SA ... established"
line plus identical SKEYID/SKEYID_d/a/e/Ka in its key dump and in ours.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from strongswan import Charon, NetnsPair, established, key_dumps, psk_connection, requires_strongswan

pytestmark = [requires_strongswan, pytest.mark.strongswan, pytest.mark.netns]

PSK = "interop-lab-psk-0123456789"
IKE_PEER = str(Path(__file__).with_name("ike_peer.py"))
# charon proposal names equal ours (see groupvpn.ike.proposals).
PROPOSALS = [
    "3des-sha1-modp1024",
    "aes128-sha1-modp1536",
    "aes256-sha256-modp2048",
    "aes128-sha256-modp2048",
    "aes192-sha384-ecp256",
    "aes256-sha512-ecp384",
    "aes256-sha512-ecp521",
    "aes128-md5-modp3072",
    "aes256-sha384-modp4096",
    "des-md5-modp768",
]
COMPARED = ("SKEYID", "SKEYID_d", "SKEYID_a", "SKEYID_e", "encryption key Ka")


class Lab:
    def __init__(self, pair: NetnsPair, charon: Charon, workdir: Path) -> None:
        self.pair = pair
        self.charon = charon
        self.workdir = workdir
        self.ours = pair.left
        self.theirs = pair.right

    def serve(self, proposals: list[str]) -> int:
        """Load charon as responder for ``proposals``; returns the log mark to read from."""
        self.charon.load(psk_connection(local=self.theirs.address, remote="%any", psk=PSK, proposals=",".join(proposals)))
        return self.charon.log_mark()

    def psk_file(self, secret: str) -> Path:
        path = self.workdir / f"psk-{len(list(self.workdir.glob('psk-*')))}"
        path.write_text(secret + "\n")
        return path

    def cli(self, *args: str, psk: str = PSK) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "groupvpn.cli", "ike", "test", "--peer", self.theirs.address, "--port", "500"]
        command += ["--psk-file", str(self.psk_file(psk)), *args]
        return subprocess.run(self.ours.command(*command), capture_output=True, text=True, timeout=60)

    def peer(self, *args: str) -> dict[str, object]:
        command = [sys.executable, IKE_PEER, "initiate", "--address", self.ours.address, "--peer", self.theirs.address]
        command += ["--port", "500", "--psk-file", str(self.psk_file(PSK)), *args]
        done = subprocess.run(self.ours.command(*command), capture_output=True, text=True, timeout=60)
        assert done.stdout, done.stderr
        return json.loads(done.stdout.splitlines()[0])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("swan-responder")
    pair = NetnsPair.create()
    try:
        charon = Charon(pair, pair.right, workdir / "charon")
        charon.start()
        yield Lab(pair, charon, workdir)
    finally:
        pair.close()


@pytest.mark.parametrize("proposal", PROPOSALS)
def test_keys_match_charon(lab: Lab, proposal: str) -> None:
    mark = lab.serve(PROPOSALS)
    ours = lab.peer("--proposal", proposal, "--doi", "1")
    assert ours["event"] == "established" and ours["suite"] == proposal, ours
    lab.charon.wait_log(r"IKE_SA lab\[\d+\] established", since=mark)
    log = lab.charon.log()[mark:]
    (up,) = established(log)
    assert (up.local, up.remote) == (lab.theirs.address, lab.ours.address)
    theirs = key_dumps(log)[up.uid]
    assert {label: theirs[label].hex() for label in COMPARED} == ours["keys"]


@pytest.mark.parametrize("proposal", PROPOSALS[:4])
def test_cli_establishes_checks_dpd_and_deletes(lab: Lab, proposal: str) -> None:
    mark = lab.serve(PROPOSALS[:4])
    done = lab.cli("--proposal", proposal, "--doi", "1", "--dpd", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["result"] == "established" and report["proposal"] == proposal
    assert report["peer_supports_dpd"] and report["dpd_round_trip_seconds"] is not None and report["deleted"]
    lab.charon.wait_log(r"received DELETE for IKE_SA lab\[\d+\]", since=mark)
    log = lab.charon.log()[mark:]
    assert len(established(log)) == 1
    assert "[ HASH N(DPD) ]" in log and "[ HASH N(DPD_ACK) ]" in log
    assert PSK not in done.stdout + done.stderr


def test_gdoi_doi_is_accepted_by_charon_too(lab: Lab) -> None:
    """RFC 6407 §2.1's DOI 2 in the Phase 1 SA, and DPD/DELETE carrying DOI 2: charon accepts all of it."""
    mark = lab.serve(["aes128-sha256-modp2048"])
    done = lab.cli("--doi", "2", "--dpd")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "proposal   aes128-sha256-modp2048 (DOI GDOI)" in done.stdout
    assert "R-U-THERE acknowledged" in done.stdout and "informational DELETE sent" in done.stdout
    lab.charon.wait_log(r"received DELETE for IKE_SA lab\[\d+\]", since=mark)
    assert len(established(lab.charon.log()[mark:])) == 1


def test_several_transforms_we_take_the_one_charon_selected(lab: Lab) -> None:
    """charon picks by its own configured order (strongSwan's prefer_configured_proposals default)."""
    mark = lab.serve(["aes128-sha1-modp1536", "3des-sha1-modp1024"])
    done = lab.cli("--proposal", "aes256-sha256-modp2048,3des-sha1-modp1024,aes128-sha1-modp1536", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["proposal"] == "aes128-sha1-modp1536"
    lab.charon.wait_log(r"selected proposal: IKE:AES_CBC_128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1536", since=mark)


def test_wrong_psk_is_an_authentication_failure(lab: Lab) -> None:
    mark = lab.serve(["aes128-sha256-modp2048"])
    done = lab.cli("--json", psk="not-the-lab-psk-but-long-enough")
    assert done.returncode == 2, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["reason"] == "authentication failed"
    assert report["message"] == (
        f"authentication failed: {lab.theirs.address} answered message 5 with a notify that does not decrypt "
        "under our keys (pre-shared key differs?)"
    )
    # charon's side of the same failure: message 5 did not decrypt under its key.
    lab.charon.wait_log(r"decryption failed\?", since=mark)
    assert not established(lab.charon.log()[mark:])


def test_no_proposal_chosen(lab: Lab) -> None:
    mark = lab.serve(["aes256-sha256-modp2048"])
    done = lab.cli("--proposal", "3des-sha1-modp1024")
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.strip().startswith(
        f"FAILED: no proposal chosen by {lab.theirs.address} (offered: 3des-sha1-modp1024)"
    )
    lab.charon.wait_log(r"no proposal found", since=mark)


def test_no_response(lab: Lab) -> None:
    done = subprocess.run(
        lab.ours.command(
            sys.executable, "-m", "groupvpn.cli", "ike", "test", "--peer", lab.theirs.address, "--port", "501",
            "--psk-file", str(lab.psk_file(PSK)), "--attempts", "1",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4, done.stdout + done.stderr
    assert done.stdout.startswith(f"FAILED: no response from {lab.theirs.address} after 1 attempt ")


def test_configuration_errors_exit_1(lab: Lab) -> None:
    short = lab.cli(psk="too-short")
    assert short.returncode == 1 and "at least 20 are required" in short.stderr
    bad = lab.cli("--proposal", "aes128-sha256-modp9999")
    assert bad.returncode == 1 and "unknown group 'modp9999'" in bad.stderr
