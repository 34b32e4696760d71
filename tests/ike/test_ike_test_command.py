"""`groupvpn ike test` end to end on loopback, against our responder on its own event loop thread."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from groupvpn.cli import main
from groupvpn.ike import Phase1Responder, PskStore, Suite
from groupvpn.runtime.udp import UdpDriver
from groupvpn.wire.isakmp import Identification
from phase1_link import OTHER_PSK, PSK

LOOPBACK = "127.0.0.1"


@contextmanager
def responder(accepted: str) -> Iterator[tuple[int, Phase1Responder]]:
    core = Phase1Responder(PskStore.single(PSK), [Suite.parse(accepted)], Identification.of(IPv4Address(LOOPBACK)))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    port: list[int] = []

    async def serve() -> None:
        driver = await UdpDriver.open(core, (LOOPBACK, 0))
        port.append(driver.local[1])
        ready.set()
        await stop.wait()
        driver.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(5.0)
        yield port[0], core
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5.0)
        loop.close()


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], port: int, *args: str, key: bytes = PSK.secret) -> tuple[int, str]:
    psk_file = tmp_path / "psk"
    psk_file.write_bytes(key + b"\n")
    status = main(["ike", "test", "--peer", LOOPBACK, "--port", str(port), "--psk-file", str(psk_file), *args])
    return status, capsys.readouterr().out


def test_success_reports_the_sa_and_deletes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with responder("aes256-sha256-modp2048") as (port, core):
        status, out = run(tmp_path, capsys, port, "--proposal", "aes256-sha256-modp2048", "--dpd", "--json")
        deadline = time.monotonic() + 5.0
        while core.sessions and time.monotonic() < deadline:  # the DELETE is in flight on loopback
            time.sleep(0.01)
    report = json.loads(out)
    assert status == 0 and report["exit_status"] == 0
    assert report["result"] == "established" and report["proposal"] == "aes256-sha256-modp2048"
    assert (report["encryption"], report["key_length"], report["hash"], report["dh_group"]) == (
        "AES_CBC", 256, "SHA2_256", "MODP_2048"
    )
    assert report["doi"] == "GDOI" and report["lifetime_seconds"] == 86400 and report["deleted"]
    assert report["dpd_round_trip_seconds"] is not None and report["peer_id"] == LOOPBACK
    assert not core.sessions, "the DELETE reached the responder"
    assert PSK.secret.decode() not in out


def test_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with responder("aes128-sha256-modp2048") as (port, _):
        status, out = run(tmp_path, capsys, port)
    lines = out.splitlines()
    assert status == 0 and lines[0].startswith(f"IKE SA established with {LOOPBACK}:{port} in ")
    assert lines[1] == "  proposal   aes128-sha256-modp2048 (DOI GDOI)"
    assert lines[-1] == "  deleted    informational DELETE sent"


def test_wrong_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with responder("aes128-sha256-modp2048") as (port, _):
        status, out = run(tmp_path, capsys, port, "--json", key=OTHER_PSK.secret)
    report = json.loads(out)
    assert status == 2 and report["reason"] == "authentication failed"
    assert report["message"].startswith(f"authentication failed: {LOOPBACK} sent AUTHENTICATION_FAILED")


def test_no_proposal_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with responder("3des-sha1-modp1024") as (port, _):
        status, out = run(tmp_path, capsys, port, "--proposal", "aes128-sha1-modp2048,aes256-sha1-modp2048")
    assert status == 3
    assert out.startswith(f"FAILED: no proposal chosen by {LOOPBACK} (offered: aes128-sha1-modp2048, aes256-sha1-modp2048)")


def test_configuration_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    psk_file = tmp_path / "short"
    psk_file.write_text("short\n")
    assert main(["ike", "test", "--peer", LOOPBACK, "--psk-file", str(psk_file)]) == 1
    assert "configuration error: pre-shared key has 5 characters" in capsys.readouterr().err
    assert main(["ike", "test", "--peer", LOOPBACK, "--psk-file", str(tmp_path / "missing")]) == 1
    assert "configuration error" in capsys.readouterr().err
