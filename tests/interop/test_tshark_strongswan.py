"""``groupvpn decode`` and tshark on a real strongSwan capture: both decrypt it and agree.

charon talks to charon (Main Mode PSK, then an IKE SA delete) in lab
namespaces while tcpdump records the veth; the Phase 1 cipher key comes from
charon's own log.  This proves the decoder's IV derivation (Main Mode chain
and the Phase 2 rule of the informational) on third-party traffic, with
tshark as the independent reference.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
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
    stop_process,
)
from tshark import read_fields, requires_tshark

pytestmark = [requires_strongswan, requires_tshark, pytest.mark.strongswan, pytest.mark.netns, pytest.mark.tshark]

PSK = "lab-psk-of-at-least-20-chars"
GROUPVPN = Path(sys.executable).with_name("groupvpn")


def _start_tcpdump(pair: NetnsPair, path: Path, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    host = pair.left
    process = pair.popen(
        host, ["tcpdump", "-i", host.ifname, "-n", "-U", "--immediate-mode", "-w", str(path), "udp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline and b"listening on" not in seen:
        ready, _, _ = select.select([process.stderr], [], [], 0.1)
        if ready:
            seen += process.stderr.readline()
        if process.poll() is not None:
            raise RuntimeError(f"tcpdump exited: {seen.decode(errors='replace')}")
    if b"listening on" not in seen:
        raise RuntimeError(f"tcpdump not listening after {timeout} s")
    return process


def test_decode_and_tshark_agree_on_a_charon_capture(netns_pair: NetnsPair, tmp_path: Path) -> None:
    left, right = netns_pair.left, netns_pair.right
    responder = Charon(netns_pair, right, tmp_path / "r")
    initiator = Charon(netns_pair, left, tmp_path / "i")
    for charon in (responder, initiator):
        charon.start()
    for charon, local, remote in ((responder, right.address, "%any"), (initiator, left.address, right.address)):
        charon.load(psk_connection(local=local, remote=remote, psk=PSK, proposals="aes128-sha256-modp2048"))
    pcap = tmp_path / "charon.pcap"
    tcpdump = _start_tcpdump(netns_pair, pcap)
    assert "initiate completed successfully" in initiator.initiate().stdout
    responder.wait_log(r"IKE_SA lab\[\d+\] established")
    (sa,) = listed_sas(initiator.list_sas())
    mark = responder.log_mark()
    initiator.swanctl("--terminate", "--ike", "lab")
    responder.wait_log(r"received DELETE for IKE_SA", since=mark)
    stop_process(tcpdump)

    (up,) = established(initiator.log())
    key = key_dumps(initiator.log())[up.uid]["encryption key Ka"]
    done = subprocess.run(
        [GROUPVPN, "decode", "--json", pcap, "--ike-key", f"{sa.initiator_cookie.hex()}:{key.hex()}"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ours = json.loads(done.stdout)["messages"]
    assert [m["exchange"] for m in ours] == ["IDENTITY_PROTECTION"] * 6 + ["INFORMATIONAL"]
    assert [m["encryption"]["state"] for m in ours] == ["clear"] * 4 + ["decrypted"] * 3
    delete = next(p for p in ours[6]["payloads"] if p["payload"] == "DELETE")
    assert delete["spis"] == [(sa.initiator_cookie + sa.responder_cookie).hex()]

    fields = ["isakmp.exchangetype", "isakmp.messageid", "isakmp.hash", "isakmp.id.data.ipv4_addr", "isakmp.delete.spi"]
    theirs = read_fields(pcap, fields, {sa.initiator_cookie: key})
    assert [f.number for f in theirs] == [m["frame"] for m in ours]
    for frame, message in zip(theirs, ours):
        assert frame.clean, frame.expert
        payloads = message["payloads"]
        assert frame.hexes("isakmp.hash") == tuple(bytes.fromhex(p["data"]) for p in payloads if p["payload"] == "HASH")
        assert frame.values("isakmp.id.data.ipv4_addr") == tuple(p["data"] for p in payloads if p["payload"] == "ID")
        assert frame.hexes("isakmp.delete.spi") == tuple(
            bytes.fromhex(spi) for p in payloads if p["payload"] == "DELETE" for spi in p["spis"]
        )
        assert frame.ints("isakmp.messageid") == (int(message["header"]["message_id"], 16),)
    assert [m["payloads"][0]["data"] for m in ours[4:6] if m["payloads"][0]["payload"] == "ID"] == [left.address, right.address]
