"""charon as initiator against our responder (the test peer in `respond` mode, in its own namespace).

charon completes Main Mode with us, then starts Quick Mode, which our
Phase 1 responder refuses with a protected INVALID-EXCHANGE-TYPE notify
(charon prints IKEv1 notify 7 under its IKEv2 name, INVALID_SYNTAX).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from strongswan import Charon, NetnsPair, established, key_dumps, psk_connection, requires_strongswan, stop_process

pytestmark = [requires_strongswan, pytest.mark.strongswan, pytest.mark.netns]

PSK = "interop-lab-psk-0123456789"
OUR_PORT = 848
IKE_PEER = str(Path(__file__).with_name("ike_peer.py"))
COMPARED = ("SKEYID", "SKEYID_d", "SKEYID_a", "SKEYID_e", "encryption key Ka")


@dataclass
class Lab:
    pair: NetnsPair
    charon: Charon
    workdir: Path

    def respond(self, proposal: str, psk: str = PSK) -> Path:
        """Start our responder; returns its JSON-lines output file once it listens."""
        (self.workdir / "psk").write_text(psk + "\n")
        output = self.workdir / "responder.jsonl"
        with open(output, "wb") as sink:
            self.process = self.pair.popen(
                self.pair.left,
                [
                    sys.executable, IKE_PEER, "respond", "--address", self.pair.left.address, "--port", str(OUR_PORT),
                    "--psk-file", str(self.workdir / "psk"), "--proposal", proposal, "--seconds", "30",
                ],
                stdout=sink,
            )
        self.wait_for(output, "ready")
        return output

    def connect(self, proposals: str) -> None:
        self.charon.load(
            psk_connection(
                local=self.pair.right.address,
                remote=self.pair.left.address,
                remote_port=OUR_PORT,
                psk=PSK,
                proposals=proposals,
            )
        )

    def finish(self, output: Path) -> list[dict[str, object]]:
        """Stop our responder and return every line it wrote."""
        stop_process(self.process)
        return [json.loads(line) for line in output.read_text().splitlines()]

    @staticmethod
    def wait_for(output: Path, event: str, timeout: float = 10.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in output.read_text().splitlines():
                record = json.loads(line)
                if record["event"] == event:
                    return record
            time.sleep(0.02)
        raise AssertionError(f"no {event!r} from our responder within {timeout} s: {output.read_text()}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    pair = NetnsPair.create()
    try:
        charon = Charon(pair, pair.right, tmp_path / "charon")
        charon.start()
        yield Lab(pair, charon, tmp_path)
    finally:
        pair.close()


@pytest.mark.parametrize("proposal", ["aes128-sha256-modp2048", "3des-sha1-modp1024"])
def test_charon_completes_main_mode_with_us_and_quick_mode_is_refused(lab: Lab, proposal: str) -> None:
    output = lab.respond(proposal)
    lab.connect(proposal)
    done = lab.charon.initiate()
    assert "initiate completed successfully" in done.stdout, done.stdout + done.stderr
    (up,) = established(lab.charon.log())
    assert (up.local, up.remote) == (lab.pair.right.address, lab.pair.left.address)
    lab.charon.initiate(child="net", timeout=1)
    lab.charon.wait_log(r"received INVALID_SYNTAX error notify")
    assert "[ HASH N(INVAL_SYN) ]" in lab.charon.log()
    records = lab.finish(output)
    (ours,) = [r for r in records if r["event"] == "established"]
    assert ours["suite"] == proposal and ours["doi"] == 1
    theirs = key_dumps(lab.charon.log())[up.uid]
    assert {label: theirs[label].hex() for label in COMPARED} == ours["keys"]
    assert records[-1]["stats"]["unsupported exchange"] >= 1  # type: ignore[index]


def test_wrong_psk_fails_on_both_sides(lab: Lab) -> None:
    output = lab.respond("aes128-sha256-modp2048", psk="not-the-lab-psk-but-long-enough")
    lab.connect("aes128-sha256-modp2048")
    lab.charon.initiate(timeout=1)
    failed = lab.wait_for(output, "failed")
    assert failed["reason"] == "AUTHENTICATION_FAILED"
    assert failed["message"] == (
        f"authentication failed: message 5 from {lab.pair.right.address} did not decrypt to valid payloads "
        "(pre-shared key differs?)"
    )
    # charon receives our AUTHENTICATION-FAILED notify; it is in clear (no shared keys), so charon
    # logs and ignores it rather than trusting it, and the exchange never establishes.
    lab.charon.wait_log(r"parsed INFORMATIONAL_V1 request \d+ \[ N\(AUTH_FAILED\) \]")
    assert not established(lab.charon.log())
    lab.finish(output)


def test_no_proposal_chosen_is_reported_to_charon(lab: Lab) -> None:
    output = lab.respond("aes128-sha256-modp2048")
    lab.connect("aes256-sha512-modp4096")
    lab.charon.initiate(timeout=1)
    failed = lab.wait_for(output, "failed")
    assert failed["reason"] == "NO_PROPOSAL_CHOSEN"
    assert failed["message"] == (
        "no proposal chosen (offered: aes256-sha512-modp4096; accepted: aes128-sha256-modp2048) "
        f"from {lab.pair.right.address}"
    )
    lab.charon.wait_log(r"received NO_PROPOSAL_CHOSEN error notify")
    lab.finish(output)
