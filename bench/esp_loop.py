"""Per-packet ESP tunnel-mode encrypt + decrypt: scapy's SecurityAssociation against groupvpn's data plane.

Both loops take the inner IPv4 packet as bytes and return bytes, as a data
plane would: encrypt builds the whole header-preserving tunnel packet
(outer IPv4 header copying the inner addresses, protocol 50, SPI,
sequence number, IV, padded and encrypted payload, ICV) and decrypt undoes
it.  groupvpn's loop is the data plane's real ``Encapsulator`` and
``Decapsulator`` (``bench/packet_path.py``'s member, policy lookup and
selector checks included).  Before timing anything each
suite is checked for interoperability both ways (scapy decrypts ours, we
decrypt scapy's), so the two loops provably do the same job.

    python bench/esp_loop.py [--packets 20000] [--scapy-packets 500] [--repeat 5]

Needs the ``bench`` extra (scapy).  Runs on one core, no root needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import benchlib
from packet_path import LAN_A, LAN_B, SIZES, SPI, inner_packet, path_functions

from groupvpn.crypto.suites import EspKeys, EspSuite, esp_suite
from groupvpn.wire.numbers import AuthAlgorithm, EspTransform

try:
    from scapy.layers.inet import IP
    from scapy.layers.ipsec import ESP, SecurityAssociation
except ImportError:
    sys.exit("esp_loop.py needs scapy: pip install -e '.[bench]'")


@dataclass(frozen=True)
class Case:
    """One ESP transform as scapy and groupvpn each name it."""

    label: str
    suite: EspSuite
    scapy_crypt: str
    scapy_auth: str | None


CASES = (
    Case(
        "AES-128-CBC + HMAC-SHA1-96",
        esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA1),
        "AES-CBC",
        "HMAC-SHA1-96",
    ),
    Case(
        "AES-256-CBC + HMAC-SHA-256-128",
        esp_suite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256),
        "AES-CBC",
        "SHA2-256-128",
    ),
    Case("AES-128-GCM-16", esp_suite(EspTransform.AES_GCM_16, 128), "AES-GCM", None),
)


def scapy_sa(case: Case, keys: EspKeys) -> SecurityAssociation:
    return SecurityAssociation(
        ESP,
        spi=SPI,
        crypt_algo=case.scapy_crypt,
        crypt_key=keys.encryption,
        auth_algo=case.scapy_auth,
        auth_key=keys.integrity or None,
        tunnel_header=IP(src=str(LAN_A[2]), dst=str(LAN_B[2])),
    )


def scapy_encrypt(sa: SecurityAssociation) -> Callable[[bytes], bytes]:
    return lambda inner: bytes(sa.encrypt(IP(inner)))


def scapy_decrypt(sa: SecurityAssociation) -> Callable[[bytes], bytes]:
    return lambda packet: bytes(sa.decrypt(IP(packet)))


def check_interop(
    case: Case, theirs: SecurityAssociation, encrypt: Callable[[bytes], bytes], decrypt: Callable[[bytes], bytes]
) -> None:
    for size in SIZES:
        inner = inner_packet(size)
        if scapy_decrypt(theirs)(encrypt(inner)) != inner:
            sys.exit(f"{case.label}: scapy does not decrypt groupvpn's ESP to the original packet")
        if decrypt(scapy_encrypt(theirs)(inner)) != inner:
            sys.exit(f"{case.label}: groupvpn does not decrypt scapy's ESP to the original packet")


def timed(
    encrypt: Callable[[bytes], bytes], decrypt: Callable[[bytes], bytes], inner: bytes, count: int
) -> tuple[float, float]:
    """µs per packet to encrypt ``count`` packets, then to decrypt them all."""
    packets = [inner] * count
    started = time.perf_counter()
    sealed = [encrypt(packet) for packet in packets]
    middle = time.perf_counter()
    opened = [decrypt(packet) for packet in sealed]
    finished = time.perf_counter()
    if opened[-1] != inner:
        sys.exit("a timed round trip did not give back the original packet")
    return (middle - started) / count * 1e6, (finished - middle) / count * 1e6


def measure(
    encrypt: Callable[[bytes], bytes], decrypt: Callable[[bytes], bytes], inner: bytes, count: int, repeat: int
) -> tuple[float, float]:
    runs = [timed(encrypt, decrypt, inner, count) for _ in range(repeat)]
    return benchlib.median([r[0] for r in runs]), benchlib.median([r[1] for r in runs])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=20000, help="groupvpn packets per timed run")
    parser.add_argument("--scapy-packets", type=int, default=500, help="scapy packets per timed run (about 1 ms each)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per cell; the median is reported")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, like one data-plane worker
    conditions = benchlib.machine()  # before the run: the load average it started under

    rows = []
    for case in CASES:
        keys = case.suite.generate_keys()
        theirs = scapy_sa(case, keys)
        check_interop(case, theirs, *path_functions(case.suite, keys))
        for size in SIZES:
            inner = inner_packet(size)
            s_enc, s_dec = measure(scapy_encrypt(theirs), scapy_decrypt(theirs), inner, args.scapy_packets, args.repeat)
            g_enc, g_dec = measure(*path_functions(case.suite, keys), inner, args.packets, args.repeat)
            rows.append(
                [
                    case.label,
                    f"{size} B",
                    f"{s_enc:.1f} / {s_dec:.1f}",
                    f"{g_enc:.2f} / {g_dec:.2f}",
                    f"{1e6 / (s_enc + s_dec):,.0f}",
                    f"{1e6 / (g_enc + g_dec):,.0f}",
                    benchlib.ratio(s_enc + s_dec, g_enc + g_dec),
                ]
            )
    print("\n".join(conditions))
    print(
        f"command: python bench/esp_loop.py --packets {args.packets} --scapy-packets {args.scapy_packets} --repeat {args.repeat}"
    )
    print("interop: scapy decrypts groupvpn's packets and groupvpn decrypts scapy's, every suite and size\n")
    print(
        benchlib.table(
            [
                "suite",
                "inner packet",
                "scapy enc / dec µs",
                "groupvpn enc / dec µs",
                "scapy round trips/s",
                "groupvpn round trips/s",
                "groupvpn / scapy (round trips/s)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
