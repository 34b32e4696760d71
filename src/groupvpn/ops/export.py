"""``groupvpn export wireshark-keys``: a member's current TEKs as Wireshark ``esp_sa`` rows.

Asks the running member daemon (its control socket, with ``show_keys``)
for its IPsec SAs and writes one row per TEK and IP version in the format
of Wireshark's ESP SA table (the ``esp_sa`` UAT of Wireshark/tshark 4.0,
lab notes §1.5): eight quoted columns -- protocol, source, destination,
SPI, encryption algorithm, encryption key, authentication algorithm,
authentication key -- with the algorithms spelled exactly as Wireshark
names them and keys in ``0x`` hex (a GCM key ends with its 4-octet salt).
Addresses are ``*``: every member sends under a group SA.

``--format file`` (the default) writes the lines of an ``esp_sa`` file
(copy it into a Wireshark profile directory); ``--format tshark`` writes
``uat:esp_sa:ROW`` lines, each the value of one ``tshark -o``.

The rows decrypt every packet of the group, so the command refuses to
run without ``--show-keys`` and warns on stderr when it does; a file it
writes is readable by its owner only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..crypto.suites import SUITES, EspKeys, EspSuite
from ..runtime.control import ControlError, call
from ..wire.numbers import AuthAlgorithm, EspTransform
from .show import ROLE_SOCKETS

CIPHER_NAMES = {
    EspTransform.DES: "DES-CBC [RFC2405]",
    EspTransform.TRIPLE_DES: "TripleDES-CBC [RFC2451]",
    EspTransform.AES_CBC: "AES-CBC [RFC3602]",
    EspTransform.AES_GCM_8: "AES-GCM with 8 octet ICV [RFC4106]",
    EspTransform.AES_GCM_12: "AES-GCM with 12 octet ICV [RFC4106]",
    EspTransform.AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
}
AUTH_NAMES = {
    None: "NULL",
    AuthAlgorithm.HMAC_MD5: "HMAC-MD5-96 [RFC2403]",
    AuthAlgorithm.HMAC_SHA1: "HMAC-SHA-1-96 [RFC2404]",
    AuthAlgorithm.HMAC_SHA2_256: "HMAC-SHA-256-128 [RFC4868]",
    AuthAlgorithm.HMAC_SHA2_384: "HMAC-SHA-384-192 [RFC4868]",
    AuthAlgorithm.HMAC_SHA2_512: "HMAC-SHA-512-256 [RFC4868]",
}
PROTOCOLS = ("IPv4", "IPv6")
UAT_OPTION = "uat:esp_sa:"
_SUITES_BY_NAME = {suite.name: suite for suite in SUITES.values()}
_SECRET = "the rows hold the group's secret keys: they decrypt every packet of the group"


class ExportError(Exception):
    """A TEK that cannot be written as a row, or no daemon to ask."""


def _quoted(value: str) -> str:
    return f'"{value}"'


def esp_sa_row(protocol: str, spi: int, suite: EspSuite, keys: EspKeys) -> str:
    """One ``esp_sa`` row: any source and destination, ``spi``, the suite's algorithms and ``keys``."""
    integrity = f"0x{keys.integrity.hex()}" if keys.integrity else ""
    columns = (
        protocol,
        "*",
        "*",
        f"0x{spi:08x}",
        CIPHER_NAMES[suite.transform],
        f"0x{keys.encryption.hex()}",
        AUTH_NAMES[suite.auth],
        integrity,
    )
    return ",".join(_quoted(column) for column in columns)


def rows(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The rows for the records of the member's ``ipsec-security-associations`` view (with keys)."""
    found = []
    for record in records:
        suite = _SUITES_BY_NAME.get(record["algorithm"])
        if suite is None:
            raise ExportError(f"TEK {record['spi']}: unknown ESP suite {record['algorithm']!r}")
        if "encryption_key" not in record:
            raise ExportError("the daemon sent no keys (it was not asked with show_keys)")
        keys = EspKeys(bytes.fromhex(record["encryption_key"]), bytes.fromhex(record["integrity_key"] or ""))
        found += [esp_sa_row(protocol, int(record["spi"], 16), suite, keys) for protocol in PROTOCOLS]
    return found


def member_rows(socket: Path) -> list[str]:
    """Ask the member daemon on ``socket`` for its TEKs and keys."""
    request = {"op": "show", "role": "member", "topic": "ipsec-security-associations", "show_keys": True}
    try:
        view = call(socket, request)
    except ControlError as err:
        raise ExportError(str(err)) from None
    return rows(view.get("records", []))


def _write(lines: list[str], output: Path | None) -> None:
    text = "".join(f"{line}\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _wireshark_keys(args: argparse.Namespace) -> int:
    command = "groupvpn export wireshark-keys"
    if not args.show_keys:
        print(f"{command}: refusing without --show-keys: {_SECRET}", file=sys.stderr)
        return 2
    print(f"WARNING: {_SECRET}; protect this output.", file=sys.stderr)
    try:
        found = member_rows(args.socket)
    except ExportError as err:
        print(f"{command}: {err}", file=sys.stderr)
        return 1
    _write([UAT_OPTION + row if args.format == "tshark" else row for row in found], args.output)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = subparsers.add_parser("export", help="export a running member's state for other tools")
    kinds = export.add_subparsers(dest="export_kind", metavar="WHAT", required=True)
    keys = kinds.add_parser(
        "wireshark-keys",
        help="the member's current TEKs as Wireshark esp_sa rows (reveals secrets)",
        description="Write the member's current TEKs as rows of Wireshark's ESP SA table (esp_sa).",
    )
    keys.add_argument(
        "--socket", type=Path, default=ROLE_SOCKETS["member"], help="the member's control socket (default %(default)s)"
    )
    keys.add_argument("--output", "-o", type=Path, help="write here (mode 0600) instead of standard output")
    keys.add_argument(
        "--format",
        choices=("file", "tshark"),
        default="file",
        help="file: lines of an esp_sa file (default); tshark: 'uat:esp_sa:ROW' values for tshark -o",
    )
    keys.add_argument("--show-keys", action="store_true", help="required: the output reveals the group's keys")
    keys.set_defaults(func=_wireshark_keys)
