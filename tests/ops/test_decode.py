"""``groupvpn decode`` through the real console script, on captures of the whole conversation.

The captures hold what ``messages.conversation`` built (Main Mode, DPD and
delete from the project's Phase 1 code; PULL, PUSH and ACK per RFC 6407 /
8263), so the JSON output is compared with the payloads that were sent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from messages import KEK, KEK_SPI, PSK, Conversation, conversation
from tshark import Datagram, write_pcap, write_pcapng_raw

from groupvpn.ops.decode import (
    CaptureDecoder,
    Problem,
    exchange_name,
    hexdump,
    ike_key_argument,
    isakmp_bytes,
    kek_argument,
)
from groupvpn.ops.pcap import UdpDatagram
from groupvpn.wire import numbers as n
from groupvpn.wire.message import decode_message, encode_payloads

GROUPVPN = Path(sys.executable).with_name("groupvpn")
NAMES = {
    "MM": "IDENTITY_PROTECTION",
    "PULL": "GROUPKEY_PULL",
    "DPD": "INFORMATIONAL",
    "DELETE": "INFORMATIONAL",
    "PUSH": "GROUPKEY_PUSH",
    "ACK": "GROUPKEY_PUSH_ACK",
}
CLEAR = {"MM1", "MM2", "MM3", "MM4", "PUSH-CLEAR", "ACK"}


def groupvpn(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GROUPVPN, *map(str, args)], capture_output=True, text=True, timeout=60)


def ike_key(conv: Conversation) -> str:
    ((icookie, key),) = conv.ike_keys.items()
    return f"{icookie.hex()}:{key.hex()}"


def decode_json(*args: object) -> tuple[int, dict]:
    done = groupvpn("decode", "--json", *args)
    return done.returncode, json.loads(done.stdout)


def expected_name(label: str) -> str:
    return next(name for prefix, name in NAMES.items() if label.startswith(prefix))


def expected_record(frame: int, sent, *, decrypted: bool, name: str | None = None) -> dict:
    """What the JSON must say about ``sent``, from the objects the conversation built."""
    header = decode_message(sent.datagram.payload).header.to_dict()
    header["exchange"] = name or expected_name(sent.label)
    encrypted = sent.label not in CLEAR
    shown = decrypted or not encrypted
    d = sent.datagram
    return {
        "frame": frame,
        "src": d.src,
        "sport": d.sport,
        "dst": d.dst,
        "dport": d.dport,
        "exchange": header["exchange"],
        "header": header,
        "state": ("decrypted" if decrypted else "not-decrypted") if encrypted else "clear",
        "payloads": [p.to_dict() for p in sent.payloads] if shown else None,
        "padding": -len(encode_payloads(sent.payloads)) % 16 if encrypted and decrypted else 0,
        "error": None,
    }


def actual_record(record: dict) -> dict:
    keys = ("frame", "src", "sport", "dst", "dport", "exchange", "header", "payloads", "padding", "error")
    return {**{k: record[k] for k in keys}, "state": record["encryption"]["state"]}


@pytest.fixture(scope="module")
def gdoi(tmp_path_factory) -> tuple[Conversation, Path]:
    """RFC 6407 as written: DOI 2 Main Mode, everything on 848, GAP in the SA."""
    conv = conversation()
    return conv, write_pcap(tmp_path_factory.mktemp("decode") / "gdoi.pcap", conv.datagrams)


def test_json_shows_every_message_as_sent_and_decrypts_phase1_pull_and_push(gdoi):
    conv, path = gdoi
    status, document = decode_json(path, "--ike-key", ike_key(conv))
    assert status == 0
    records = [actual_record(r) for r in document["messages"]]
    # The PUSH is decrypted with the KEK the decrypted PULL4 delivered: no --kek needed.
    assert records == [expected_record(i, s, decrypted=True) for i, s in enumerate(conv.sent, 1)]
    pull4 = document["messages"][[s.label for s in conv.sent].index("PULL4")]
    assert pull4["notes"] == [f"learned the KEK for SPI {KEK_SPI.hex()}; later GROUPKEY-PUSH under it will be decrypted"]
    assert document["summary"] == {"messages": 16, "decoded": 16, "decrypted": 10, "not_decrypted": 0, "errors": 0}


def test_text_output_names_gdoi_exchanges_and_never_shows_keys(gdoi):
    conv, path = gdoi
    done = groupvpn("decode", path, "--ike-key", ike_key(conv))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("  GROUPKEY_PULL  ") == 4
    assert out.count("  GROUPKEY_PUSH  ") == 2
    assert out.count("  GROUPKEY_PUSH_ACK  ") == 1
    assert out.count("decrypted with the IKE SA key (AES-CBC 128-bit, SHA2_256)") == 9
    assert out.count("decrypted with the KEK (AES, 128-bit)") == 1
    assert "TEK_ALGORITHM_KEY = <16 octets>" in out and "KEK_ALGORITHM_KEY = <32 octets>" in out
    assert out.rstrip().endswith("16 messages: 16 decoded (10 decrypted, 0 left encrypted), 0 with errors")
    ((_, cipher_key),) = conv.ike_keys.items()
    pull4 = conv["PULL4"].payloads[2]
    secrets = [cipher_key, KEK.key, KEK.material, PSK.secret] + [a.value for p in pull4.packets for a in p.attributes[:1]]
    for secret in secrets:
        assert secret.hex() not in out and secret.hex() not in done.stderr


def test_without_keys_encrypted_messages_are_reported_not_failed(gdoi):
    conv, path = gdoi
    status, document = decode_json(path)
    assert status == 0
    records = [actual_record(r) for r in document["messages"]]
    assert records == [expected_record(i, s, decrypted=False) for i, s in enumerate(conv.sent, 1)]
    details = {r["encryption"]["detail"] for r in document["messages"] if r["encryption"]["state"] == "not-decrypted"}
    icookie = conv.ike_sa.icookie.hex()
    assert details == {
        f"no --ike-key for initiator cookie {icookie}",
        f"no KEK for SPI {KEK_SPI.hex()} (give --kek or capture the PULL)",
    }


def test_kek_argument_decrypts_a_push_captured_alone(tmp_path, gdoi):
    conv, _ = gdoi
    path = write_pcap(tmp_path / "push.pcap", [conv["PUSH"].datagram])
    kek = f"{KEK_SPI.hex()}:aes128:{KEK.material.hex()}"
    status, document = decode_json(path, "--kek", kek)
    assert status == 0
    assert [actual_record(r) for r in document["messages"]] == [expected_record(1, conv["PUSH"], decrypted=True)]
    wrong = f"{KEK_SPI.hex()}:aes128:{bytes(32).hex()}"
    status, document = decode_json(path, "--kek", wrong)
    assert status == 1
    (record,) = document["messages"]
    assert record["encryption"]["state"] == "decrypted" and record["payloads"] is None
    assert record["error"]["hexdump"] == []  # decrypted octets are never dumped


def test_corrupted_frames_are_reported_and_the_rest_still_decodes(tmp_path, gdoi):
    conv, _ = gdoi
    datagrams = conv.datagrams
    labels = [s.label for s in conv.sent]
    ack, pull3 = labels.index("ACK"), labels.index("PULL3")
    # ACK in clear: a non-zero RESERVED octet in the SEQ payload's generic header (offset 28 + 36 + 1).
    bad_ack = bytearray(datagrams[ack].payload)
    bad_ack[65] = 0x01
    datagrams[ack] = replace(datagrams[ack], payload=bytes(bad_ack))
    # PULL3 encrypted: one flipped ciphertext octet garbles its first plaintext block.
    bad_pull3 = bytearray(datagrams[pull3].payload)
    bad_pull3[28] ^= 0xFF
    datagrams[pull3] = replace(datagrams[pull3], payload=bytes(bad_pull3))
    path = write_pcap(tmp_path / "corrupt.pcap", datagrams)

    status, document = decode_json(path, "--ike-key", ike_key(conv))
    assert status == 1
    errors = {labels[r["frame"] - 1]: r["error"] for r in document["messages"] if r["error"]}
    assert set(errors) == {"ACK", "PULL3"}
    assert errors["ACK"]["payload"] == "SEQ" and errors["ACK"]["offset"] == 65
    assert errors["ACK"]["problem"] == "RESERVED octet is 0x01, must be 0"
    assert "0040  05 01 00 08" in "\n".join(errors["ACK"]["hexdump"])
    assert errors["PULL3"]["hexdump"] == []
    # Every other frame, PULL4 included (its IV chains from PULL3 as captured), decodes as before.
    for record in document["messages"]:
        label = labels[record["frame"] - 1]
        if label not in errors:
            assert actual_record(record) == expected_record(record["frame"], conv[label], decrypted=True)
    assert document["summary"]["errors"] == 2

    text = groupvpn("decode", path, "--ike-key", ike_key(conv))
    assert text.returncode == 1
    assert "  ERROR: SEQ at offset 65: RESERVED octet is 0x01, must be 0" in text.stdout
    assert "    0040  05 01 00 08" in text.stdout


def _nat_t(d: Datagram) -> Datagram:
    return replace(d, sport=n.NAT_T_PORT, dport=n.NAT_T_PORT, payload=b"\x00\x00\x00\x00" + d.payload)


def test_pcapng_with_nat_t_retransmissions_and_other_udp(tmp_path):
    """IPsec DOI Main Mode on 500 floating to 4500 from MM5 (RFC 3947), as strongSwan does; raw-IP pcapng."""
    conv = conversation(phase1_doi=n.DOI.IPSEC, phase1_port=n.IKE_PORT)
    floated = {"MM5", "MM6", "DPD", "DPD-ACK", "DELETE"}
    datagrams = [_nat_t(s.datagram) if s.label in floated else s.datagram for s in conv.sent]
    mm5 = datagrams[4]
    noise = [
        Datagram(conv.sent[0].datagram.src, conv.sent[0].datagram.dst, 4500, 4500, b"\x12\x34\x56\x78" + bytes(40)),  # ESP
        Datagram(conv.sent[0].datagram.src, conv.sent[0].datagram.dst, 4500, 4500, b"\xff"),  # NAT keepalive
        Datagram("2001:db8::1", "2001:db8::2", 53, 53, b"dns"),
    ]
    path = write_pcapng_raw(tmp_path / "natt.pcapng", [*datagrams[:5], mm5, *noise, *datagrams[5:]])
    status, document = decode_json(path, "--ike-key", ike_key(conv))
    assert status == 0
    messages = document["messages"]
    assert [m["frame"] for m in messages] == [1, 2, 3, 4, 5, 6, *range(10, 10 + len(datagrams) - 5)]
    assert messages[5]["encryption"]["detail"].endswith(", a retransmission)")
    assert messages[5]["payloads"] == messages[4]["payloads"]
    del messages[5]
    labels = [s.label for s in conv.sent]
    assert [m["nat_t"] for m in messages] == [label in floated for label in labels]
    expected = [replace_ports(expected_record(i, s, decrypted=True), d) for i, (s, d) in enumerate(zip(conv.sent, datagrams), 1)]
    assert [{**actual_record(m), "frame": 0} for m in messages] == [{**e, "frame": 0} for e in expected]


def replace_ports(record: dict, d: Datagram) -> dict:
    return {**record, "sport": d.sport, "dport": d.dport}


def test_a_lost_pull2_costs_pull3_and_the_kek_but_pull4_still_decodes(tmp_path, gdoi):
    """CBC chains on what was captured: PULL3 needs PULL2's last block, PULL4 only PULL3's."""
    conv, _ = gdoi
    kept = [s for s in conv.sent if s.label != "PULL2"]
    path = write_pcap(tmp_path / "lost.pcap", [s.datagram for s in kept])
    status, document = decode_json(path, "--ike-key", ike_key(conv))
    assert status == 1
    by_label = {s.label: r for s, r in zip(kept, document["messages"])}
    assert [label for label, r in by_label.items() if r["error"]] == ["PULL3"]
    assert by_label["PULL4"]["payloads"] == [p.to_dict() for p in conv["PULL4"].payloads]
    assert by_label["PULL4"]["notes"] == [f"KEK for SPI {KEK_SPI.hex()} not usable: no SA KEK announced its algorithm"]
    assert by_label["PUSH"]["encryption"]["state"] == "not-decrypted"


def test_a_fragment_says_why_it_does_not_decode(gdoi):
    conv, _ = gdoi
    whole = conv["PULL4"].datagram
    first = UdpDatagram(7, 0.0, whole.src, whole.dst, whole.sport, whole.dport, whole.payload[:200], truncated=True)
    record = CaptureDecoder({}, {}).feed(first)
    assert record is not None and record.exchange == "GROUPKEY_PULL"
    assert record.error == Problem(
        f"Length is {len(whole.payload)} but the datagram has 200 octets"
        " (the datagram is an IP fragment or was cut by the snap length)",
        "ISAKMP header",
        24,
        hexdump(whole.payload[:200], 24),
    )


def test_exchanges_32_33_take_ipsec_names_outside_gdoi(tmp_path):
    """Exchange 32 on port 500 under a DOI 1 IKE SA is Quick Mode; a PUSH under a learned KEK stays GDOI."""
    conv = conversation(phase1_doi=n.DOI.IPSEC, phase1_port=n.IKE_PORT)
    moved = [replace(s.datagram, sport=n.IKE_PORT, dport=n.IKE_PORT) for s in conv.sent]
    path = write_pcap(tmp_path / "port500.pcap", moved)
    status, document = decode_json(path, "--ike-key", ike_key(conv))
    assert status == 0
    names = {conv.sent[r["frame"] - 1].label: r["exchange"] for r in document["messages"]}
    assert names["PULL1"] == names["PULL4"] == "QUICK_MODE"
    assert names["PUSH"] == names["PUSH-CLEAR"] == "GROUPKEY_PUSH"
    assert names["ACK"] == "GROUPKEY_PUSH_ACK"
    assert all(r["error"] is None for r in document["messages"])


def test_wrong_length_ike_key_is_a_precise_error(gdoi):
    conv, path = gdoi
    ((icookie, _),) = conv.ike_keys.items()
    skeyid_e = conv.ike_sa.skeyid_e  # 32 octets with SHA-256: what Wireshark users often give by mistake
    status, document = decode_json(path, "--ike-key", f"{icookie.hex()}:{skeyid_e.hex()}")
    assert status == 1
    problems = {r["error"]["problem"] for r in document["messages"] if r["error"]}
    assert problems == {
        f"the --ike-key for {icookie.hex()} is 32 octets; this SA uses AES-CBC 128-bit, SHA2_256 "
        "(the cipher key, not SKEYID_e)"
    }


def test_bad_arguments_and_files_exit_with_messages_that_do_not_echo_keys(tmp_path):
    secret = "00112233445566778899aabbccddeeff"
    done = groupvpn("decode", tmp_path / "x.pcap", "--ike-key", f"0011:{secret}")
    assert done.returncode == 2 and "ICOOKIE must be 8 octets" in done.stderr and secret not in done.stderr
    done = groupvpn("decode", tmp_path / "x.pcap", "--kek", f"{'ab' * 16}:aes128:{secret}")
    assert done.returncode == 2 and "must be 32 octets (IV | key)" in done.stderr and secret not in done.stderr
    done = groupvpn("decode", tmp_path / "missing.pcap")
    assert done.returncode == 1 and "cannot open" in done.stderr and done.stdout == ""


def test_argument_parsers():
    assert ike_key_argument("0102030405060708:" + "11" * 16) == (bytes(range(1, 9)), b"\x11" * 16)
    spi, kek = kek_argument(f"{KEK_SPI.hex()}:AES128:{KEK.material.hex()}")
    assert (spi, kek) == (KEK_SPI, KEK)
    for bad, message in [
        ("0102030405060708", "expected ICOOKIE:KEY"),
        ("zz02030405060708:00", "ICOOKIE is not hexadecimal"),
        ("0102030405060708:" + "11" * 20, "KEY must be a DES, 3DES or AES key"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            ike_key_argument(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="ALG must be one of des, 3des, aes128"):
        kek_argument(f"{KEK_SPI.hex()}:blowfish:00")


def test_isakmp_bytes_by_port():
    def udp(sport: int, dport: int, payload: bytes) -> UdpDatagram:
        return UdpDatagram(1, 0.0, "198.18.0.1", "198.18.0.2", sport, dport, payload)

    assert isakmp_bytes(udp(500, 500, b"x")) == (b"x", False)
    assert isakmp_bytes(udp(848, 40000, b"x")) == (b"x", False)
    assert isakmp_bytes(udp(4500, 4500, b"\x00\x00\x00\x00x")) == (b"x", True)
    assert isakmp_bytes(udp(4500, 4500, b"\x00\x00\x00\x01x")) is None  # ESP, SPI 1
    assert isakmp_bytes(udp(4500, 4500, b"\xff")) is None
    assert isakmp_bytes(udp(53, 53, b"x")) is None


def test_exchange_names_follow_the_doi():
    assert exchange_name(32, gdoi=True) == "GROUPKEY_PULL"
    assert exchange_name(32, gdoi=False) == "QUICK_MODE"
    assert exchange_name(33, gdoi=False) == "NEW_GROUP_MODE"
    assert exchange_name(35, gdoi=False) == "UNKNOWN(35)"
    assert exchange_name(2, gdoi=False) == exchange_name(2, gdoi=True) == "IDENTITY_PROTECTION"


def test_hexdump_marks_the_offset_and_says_when_it_is_past_the_end():
    data = bytes(range(64))
    assert hexdump(data, 20, context=8) == (
        "0000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  |................|",
        "0010  10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f  |................|",
        "                  ^^",
    )
    assert hexdump(b"ab", 5)[-1] == "(offset 5 is past the 2 octets captured)"
