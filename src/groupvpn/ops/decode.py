"""``groupvpn decode``: every ISAKMP/GDOI message in a capture, decrypted where keys are given.

As with Wireshark's IKEv1 decryption, the operator gives the Phase 1
cipher key per initiator cookie and the decoder derives every IV from what
the capture shows: the Main Mode proposal and KE payloads give the first
IV, then the CBC chain of Main Mode and, per Message ID, the Phase 2 rule
(RFC 2409 App. B).  State is kept per IKE SA (cookie pair).  GROUPKEY-PUSH
messages are decrypted with a KEK given on the command line or learned from
a decrypted PULL/PUSH (SA KEK + KD KEK packet), with the delivered IV.

Key material is never printed: key packet secrets show only their length
(``wire.attributes``), keys given on the command line are not echoed, and a
hex dump is only shown for bytes that travelled in clear.

``CaptureDecoder`` is the sans-IO core (datagrams in, records out); the
rest renders records and wires up the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..crypto.cbc import BlockCipher, ike_cipher
from ..crypto.errors import CryptoError
from ..crypto.gdoi import Kek
from ..crypto.ikev1 import phase1_iv, phase2_iv
from ..wire import numbers as n
from ..wire.errors import WireError
from ..wire.gdoi import GroupSa, KeyDownload
from ..wire.isakmp import KeyExchange, SecurityAssociation, Transform
from ..wire.message import Header, Message, Payload, decode_message
from .pcap import CaptureError, UdpDatagram, read_udp

NON_ESP_MARKER = b"\x00\x00\x00\x00"
NAT_KEEPALIVE = b"\xff"
KEK_ALGORITHMS = {
    "des": (n.KekAlgorithm.DES, None),
    "3des": (n.KekAlgorithm.TRIPLE_DES, None),
    "aes128": (n.KekAlgorithm.AES, 128),
    "aes192": (n.KekAlgorithm.AES, 192),
    "aes256": (n.KekAlgorithm.AES, 256),
}
_GDOI_EXCHANGES = {
    n.ExchangeType.GROUPKEY_PULL,
    n.ExchangeType.GROUPKEY_PUSH,
    n.ExchangeType.GDOI_KNOWN_UNREGISTERED,
    n.ExchangeType.GROUPKEY_PUSH_ACK,
}


def exchange_name(exchange: int, gdoi: bool) -> str:
    """The exchange's name in its DOI: 32/33 are Quick Mode/New Group Mode outside GDOI."""
    if exchange in _GDOI_EXCHANGES and not gdoi:
        return n.name_of(n.IpsecExchangeType, exchange)
    return n.name_of(n.ExchangeType, exchange)


@dataclass(frozen=True)
class Problem:
    """Why a message did not decode: the WireError fields, and bytes around the offset when safe."""

    problem: str
    payload: str | None = None
    offset: int | None = None
    hexdump: tuple[str, ...] = ()

    @classmethod
    def of(cls, error: WireError, clear_bytes: bytes | None, hint: str = "") -> Problem:
        dump = hexdump(clear_bytes, error.offset) if clear_bytes is not None else ()
        return cls(error.problem + hint, error.payload, error.offset, dump)

    def to_dict(self) -> dict[str, object]:
        return {"payload": self.payload, "offset": self.offset, "problem": self.problem, "hexdump": list(self.hexdump)}


@dataclass(frozen=True)
class Record:
    """One ISAKMP message of the capture as decoded."""

    frame: int
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    nat_t: bool
    exchange: str
    header: Header | None
    payloads: tuple[Payload, ...] | None = None
    padding: int = 0
    encryption: str = "clear"  # clear | decrypted | not-decrypted
    detail: str = ""
    notes: tuple[str, ...] = ()
    error: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, object]:
        header = self.header.to_dict() if self.header is not None else None
        if header is not None:
            header["exchange"] = self.exchange
        return {
            "frame": self.frame,
            "time": self.time,
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
            "nat_t": self.nat_t,
            "exchange": self.exchange,
            "header": header,
            "encryption": {"state": self.encryption, "detail": self.detail},
            "payloads": [p.to_dict() for p in self.payloads] if self.payloads is not None else None,
            "padding": self.padding,
            "notes": list(self.notes),
            "error": self.error.to_dict() if self.error is not None else None,
        }


class _NotDecrypted(Exception):
    """The capture or the keys given do not allow decrypting this message (not a decoding error)."""


class _WrongKey(Exception):
    """A key was given for this message but cannot be the right one (a decoding error)."""


@dataclass(frozen=True)
class _Suite:
    cipher: BlockCipher
    key_size: int
    hash: n.HashAlgorithm

    @classmethod
    def of(cls, transform: Transform) -> _Suite:
        values = {a.type: a.int for a in transform.attributes}
        try:
            cipher = ike_cipher(values[n.IkeAttribute.ENCRYPTION_ALGORITHM])
            key_size = cipher.key_size(values.get(n.IkeAttribute.KEY_LENGTH))
            return cls(cipher, key_size, n.HashAlgorithm(values[n.IkeAttribute.HASH_ALGORITHM]))
        except (KeyError, ValueError, CryptoError) as exc:
            raise _NotDecrypted(f"the Main Mode transform cannot be used for decryption ({exc})") from None

    def describe(self) -> str:
        return f"{self.cipher.name} {8 * self.key_size}-bit, {self.hash.name}"


@dataclass
class _IkeSa:
    """What the capture has shown of one IKE SA: enough to follow its CBC chains."""

    rcookie: bytes
    initiator: tuple[str, int] | None = None
    doi: int | None = None
    transform: Transform | None = None
    g_xi: bytes | None = None
    g_xr: bytes | None = None
    phase1_iv: bytes | None = field(default=None, repr=False)  # running Main Mode IV; then the last block
    main_mode_done: bool = False
    phase2_ivs: dict[int, bytes] = field(default_factory=dict, repr=False)
    ivs_used: dict[bytes, bytes] = field(default_factory=dict, repr=False)  # ciphertext -> IV it was sent with

    def learn(self, d: UdpDatagram, message: Message) -> None:
        """Take the proposal, DOI and KE values from clear Main Mode messages."""
        for payload in message.payloads:
            if isinstance(payload, SecurityAssociation) and payload.proposals and payload.proposals[0].transforms:
                if message.header.rcookie == bytes(8):
                    self.initiator = (d.src, d.sport)
                self.doi = payload.doi
                self.transform = payload.proposals[0].transforms[0]  # MM2 carries the one chosen
            elif isinstance(payload, KeyExchange):
                if self.initiator == (d.src, d.sport) or (self.initiator is None and self.g_xi is None):
                    self.g_xi = payload.data
                else:
                    self.g_xr = payload.data

    def iv(self, suite: _Suite, message: Message) -> bytes:
        """The IV ``message`` was encrypted with; a retransmission reuses its first copy's."""
        if message.ciphertext in self.ivs_used:
            return self.ivs_used[message.ciphertext]
        message_id = message.header.message_id
        if message_id == 0:
            if self.phase1_iv is None:
                if self.g_xi is None or self.g_xr is None:
                    raise _NotDecrypted("the capture lacks the Main Mode KE payloads (messages 3-4)")
                self.phase1_iv = phase1_iv(suite.hash, self.g_xi, self.g_xr, suite.cipher.block_size)
            return self.phase1_iv
        if message_id not in self.phase2_ivs:
            if not self.main_mode_done or self.phase1_iv is None:
                raise _NotDecrypted("the capture lacks the encrypted end of Main Mode (messages 5-6)")
            self.phase2_ivs[message_id] = phase2_iv(suite.hash, self.phase1_iv, message_id, suite.cipher.block_size)
        return self.phase2_ivs[message_id]

    def advance(self, message: Message, iv: bytes, block_size: int, responder: bool) -> None:
        """Chain on from ``message`` as seen on the wire (a passive observer cannot do better)."""
        self.ivs_used[message.ciphertext] = iv
        last = message.ciphertext[-block_size:]
        if message.header.message_id == 0:
            self.phase1_iv = last
            self.main_mode_done = self.main_mode_done or responder
        else:
            self.phase2_ivs[message.header.message_id] = last


class CaptureDecoder:
    """Feed UDP datagrams in capture order; get a ``Record`` for each ISAKMP message."""

    def __init__(self, ike_keys: dict[bytes, bytes], keks: dict[bytes, Kek]) -> None:
        self._ike_keys = dict(ike_keys)
        self._keks = dict(keks)
        self._kek_policy: dict[bytes, tuple[int, int | None]] = {}  # SPI -> (KEK_ALGORITHM, KEK_KEY_LENGTH)
        self._sas: dict[bytes, _IkeSa] = {}

    def feed(self, d: UdpDatagram) -> Record | None:
        found = isakmp_bytes(d)
        if found is None:
            return None
        data, nat_t = found
        where = dict(frame=d.frame, time=d.time, src=d.src, sport=d.sport, dst=d.dst, dport=d.dport, nat_t=nat_t)
        try:
            message = decode_message(data)
        except WireError as error:
            header = _header_of(data)
            name = exchange_name(header.exchange, self._is_gdoi(d, header)) if header else "unknown"
            hint = " (the datagram is an IP fragment or was cut by the snap length)" if d.truncated else ""
            return Record(**where, exchange=name, header=header, error=Problem.of(error, data, hint))
        header = message.header
        base = dict(where, exchange=exchange_name(header.exchange, self._is_gdoi(d, header)), header=header)
        if not message.encrypted:
            if header.exchange == n.ExchangeType.IDENTITY_PROTECTION:
                self._sa_for(header).learn(d, message)
            return Record(**base, payloads=message.payloads, notes=self._learn_keks(message.payloads))
        try:
            payloads, padding, detail = self._decrypt(d, message)
        except _NotDecrypted as why:
            return Record(**base, encryption="not-decrypted", detail=str(why))
        except WireError as error:  # no hex dump: the octets are decrypted and may hold keys
            return Record(**base, encryption="decrypted", error=Problem.of(error, None))
        except (CryptoError, _WrongKey) as error:
            return Record(**base, encryption="not-decrypted", error=Problem(str(error)))
        notes = self._learn_keks(payloads)
        return Record(**base, payloads=payloads, padding=len(padding), encryption="decrypted", detail=detail, notes=notes)

    def _sa_for(self, header: Header) -> _IkeSa:
        sa = self._sas.get(header.icookie)
        zero = bytes(8)
        if sa is None or (header.rcookie != zero and sa.rcookie not in (zero, header.rcookie)):
            sa = self._sas[header.icookie] = _IkeSa(header.rcookie)
        elif sa.rcookie == zero:
            sa.rcookie = header.rcookie
        return sa

    def _is_gdoi(self, d: UdpDatagram, header: Header) -> bool:
        """GDOI when on port 848, under a DOI 2 IKE SA, or under a known KEK SPI (RFC 6407 §2.2, §4)."""
        if n.GDOI_PORT in (d.sport, d.dport):
            return True
        sa = self._sas.get(header.icookie)
        if sa is not None and sa.rcookie == header.rcookie:
            return sa.doi == n.DOI.GDOI
        spi = header.icookie + header.rcookie
        return spi in self._keks or spi in self._kek_policy

    def _decrypt(self, d: UdpDatagram, message: Message) -> tuple[tuple[Payload, ...], bytes, str]:
        header = message.header
        sa = self._sas.get(header.icookie)
        if sa is not None and sa.rcookie == header.rcookie:
            return self._decrypt_ike(d, message, sa)
        if header.exchange != n.ExchangeType.GROUPKEY_PUSH:
            raise _NotDecrypted("no Main Mode for these cookies in the capture")
        spi = header.icookie + header.rcookie
        kek = self._keks.get(spi)
        if kek is None:
            raise _NotDecrypted(f"no KEK for SPI {spi.hex()} (give --kek or capture the PULL)")
        payloads, padding = message.decode_plaintext(kek.decrypt(message.ciphertext))
        return payloads, padding, f"with the KEK ({kek.algorithm.name}, {8 * len(kek.key)}-bit)"

    def _decrypt_ike(self, d: UdpDatagram, message: Message, sa: _IkeSa) -> tuple[tuple[Payload, ...], bytes, str]:
        key = self._ike_keys.get(message.header.icookie)
        if key is None:
            raise _NotDecrypted(f"no --ike-key for initiator cookie {message.header.icookie.hex()}")
        if sa.transform is None:
            raise _NotDecrypted("the capture lacks the Main Mode proposal (messages 1-2)")
        suite = _Suite.of(sa.transform)
        if len(key) != suite.key_size:
            raise _WrongKey(
                f"the --ike-key for {message.header.icookie.hex()} is {len(key)} octets; "
                f"this SA uses {suite.describe()} (the cipher key, not SKEYID_e)"
            )
        retransmission = message.ciphertext in sa.ivs_used
        iv = sa.iv(suite, message)
        plaintext = suite.cipher.decrypt(key, iv, message.ciphertext)
        if not retransmission:
            sa.advance(message, iv, suite.cipher.block_size, responder=(d.src, d.sport) != sa.initiator)
        payloads, padding = message.decode_plaintext(plaintext)
        again = ", a retransmission" if retransmission else ""
        return payloads, padding, f"with the IKE SA key ({suite.describe()}{again})"

    def _learn_keks(self, payloads: Sequence[Payload]) -> tuple[str, ...]:
        """Remember SA KEK policies and turn KD KEK packets into KEKs for later PUSHes."""
        notes = []
        for payload in payloads:
            if isinstance(payload, GroupSa) and payload.kek is not None:
                values = {a.type: a.int for a in payload.kek.attributes}
                algorithm = values.get(n.KekAttribute.KEK_ALGORITHM)
                if algorithm is not None:
                    self._kek_policy[payload.kek.spi] = (algorithm, values.get(n.KekAttribute.KEK_KEY_LENGTH))
            if not isinstance(payload, KeyDownload):
                continue
            for packet in payload.packets:
                if packet.kd_type != n.KeyPacketType.KEK:
                    continue
                material = [a.value for a in packet.attributes if a.type == n.KekKeyAttribute.KEK_ALGORITHM_KEY]
                policy = self._kek_policy.get(packet.spi)
                if not material or policy is None:
                    missing = "no KEK_ALGORITHM_KEY" if not material else "no SA KEK announced its algorithm"
                    notes.append(f"KEK for SPI {packet.spi.hex()} not usable: {missing}")
                    continue
                try:
                    kek = Kek.from_material(n.KekAlgorithm(policy[0]), material[0], policy[1])
                except (ValueError, CryptoError) as exc:
                    notes.append(f"KEK for SPI {packet.spi.hex()} not usable: {exc}")
                    continue
                if packet.spi not in self._keks:
                    self._keks[packet.spi] = kek
                    notes.append(f"learned the KEK for SPI {packet.spi.hex()}; later GROUPKEY-PUSH under it will be decrypted")
        return tuple(notes)


def isakmp_bytes(d: UdpDatagram) -> tuple[bytes, bool] | None:
    """The ISAKMP message in ``d`` and whether it came over NAT-T, or None for anything else.

    UDP 500 and 848 carry ISAKMP directly; on 4500 it follows a 4-octet
    non-ESP marker, and anything else there is ESP or a NAT keepalive
    (RFC 3948 §2.2-2.3).
    """
    ports = (d.sport, d.dport)
    if n.IKE_PORT in ports or n.GDOI_PORT in ports:
        return d.payload, False
    if n.NAT_T_PORT in ports and d.payload.startswith(NON_ESP_MARKER):
        return d.payload[len(NON_ESP_MARKER) :], True
    return None


def _header_of(data: bytes) -> Header | None:
    try:
        return Header.decode(data)
    except WireError:
        return None


def hexdump(data: bytes, offset: int, context: int = 32) -> tuple[str, ...]:
    """Rows of 16 octets around ``offset``, with a caret under the octet it names."""
    start = max(0, offset - context) // 16 * 16
    end = min(len(data), offset + context + 1)
    rows = []
    for row in range(start, max(end, start + 1), 16):
        chunk = data[row : row + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        rows.append(f"{row:04x}  {' '.join(f'{b:02x}' for b in chunk):<47}  |{text}|")
        if row <= offset < row + 16:
            rows.append(" " * (6 + 3 * (offset - row)) + "^^")
    if offset >= len(data):
        rows.append(f"(offset {offset} is past the {len(data)} octets captured)")
    return tuple(rows)


def decode_capture(path: Path, ike_keys: dict[bytes, bytes], keks: dict[bytes, Kek]) -> list[Record]:
    decoder = CaptureDecoder(ike_keys, keks)
    return [r for r in map(decoder.feed, read_udp(path)) if r is not None]


def summary(records: Sequence[Record]) -> dict[str, int]:
    return {
        "messages": len(records),
        "decoded": sum(r.ok for r in records),
        "decrypted": sum(r.ok and r.encryption == "decrypted" for r in records),
        "not_decrypted": sum(r.ok and r.encryption == "not-decrypted" for r in records),
        "errors": sum(not r.ok for r in records),
    }


def _render(value: object, key: str | None, indent: str) -> Iterator[str]:
    if isinstance(value, dict):
        if "payload" in value:
            yield f"{indent}{value['payload']}"
            for k, v in value.items():
                if k != "payload":
                    yield from _render(v, k, indent + "  ")
        elif set(value) == {"class", "value"}:
            yield f"{indent}{value['class']} = {value['value']}"
        else:
            yield f"{indent}{key}:"
            for k, v in value.items():
                yield from _render(v, k, indent + "  ")
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        yield f"{indent}{key}:"
        for v in value:
            if isinstance(v, dict) and "payload" not in v and set(v) != {"class", "value"}:
                # A plain record in a list (a key packet): YAML-style "- " before its first field.
                lines = [line for k, item in v.items() for line in _render(item, k, indent + "    ")]
                yield f"{indent}  - {lines[0].lstrip()}"
                yield from lines[1:]
            else:
                yield from _render(v, key, indent + "  ")
    elif isinstance(value, list):
        yield f"{indent}{key}: {', '.join(map(str, value)) or '(none)'}"
    else:
        yield f"{indent}{key}: {value}"


def render_text(records: Sequence[Record]) -> Iterator[str]:
    for r in records:
        yield f"frame {r.frame} at {r.time:.6f}: {r.src}:{r.sport} -> {r.dst}:{r.dport}{' (NAT-T)' if r.nat_t else ''}"
        if r.header is not None:
            h = r.header
            flags = "|".join(f.name for f in n.Flags if f and f in h.flags) or "none"
            yield (
                f"  {r.exchange}  icookie {h.icookie.hex()}  rcookie {h.rcookie.hex()}  "
                f"message-id {h.message_id:08x}  flags {flags}  length {h.length}"
            )
        if r.encryption != "clear":
            yield f"  {r.encryption} {r.detail}".rstrip()
        for payload in r.payloads or ():
            yield from _render(payload.to_dict(), None, "  ")
        if r.padding:
            yield f"  padding: {r.padding} octets"
        for note in r.notes:
            yield f"  note: {note}"
        if r.error is not None:
            where = f"{r.error.payload} at offset {r.error.offset}: " if r.error.payload is not None else ""
            yield f"  ERROR: {where}{r.error.problem}"
            yield from (f"    {row}" for row in r.error.hexdump)
        yield ""
    counts = summary(records)
    yield (
        f"{counts['messages']} messages: {counts['decoded']} decoded ({counts['decrypted']} decrypted, "
        f"{counts['not_decrypted']} left encrypted), {counts['errors']} with errors"
    )


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} is not hexadecimal") from None


def ike_key_argument(text: str) -> tuple[bytes, bytes]:
    """ICOOKIE:KEY, both hex; KEY is the Phase 1 cipher key (Wireshark's "Encryption Key")."""
    cookie, sep, key = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected ICOOKIE:KEY (16 hex digits, colon, key in hex)")
    icookie = _hex(cookie, "ICOOKIE")
    if len(icookie) != 8:
        raise argparse.ArgumentTypeError(f"ICOOKIE must be 8 octets (16 hex digits), got {len(icookie)}")
    secret = _hex(key, "KEY")
    if len(secret) not in (8, 16, 24, 32):
        raise argparse.ArgumentTypeError("KEY must be a DES, 3DES or AES key (8, 16, 24 or 32 octets)")
    return icookie, secret


def kek_argument(text: str) -> tuple[bytes, Kek]:
    """SPI:ALG:KEY: 32 hex digits (CKY-I|CKY-R), des|3des|aes128|aes192|aes256, IV|key in hex."""
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("expected SPI:ALG:KEY, e.g. <32 hex>:aes128:<IV|key hex>")
    spi = _hex(parts[0], "SPI")
    if len(spi) != 16:
        raise argparse.ArgumentTypeError(f"SPI must be 16 octets (32 hex digits), got {len(spi)}")
    if parts[1].lower() not in KEK_ALGORITHMS:
        raise argparse.ArgumentTypeError(f"ALG must be one of {', '.join(KEK_ALGORITHMS)}")
    algorithm, bits = KEK_ALGORITHMS[parts[1].lower()]
    try:
        return spi, Kek.from_material(algorithm, _hex(parts[2], "KEY"), bits)
    except CryptoError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "decode",
        help="print the ISAKMP/GDOI messages in a pcap/pcapng capture",
        description=(
            "Decode every ISAKMP/GDOI message (UDP 500, 848, and 4500 after the non-ESP marker). "
            "32/33/35 get GDOI names on port 848, under a DOI 2 IKE SA or a known KEK SPI, "
            "IPsec DOI names otherwise. Exit status 0 when every message decoded (messages left "
            "encrypted for want of a key count as decoded), 1 otherwise."
        ),
    )
    parser.add_argument("capture", type=Path, help="pcap or pcapng file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--ike-key",
        action="append",
        default=[],
        type=ike_key_argument,
        metavar="ICOOKIE:KEY",
        help="Phase 1 cipher key (hex) for the IKE SA with this initiator cookie; decrypts Main Mode 5-6, "
        "GROUPKEY-PULL and informational exchanges (the capture must hold Main Mode 1-4)",
    )
    parser.add_argument(
        "--kek",
        action="append",
        default=[],
        type=kek_argument,
        metavar="SPI:ALG:KEY",
        help="KEK for GROUPKEY-PUSH: SPI = CKY-I|CKY-R (32 hex), ALG = des|3des|aes128|aes192|aes256, "
        "KEY = KEK_ALGORITHM_KEY in hex (IV then key)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        records = decode_capture(args.capture, dict(args.ike_key), dict(args.kek))
    except CaptureError as exc:
        print(f"groupvpn decode: {exc}", file=sys.stderr)
        return 1
    if args.json:
        document = {
            "capture": str(args.capture),
            "messages": [r.to_dict() for r in records],
            "summary": summary(records),
        }
        print(json.dumps(document, indent=2))
    else:
        print("\n".join(render_text(records)))
    return 0 if all(r.ok for r in records) else 1
