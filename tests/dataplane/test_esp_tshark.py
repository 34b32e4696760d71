"""Wireshark's tshark 4.0 decrypts the ESP packets we build (lab notes §1.5, ``esp_sa`` UAT).

For each suite tshark has, one IPv4 and one IPv6 header-preserving packet
go into a raw-IP pcap; tshark must verify the ICV, find the inner packet
and show the same addresses outside and inside.  A packet with the
timestamp shim decrypts too (tshark cannot look inside the project's
shim and shows it and the inner packet as data), and a tampered packet
shows ``icv_bad``.
"""

from __future__ import annotations

from pathlib import Path

from dataplane_packets import NOW, keys_for, make_sa, udp, write_raw_pcap
from tshark import read_fields, requires_tshark

from groupvpn.crypto.suites import EspSuite, esp_suite
from groupvpn.dataplane.esp_path import Encapsulator, EspSa
from groupvpn.dataplane.spd import Spd
from groupvpn.ops.export import PROTOCOLS, UAT_OPTION, esp_sa_row
from groupvpn.wire.esp import encode_timestamp_shim, ntp_timestamp
from groupvpn.wire.numbers import AuthAlgorithm, EspTransform

pytestmark = requires_tshark

SUITES = [
    esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA1),
    esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256),
    esp_suite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_512),
    esp_suite(EspTransform.AES_CBC, 192, AuthAlgorithm.HMAC_SHA2_384),
    esp_suite(EspTransform.TRIPLE_DES, None, AuthAlgorithm.HMAC_MD5),
    esp_suite(EspTransform.DES, None, AuthAlgorithm.HMAC_SHA1),
    esp_suite(EspTransform.AES_GCM_16, 128),
    esp_suite(EspTransform.AES_GCM_16, 256),
    esp_suite(EspTransform.AES_GCM_8, 128),
    esp_suite(EspTransform.AES_GCM_12, 192),
]
FIELDS = [
    "esp.spi", "esp.icv_good", "esp.icv_bad", "esp.protocol", "esp.decrypted_data", "esp.contained_data",
    "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "udp.dstport",
]  # fmt: skip


def protect(sa: EspSa, packet: bytes) -> bytes:
    out: list[bytes] = []
    assert Encapsulator(Spd(), 1500).protect(sa, packet, NOW, out) is None
    return out[0]


def tshark_frames(tmp_path: Path, sas: list[EspSa], packets: list[bytes]):
    prefs = ["esp.enable_encryption_decode:TRUE", "esp.enable_authentication_check:TRUE"]
    rows = [
        UAT_OPTION + esp_sa_row(protocol, sa.spi, sa.config.suite, keys_for(sa.config.suite))
        for sa in sas
        for protocol in PROTOCOLS
    ]
    return read_fields(write_raw_pcap(tmp_path / "esp.pcap", packets), FIELDS, prefs=[*prefs, *rows])


def _sa(suite: EspSuite, index: int, **config: object) -> EspSa:
    return make_sa(suite, spi=0x5000 + index, **config)


def test_tshark_decrypts_every_suite_over_ipv4_and_ipv6(tmp_path: Path) -> None:
    sas = [_sa(suite, i) for i, suite in enumerate(SUITES)]
    inner4 = udp("198.18.1.5", "198.18.2.9", dport=6004)
    inner6 = udp("2001:db8:1::5", "2001:db8:2::9", dport=6006)
    packets = [protect(sa, inner) for sa in sas for inner in (inner4, inner6)]
    frames = tshark_frames(tmp_path, sas, packets)
    assert len(frames) == len(packets)
    for frame, (sa, version) in zip(frames, [(sa, v) for sa in sas for v in (4, 6)], strict=True):
        name = f"{sa.config.suite.name} IPv{version}"
        assert frame.ints("esp.spi") == (sa.spi,), name
        assert frame.ints("esp.icv_good") == (1,) and frame.ints("esp.icv_bad") == (0,), name
        assert frame.ints("esp.protocol") == ((4,) if version == 4 else (41,)), name
        if version == 4:
            assert frame.values("ip.src") == ("198.18.1.5",) * 2 and frame.values("ip.dst") == ("198.18.2.9",) * 2, name
            assert frame.ints("udp.dstport") == (6004,), name
        else:
            assert frame.values("ipv6.src") == ("2001:db8:1::5",) * 2, name
            assert frame.values("ipv6.dst") == ("2001:db8:2::9",) * 2, name
            assert frame.ints("udp.dstport") == (6006,), name
        assert frame.clean, (name, frame.expert)


def test_tshark_sees_the_timestamp_shim_and_a_tampered_icv(tmp_path: Path) -> None:
    stamped = _sa(SUITES[0], 0, replay_window=10)
    plain = _sa(SUITES[1], 1)
    tampered = bytearray(protect(plain, udp()))
    tampered[-1] ^= 0x80
    frames = tshark_frames(tmp_path, [stamped, plain], [protect(stamped, udp()), bytes(tampered)])
    # tshark verifies the ICV and strips the padding, but without a dissector for Next Header 253
    # it shows the shim and the inner packet as data
    assert frames[0].ints("esp.icv_good") == (1,)
    assert frames[0].hexes("esp.decrypted_data")[0][-1] == 253
    assert frames[0].hexes("esp.contained_data") == (encode_timestamp_shim(4, ntp_timestamp(NOW)) + udp(),)
    assert frames[0].values("ip.src") == ("198.18.1.1",)
    assert frames[1].ints("esp.icv_good") == (0,) and frames[1].ints("esp.icv_bad") == (1,)
