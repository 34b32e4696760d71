"""Per-packet cost of the data plane's real ESP path: ``Encapsulator.process`` and ``Decapsulator.process``.

Each row times a whole packet the way a worker handles it (policy lookup,
header-preserving ESP with the outer IPv4 header, and on the way back the
outer checks, ICV, trailer, inner sanity and the SA's selectors), in µs per
packet, beside baselines measured in the same run on the same CPU:

* the bare cipher call (``AESGCM.encrypt``/``decrypt``, or CBC ``update``
  plus a pre-keyed HMAC) on the padded plaintext: the floor Python can reach;
* the same path over a null context (framing, policy and checks, no crypto):
  what the Python around the cipher costs;
* scapy's ``SecurityAssociation`` (when scapy is installed), the anchor of
  ``bench/esp_loop.py``.

Usage: ``python bench/packet_path.py [--packets N] [--repeat R] [--cpu C]``.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from collections.abc import Callable
from importlib.util import find_spec
from ipaddress import IPv4Network

import benchlib

from groupvpn.crypto.suites import EspKeys, EspSuite, esp_suite
from groupvpn.dataplane.esp_path import Decapsulator, Encapsulator, EspSa, SaConfig
from groupvpn.dataplane.spd import Rule, Selector, Spd
from groupvpn.wire.esp import TRAILER_SIZE
from groupvpn.wire.ip import checksum
from groupvpn.wire.numbers import AuthAlgorithm, EspTransform, IpProtocol

SPI = 0x47560002
LAN_A, LAN_B = IPv4Network("198.19.1.0/24"), IPv4Network("198.19.2.0/24")
SRC, DST = LAN_A[2].packed, LAN_B[2].packed
SIZES = (64, 1400)
SUITES = (
    ("AES-128-GCM-16", esp_suite(EspTransform.AES_GCM_16, 128)),
    ("AES-256-CBC + HMAC-SHA-256-128", esp_suite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256)),
)
MTU = 1500


def inner_packet(size: int) -> bytes:
    """An IPv4/UDP packet of ``size`` octets from host A to host B (DF set, valid header checksum)."""
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 1, 0x4000, 64, IpProtocol.UDP, 0, SRC, DST))
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header) + struct.pack("!HHHH", 5201, 5201, size - 20, 0) + bytes(size - 28)


class NullContext:
    """An ESP context without cryptography: IV | plaintext | zero ICV, for the framing baseline."""

    def __init__(self, suite: EspSuite) -> None:
        self.iv, self.icv = suite.iv_size, bytes(suite.icv_size)

    def seal(self, header8: bytes, plaintext: bytes, iv: bytes) -> bytes:
        return b"".join((iv, plaintext, self.icv))

    def open(self, header8: bytes, body: bytes) -> bytes:
        return body[self.iv : len(body) - len(self.icv)]


def member(suite: EspSuite, keys: EspKeys, null: bool) -> tuple[Encapsulator, Decapsulator]:
    """One member's encrypt and decrypt paths for LAN A <-> LAN B under one SA, selectors as a member installs them."""
    a_to_b, b_to_a = Selector(LAN_A, LAN_B), Selector(LAN_B, LAN_A)
    sa = EspSa(SaConfig(SPI, suite, keys, selectors=(a_to_b, b_to_a)))
    if null:
        sa.context = NullContext(suite)
    spd = Spd([Rule("a-b", a_to_b), Rule("b-a", b_to_a)])
    spd.set_sa("a-b", sa)
    return Encapsulator(spd, MTU, ip_id=0), Decapsulator([sa])


def path_functions(
    suite: EspSuite, keys: EspKeys, null: bool = False
) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """The member's ``Encapsulator.process`` and ``Decapsulator.process`` as bytes -> bytes."""
    encapsulator, decapsulator = member(suite, keys, null)

    def encrypt(packet: bytes) -> bytes:
        out: list[bytes] = []
        if encapsulator.process(packet, 0.0, out) is not None or len(out) != 1:
            sys.exit("the encapsulator did not produce one ESP packet")
        return out[0]

    def decrypt(packet: bytes) -> bytes:
        inner = decapsulator.process(packet, 0.0)
        if type(inner) is not bytes:
            sys.exit(f"the decapsulator dropped the packet: {inner}")
        return inner

    return encrypt, decrypt


def cipher_functions(suite: EspSuite, size: int) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """The bare cipher calls on a padded plaintext of the right size (what no Python framing can beat)."""
    keys = suite.generate_keys()
    padded = size + suite.pad_length(size) + TRAILER_SIZE
    aad = bytes(8)
    if suite.counter_mode:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead, nonce = AESGCM(keys.encryption[:-4]), bytes(12)
        ciphertext = aead.encrypt(nonce, bytes(padded), aad)
        return (lambda _: aead.encrypt(nonce, bytes(padded), aad)), (lambda _: aead.decrypt(nonce, ciphertext, aad))
    from cryptography.hazmat.primitives import hmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    assert suite.integrity is not None
    encryptor = Cipher(algorithms.AES(keys.encryption), modes.CBC(bytes(16))).encryptor()
    decryptor = Cipher(algorithms.AES(keys.encryption), modes.CBC(bytes(16))).decryptor()
    keyed = hmac.HMAC(keys.integrity, suite.integrity.hash())
    plain = bytes(padded)

    def mac(data: bytes) -> bytes:
        h = keyed.copy()
        h.update(data)
        return h.finalize()

    def decrypt(_: bytes) -> bytes:
        mac(plain)
        return decryptor.update(plain)

    return (lambda _: mac(encryptor.update(plain))), decrypt


def per_packet(function: Callable[[bytes], bytes], packet: bytes, count: int, repeat: int) -> float:
    """The fastest of ``repeat`` runs, in CPU µs per call of ``function(packet)``.

    CPU time and the fastest run, not wall time and the median: on a shared
    machine other jobs deschedule the process and evict its caches, which
    only ever adds time that says nothing about the packet path.
    """
    runs = []
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(count):
            function(packet)
        runs.append((time.process_time() - started) / count * 1e6)
    return min(runs)


def scapy_functions(suite: EspSuite, label: str) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]] | None:
    if find_spec("scapy") is None:
        return None
    import esp_loop

    case = next(case for case in esp_loop.CASES if case.label == label)
    sa = esp_loop.scapy_sa(case, suite.generate_keys())
    return esp_loop.scapy_encrypt(sa), esp_loop.scapy_decrypt(sa)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=20000, help="packets per timed run")
    parser.add_argument("--scapy-packets", type=int, default=300, help="packets per timed scapy run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per cell (the fastest is reported)")
    parser.add_argument("--cpu", type=int, default=os.cpu_count() - 1 if os.cpu_count() else 0, help="CPU to pin to")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    print("\n".join(benchlib.machine()))
    print(f"command: {' '.join(sys.argv)}\n")
    rows = []
    for label, suite in SUITES:
        for size in SIZES:
            inner = inner_packet(size)
            ours = path_functions(suite, suite.generate_keys())
            null = path_functions(suite, suite.generate_keys(), null=True)
            esp, null_esp = ours[0](inner), null[0](inner)
            if ours[1](esp) != inner or null[1](null_esp) != inner:
                sys.exit(f"{label} {size} B: a round trip did not give back the original packet")
            bare = cipher_functions(suite, size)
            enc, dec = (per_packet(ours[0], inner, args.packets, args.repeat),
                        per_packet(ours[1], esp, args.packets, args.repeat))
            null_enc, null_dec = (per_packet(null[0], inner, args.packets, args.repeat),
                                  per_packet(null[1], null_esp, args.packets, args.repeat))
            bare_enc, bare_dec = (per_packet(bare[0], inner, args.packets, args.repeat),
                                  per_packet(bare[1], inner, args.packets, args.repeat))
            scapy = scapy_functions(suite, label)
            scapy_cell = "-"
            if scapy is not None:
                scapy_enc = per_packet(scapy[0], inner, args.scapy_packets, args.repeat)
                scapy_dec = per_packet(scapy[1], scapy[0](inner), args.scapy_packets, args.repeat)
                scapy_cell = f"{scapy_enc:.1f} / {scapy_dec:.1f}"
            rows.append([
                label, f"{size} B", f"{enc:.2f} / {dec:.2f}", f"{1e6 / enc:,.0f} / {1e6 / dec:,.0f}",
                f"{bare_enc:.2f} / {bare_dec:.2f}", f"{benchlib.ratio(enc, bare_enc)} / {benchlib.ratio(dec, bare_dec)}",
                f"{null_enc:.2f} / {null_dec:.2f}", f"{benchlib.ratio(enc, null_enc)} / {benchlib.ratio(dec, null_dec)}",
                scapy_cell,
            ])
    print(benchlib.table(
        ["suite", "inner packet", "path enc / dec µs", "path enc / dec packets/s per core", "bare cipher µs", "path / cipher",
         "null framing µs", "path / null", "scapy enc / dec µs"],
        rows,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
