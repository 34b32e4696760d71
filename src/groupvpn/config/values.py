"""Configuration values: the text of one value to a number, address, prefix, protocol or registry entry.

Each parser takes one value's text and returns it typed, or raises
``ValueError`` saying what was expected; the model adds which statement
and where.  Parsing is stricter than Python's constructors: ``int`` would
take ``+1``, ``1_000`` and non-ASCII digits, none of which Junos accepts.

The name tables map Junos keywords to registry numbers; the schema takes
its choices from them, so a keyword is accepted exactly when it maps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path, PurePosixPath

from ..wire.numbers import (
    AuthAlgorithm,
    DhGroup,
    EncryptionAlgorithm,
    EspTransform,
    HashAlgorithm,
    KekAlgorithm,
    PolicyAction,
    SigHashAlgorithm,
)

Address = IPv4Address | IPv6Address
Prefix = IPv4Network | IPv6Network

MAX_UINT32 = 0xFFFFFFFF

# -- names of algorithms ----------------------------------------------------------

_CBC_KEY_BITS = {"aes-128-cbc": 128, "aes-192-cbc": 192, "aes-256-cbc": 256}

IKE_CIPHERS: dict[str, tuple[EncryptionAlgorithm, int | None]] = {
    "des-cbc": (EncryptionAlgorithm.DES_CBC, None),
    "3des-cbc": (EncryptionAlgorithm.TRIPLE_DES_CBC, None),
    **{name: (EncryptionAlgorithm.AES_CBC, bits) for name, bits in _CBC_KEY_BITS.items()},
}
IKE_HASHES = {
    "md5": HashAlgorithm.MD5,
    "sha1": HashAlgorithm.SHA1,
    "sha-256": HashAlgorithm.SHA2_256,
    "sha-384": HashAlgorithm.SHA2_384,
}
DH_GROUPS = {
    "group1": DhGroup.MODP_768,
    "group2": DhGroup.MODP_1024,
    "group5": DhGroup.MODP_1536,
    "group14": DhGroup.MODP_2048,
    "group15": DhGroup.MODP_3072,
    "group16": DhGroup.MODP_4096,
    "group19": DhGroup.ECP_256,
    "group20": DhGroup.ECP_384,
    "group21": DhGroup.ECP_521,
}
# KEK ciphers are CBC (RFC 6407 §5.3.2); single DES is left out (SHOULD NOT, §6).
KEK_CIPHERS: dict[str, tuple[KekAlgorithm, int | None]] = {
    "3des-cbc": (KekAlgorithm.TRIPLE_DES, None),
    **{name: (KekAlgorithm.AES, bits) for name, bits in _CBC_KEY_BITS.items()},
}
SIG_HASHES = {
    "sha1": SigHashAlgorithm.SHA1,
    "sha-256": SigHashAlgorithm.SHA256,
    "sha-384": SigHashAlgorithm.SHA384,
    "sha-512": SigHashAlgorithm.SHA512,
}
# Junos GCM is the 16-octet ICV variant.
ESP_CIPHERS: dict[str, tuple[EspTransform, int]] = {
    "des-cbc": (EspTransform.DES, 64),
    "3des-cbc": (EspTransform.TRIPLE_DES, 192),
    **{name: (EspTransform.AES_CBC, bits) for name, bits in _CBC_KEY_BITS.items()},
    **{f"aes-{bits}-gcm": (EspTransform.AES_GCM_16, bits) for bits in _CBC_KEY_BITS.values()},
}
ESP_INTEGRITY = {
    "hmac-md5-96": AuthAlgorithm.HMAC_MD5,
    "hmac-sha1-96": AuthAlgorithm.HMAC_SHA1,
    "hmac-sha-256-128": AuthAlgorithm.HMAC_SHA2_256,
    "hmac-sha-384-192": AuthAlgorithm.HMAC_SHA2_384,
    "hmac-sha-512-256": AuthAlgorithm.HMAC_SHA2_512,
}

ACTIONS = {"permit": PolicyAction.PERMIT, "deny": PolicyAction.DENY}


# -- keyword choices -----------------------------------------------------------------


class Direction(Enum):
    """Traffic entering (``input``) or leaving (``output``) an interface."""

    INPUT = "input"
    OUTPUT = "output"


class DfBit(Enum):
    """The outer header's DF bit: cleared, set, or copied from the inner packet."""

    CLEAR = "clear"
    SET = "set"
    COPY = "copy"


class CommunicationType(Enum):
    """How GROUPKEY-PUSH messages reach members: to each member, or to a multicast group."""

    UNICAST = "unicast"
    MULTICAST = "multicast"


class FilterAction(Enum):
    """A service filter term's terminating action: the service set processes the packet, or it bypasses it."""

    SERVICE = "service"
    SKIP = "skip"


class AckMode(Enum):
    """Whether pushes ask for RFC 8263 acknowledgements, in the registered class 9 or legacy 129."""

    RFC8263 = "rfc8263"
    LEGACY = "legacy"
    NONE = "none"


def choices(enum: type[Enum]) -> tuple[str, ...]:
    """An enum's keywords, for the schema."""
    return tuple(member.value for member in enum)


_DIGITS = re.compile(r"[0-9]{1,20}")

# IANA protocol numbers by the names Junos accepts in firewall terms, for the common ones.
PROTOCOLS = {
    "icmp": 1,
    "igmp": 2,
    "ipip": 4,
    "tcp": 6,
    "egp": 8,
    "udp": 17,
    "rsvp": 46,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmp6": 58,
    "ospf": 89,
    "pim": 103,
    "vrrp": 112,
    "sctp": 132,
}


# Port numbers by the names Junos accepts in firewall terms, for the control protocols a bypass is for.
PORTS = {
    "bgp": 179,
    "bootpc": 68,
    "bootps": 67,
    "dhcp": 67,
    "domain": 53,
    "ftp": 21,
    "ftp-data": 20,
    "http": 80,
    "https": 443,
    "ldap": 389,
    "ldp": 646,
    "msdp": 639,
    "ntp": 123,
    "radacct": 1813,
    "radius": 1812,
    "rip": 520,
    "snmp": 161,
    "snmptrap": 162,
    "ssh": 22,
    "syslog": 514,
    "tacacs": 49,
    "telnet": 23,
    "tftp": 69,
}
# Linux ip rules refuse port 0 (it means "no port range") and ranges reaching 65535.
RULE_PORTS = (1, 0xFFFE)


def integer(low: int, high: int) -> Callable[[str], int]:
    """A parser of decimal integers from ``low`` to ``high``."""

    def parse(text: str) -> int:
        if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
            raise ValueError(f"expected a number from {low} to {high}")
        return int(text)

    return parse


port = integer(0, 0xFFFF)
service_port = integer(1, 0xFFFF)


def address(text: str) -> Address:
    """An IPv4 or IPv6 address."""
    try:
        return ip_address(text)
    except ValueError:
        raise ValueError("expected an IPv4 or IPv6 address") from None


def prefix(text: str) -> Prefix:
    """``address/length``, or an address alone meaning that host.

    Host bits are cleared, as Junos does (the seed writes ``198.51.100.1/24``).
    """
    try:
        return ip_network(text, strict=False)
    except ValueError:
        raise ValueError("expected an IPv4 or IPv6 prefix (address/length)") from None


InterfaceAddress = IPv4Interface | IPv6Interface


def _interface_address(text: str, version: int) -> InterfaceAddress:
    try:
        interface = ip_interface(text)
    except ValueError:
        interface = None
    if interface is None or interface.version != version or "/" not in text:
        raise ValueError(f"expected an IPv{version} address/length")
    return interface


def inet_address(text: str) -> InterfaceAddress:
    """An interface address of ``family inet``: IPv4 ``address/length``."""
    return _interface_address(text, 4)


def inet6_address(text: str) -> InterfaceAddress:
    """An interface address of ``family inet6``: IPv6 ``address/length``."""
    return _interface_address(text, 6)


def absolute_path(text: str) -> Path:
    """A file path; absolute, since a daemon does not keep the directory it was started in."""
    if not PurePosixPath(text).is_absolute() or "\0" in text or text.endswith("/"):
        raise ValueError("expected an absolute file path")
    return Path(text)


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def instance_name(text: str) -> str:
    """A routing instance: the network namespace a daemon's sockets live in."""
    if not _NAME.fullmatch(text):
        raise ValueError("expected a name of up to 64 letters, digits, '_', '.' and '-'")
    return text


def interface_name(text: str) -> str:
    """A Linux interface name (what the kernel's dev_valid_name accepts)."""
    if not 0 < len(text) < 16 or text in (".", "..") or any(c in "/:" or c.isspace() for c in text):
        raise ValueError("expected a Linux interface name: 1 to 15 characters without '/', ':' or spaces")
    return text


def protocol(text: str) -> int:
    """An IP protocol: a name (``tcp``) or its number, 0 meaning any."""
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    try:
        return integer(0, 255)(text)
    except ValueError:
        raise ValueError(f"expected a protocol number from 0 to 255 or one of: {', '.join(PROTOCOLS)}") from None


def filter_protocol(text: str) -> int:
    """A firewall term's protocol: a name (``ospf``) or a number from 1 to 255 (0 would mean any to ip rules)."""
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    try:
        return integer(1, 255)(text)
    except ValueError:
        raise ValueError(f"expected a protocol number from 1 to 255 or one of: {', '.join(PROTOCOLS)}") from None


def port_range(text: str) -> tuple[int, int]:
    """A firewall term's port: a number, ``low-high``, or a name (``bgp``), within what ip rules match."""
    if text in PORTS:
        return PORTS[text], PORTS[text]
    number = integer(*RULE_PORTS)
    low_text, dash, high_text = text.partition("-")
    try:
        low = number(low_text)
        high = number(high_text) if dash else low
    except ValueError:
        low = high = -1
    if not 0 < low <= high:
        raise ValueError(
            f"expected a port from {RULE_PORTS[0]} to {RULE_PORTS[1]}, a range 'low-high' of them, or one of: "
            f"{', '.join(PORTS)} (Linux ip rules cannot match port 0 or 65535)"
        )
    return low, high
