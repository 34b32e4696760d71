"""`groupvpn export wireshark-keys`: Wireshark esp_sa rows from a member's TEKs, as tshark uses them."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tshark import read_fields, requires_tshark

from groupvpn.crypto.suites import EspKeys, esp_suite
from groupvpn.dataplane.esp_path import Encapsulator
from groupvpn.dataplane.spd import Spd
from groupvpn.ops.export import ExportError, rows
from groupvpn.runtime.control import ControlServer
from groupvpn.wire.numbers import AuthAlgorithm, EspTransform

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataplane"))
from dataplane_packets import NOW, keys_for, make_sa, udp, write_raw_pcap  # noqa: E402

CBC = esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256)
GCM = esp_suite(EspTransform.AES_GCM_16, 256)
TEKS = ((0x1001, CBC), (0x2002, GCM))


def record(spi: int, suite: Any, keys: EspKeys) -> dict[str, Any]:
    """A record of the member's ipsec-security-associations view, with keys (what the daemon answers)."""
    return {
        "vpn": "lan",
        "group": 1,
        "spi": f"0x{spi:08x}",
        "algorithm": suite.name,
        "encryption_key": keys.encryption.hex(),
        "integrity_key": keys.integrity.hex() or None,
    }


def test_rows_spell_the_algorithms_as_wireshark_does_with_hex_keys():
    cbc_keys = EspKeys(bytes(range(16)), bytes(range(32)))
    gcm_keys = EspKeys(bytes(range(36)))
    found = rows([record(0x1001, CBC, cbc_keys), record(0x2002, GCM, gcm_keys)])
    assert found == [
        f'"{protocol}","*","*","0x00001001","AES-CBC [RFC3602]","0x{bytes(range(16)).hex()}",'
        f'"HMAC-SHA-256-128 [RFC4868]","0x{bytes(range(32)).hex()}"'
        for protocol in ("IPv4", "IPv6")
    ] + [
        f'"{protocol}","*","*","0x00002002","AES-GCM with 16 octet ICV [RFC4106]","0x{bytes(range(36)).hex()}",'
        '"NULL",""'
        for protocol in ("IPv4", "IPv6")
    ]


def test_a_record_without_keys_or_with_an_unknown_suite_is_an_error():
    keyless = record(0x1001, CBC, EspKeys(bytes(16), bytes(32)))
    del keyless["encryption_key"]
    with pytest.raises(ExportError, match="no keys"):
        rows([keyless])
    with pytest.raises(ExportError, match="unknown ESP suite 'ROT13'"):
        rows([{**record(0x1001, CBC, EspKeys(bytes(16), bytes(32))), "algorithm": "ROT13"}])


def export(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "groupvpn.cli", "export", "wireshark-keys", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_without_the_consent_flag_nothing_is_asked_or_written(tmp_path):
    result = export("--socket", str(tmp_path / "none.sock"), "--output", str(tmp_path / "keys"))
    assert result.returncode == 2 and result.stdout == ""
    assert "refusing without --show-keys" in result.stderr and "secret keys" in result.stderr
    assert not (tmp_path / "keys").exists()


async def _serve_then(path: Path, records: list[dict[str, Any]], *commands: list[str]) -> list[Any]:
    """A member-like control socket answering with ``records`` while the CLI ``commands`` run."""
    asked = []

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        asked.append(request)
        return {"title": "Group VPN member IPsec security associations", "records": records, "notes": []}

    server = ControlServer(path, handle)
    await server.start()
    try:
        results = [await asyncio.to_thread(export, *command) for command in commands]
    finally:
        await server.close()
    return [asked, *results]


@requires_tshark
def test_tshark_decrypts_with_the_exported_rows_as_options_and_as_an_esp_sa_file(tmp_path, monkeypatch):
    sas = [make_sa(suite, spi) for spi, suite in TEKS]
    inner = udp("198.19.1.2", "198.19.2.2", b"exported keys", dport=7000)
    packets: list[bytes] = []
    for sa in sas:
        assert Encapsulator(Spd(), 1500).protect(sa, inner, NOW, packets) is None
    pcap = write_raw_pcap(tmp_path / "esp.pcap", packets)
    socket = str(tmp_path / "member.sock")
    profile = tmp_path / "wireshark"
    profile.mkdir()
    records = [record(spi, suite, keys_for(suite)) for spi, suite in TEKS]
    asked, as_options, as_file = asyncio.run(
        _serve_then(
            tmp_path / "member.sock",
            records,
            ["--socket", socket, "--show-keys", "--format", "tshark"],
            ["--socket", socket, "--show-keys", "--output", str(profile / "esp_sa")],
        )
    )
    assert all(a["topic"] == "ipsec-security-associations" and a["show_keys"] for a in asked)
    for result in (as_options, as_file):
        assert result.returncode == 0 and "WARNING" in result.stderr and "secret keys" in result.stderr
    assert stat.S_IMODE(os.stat(profile / "esp_sa").st_mode) == 0o600
    options = as_options.stdout.splitlines()
    assert len(options) == 4 and all(o.startswith("uat:esp_sa:") for o in options)
    prefs = ["esp.enable_encryption_decode:TRUE", "esp.enable_authentication_check:TRUE"]
    fields = ["esp.spi", "esp.icv_good", "ip.src", "ip.dst", "udp.dstport"]
    decoded = [read_fields(pcap, fields, prefs=[*prefs, *options])]
    monkeypatch.setenv("WIRESHARK_CONFIG_DIR", str(profile))  # the personal configuration holding esp_sa
    decoded.append(read_fields(pcap, fields, prefs=prefs))
    for frames in decoded:
        assert [f.ints("esp.spi") for f in frames] == [(spi,) for spi, _ in TEKS]
        for frame in frames:
            assert frame.ints("esp.icv_good") == (1,) and frame.ints("udp.dstport") == (7000,)
            assert frame.values("ip.src") == ("198.19.1.2",) * 2 and frame.values("ip.dst") == ("198.19.2.2",) * 2
