"""Semantic problems: each one reported once, at the line and column of the value or statement at fault.

Every case adds ``set`` lines to a valid configuration; a problem is
expected at the first line containing ``line`` (an added one unless said
otherwise), at the column where ``token`` starts on it.
"""

from pathlib import Path
from typing import NamedTuple

import pytest

from groupvpn.config.errors import ConfigError
from groupvpn.config.junos import parse, render_set
from groupvpn.config.model import Role, load
from groupvpn.config.schema import SERVER
from groupvpn.config.values import PORTS, PROTOCOLS

FIXTURES = Path(__file__).parent / "fixtures"
MEMBER_BASE = (
    (FIXTURES / "member.set").read_text().replace("deactivate security group-vpn member ipsec vpn lan fail-open\n", "")
)
SERVER_BASE = render_set(parse((FIXTURES / "server.conf").read_text(), SERVER))
M = "set security group-vpn member "
S = "set security group-vpn server "
KEY = '"twenty characters or more"'
F = "set firewall family inet service-filter f "
PORTS_NEED = (
    "'destination-port' in term x of inet service-filter f needs protocols that have ports, and only those (tcp, "
    "udp, 33 (dccp), sctp, 136 (udp_lite)): ip rules read other protocols' first octets as ports (ESP's SPI)"
)
ONE_FILTER = (
    "one filter applies per direction and family (the steering cannot tell the interfaces of a direction apart)"
)
OTHER_KEY = '"another twenty-character key"'


class At(NamedTuple):
    line: str
    token: str
    message: str


def problems(text: str, role: Role) -> list[tuple[int, int, str]]:
    with pytest.raises(ConfigError) as caught:
        load(text, role)
    return [(p.line, p.column, p.message) for p in caught.value.problems]


def expected(text: str, found: list[At]) -> list[tuple[int, int, str]]:
    lines = text.split("\n")
    out = []
    for at in found:
        number = next(n for n, line in enumerate(lines, 1) if at.line in line)
        out.append((number, lines[number - 1].index(at.token) + 1, at.message))
    return sorted(out)


def rules(count: int) -> list[str]:
    return [
        f"{M}ipsec vpn lan fail-open rule r{n} {end}-address 10.{n}.0.0/16"
        for n in range(1, count + 1)
        for end in ("source", "destination")
    ]


MEMBER_CASES = {
    "group id zero": (
        [f"{M}ipsec vpn lan group 0"],
        [At("group 0", "0", "invalid value '0' for 'group' (expected a number from 1 to 4294967295)")],
    ),
    "group id beyond 32 bits": (
        [f"{M}ipsec vpn lan group 4294967296"],
        [
            At(
                "group 4294967296",
                "4294967296",
                "invalid value '4294967296' for 'group' (expected a number from 1 to 4294967295)",
            )
        ],
    ),
    "group id not a number": (
        [f"{M}ipsec vpn lan group +12"],
        [At("group +12", "+12", "invalid value '+12' for 'group' (expected a number from 1 to 4294967295)")],
    ),
    "a fifth server": (
        [f"{M}ike gateway ks-pair server-address [ 198.18.0.9 198.18.0.13 198.18.0.17 ]"],
        [At("198.18.0.17", "198.18.0.17", "5 server addresses; at most 4 are allowed")],
    ),
    "a server name": (
        [f"{M}ike gateway ks-pair server-address ks1.example"],
        [
            At(
                "ks1.example",
                "ks1.example",
                "invalid value 'ks1.example' for 'server-address' (expected an IPv4 or IPv6 address)",
            )
        ],
    ),
    "an IPv6 server for an IPv4 member": (
        [f"{M}ike gateway ks-pair server-address 2001:db8::1"],
        [At("2001:db8::1", "2001:db8::1", "'2001:db8::1' is IPv6 but local-address is IPv4")],
    ),
    "an undefined ike policy": (
        [f"{M}ike gateway ks-pair ike-policy nope"],
        [At("ike-policy nope", "nope", "undefined ike policy 'nope' (defined: ks)")],
    ),
    "an undefined proposal": (
        [f"{M}ike policy ks proposals missing"],
        [At("proposals missing", "missing", "undefined ike proposal 'missing' (defined: psk-sha256-dh14-aes128)")],
    ),
    "a short IKE lifetime": (
        [f"{M}ike proposal psk-sha256-dh14-aes128 lifetime-seconds 179"],
        [
            At(
                "lifetime-seconds 179",
                "179",
                "invalid value '179' for 'lifetime-seconds' (expected a number from 180 to 86400)",
            )
        ],
    ),
    "a proposal without a DH group": (
        [f"{M}ike proposal p2 encryption-algorithm aes-256-cbc", f"{M}ike proposal p2 authentication-algorithm sha1"],
        [At("proposal p2 encryption", "proposal p2", "missing 'dh-group' in ike proposal p2")],
    ),
    "a short key": (
        [f'{M}ike policy ks pre-shared-key ascii-text "twelve chars"'],
        [At("twelve", '"twelve', "pre-shared key for policy ks has 12 characters; at least 20 are required")],
    ),
    "two forms of key": (
        [f"{M}ike policy ks pre-shared-key hexadecimal {'ab' * 20}"],
        [
            At(
                "pre-shared-key ascii-text",
                "pre-shared-key",
                "pre-shared key for policy ks: give one of ascii-text and hexadecimal, not both",
            )
        ],
    ),
    "a short hexadecimal key": (
        [f"{M}ike policy h proposals psk-sha256-dh14-aes128", f"{M}ike policy h pre-shared-key hexadecimal 00112233"],
        [At("hexadecimal 00112233", "00112233", "pre-shared key for policy h has 4 octets; at least 20 are required")],
    ),
    "a key that is not hexadecimal": (
        [
            f"{M}ike policy h proposals psk-sha256-dh14-aes128",
            f"{M}ike policy h pre-shared-key hexadecimal {'0g' * 20}",
        ],
        [At("hexadecimal 0g", "0g", "pre-shared key for policy h is not hexadecimal (pairs of digits 0-9, a-f)")],
    ),
    "a Junos obfuscated key": (
        [f'{M}ike policy ks pre-shared-key ascii-text "$9$dQbYoGUjqf5Qn6An3Ca0BRhSeW"'],
        [
            At(
                "$9$",
                '"$9$',
                "pre-shared key for policy ks is Junos '$9$' obfuscated text, which groupvpn does not decode; give the key itself",
            )
        ],
    ),
    "an eleventh fail-open rule": (
        rules(10),
        [At("rule r10 source", "rule r10", "11th fail-open rule in ipsec vpn lan; at most 10 are allowed")],
    ),
    "a fail-open rule without a destination": (
        [f"{M}ipsec vpn lan fail-open rule half source-address 10.9.0.0/16"],
        [At("rule half", "rule half", "missing 'destination-address' in fail-open rule half of ipsec vpn lan")],
    ),
    "a fail-open rule across IP versions": (
        [
            f"{M}ipsec vpn lan fail-open rule mixed source-address 2001:db8::/32",
            f"{M}ipsec vpn lan fail-open rule mixed destination-address 10.9.0.0/16",
        ],
        [At("mixed destination", "10.9.0.0/16", "'10.9.0.0/16' is IPv4 but source-address is IPv6")],
    ),
    "a fail-open prefix too long": (
        [f"{M}ipsec vpn lan fail-open rule ntp source-address 10.1.0.0/33"],
        [
            At(
                "10.1.0.0/33",
                "10.1.0.0/33",
                "invalid value '10.1.0.0/33' for 'source-address' (expected an IPv4 or IPv6 prefix (address/length))",
            )
        ],
    ),
    "two VPNs for one group": (
        [f"{M}ipsec vpn lan2 ike-gateway ks-pair", f"{M}ipsec vpn lan2 group 1234"],
        [At("lan2 group 1234", "1234", "group 1234 is already the group of ipsec vpn lan")],
    ),
    "an undefined gateway": (
        [f"{M}ipsec vpn lan ike-gateway elsewhere"],
        [At("ike-gateway elsewhere", "elsewhere", "undefined ike gateway 'elsewhere' (defined: ks-pair)")],
    ),
    "a VPN without a group": (
        [f"{M}ipsec vpn lan2 ike-gateway ks-pair"],
        [At("vpn lan2", "vpn lan2", "missing 'group' in ipsec vpn lan2")],
    ),
    "a gateway without a local address": (
        [f"{M}ike gateway g2 ike-policy ks", f"{M}ike gateway g2 server-address 198.18.0.1"],
        [At("gateway g2 ike-policy", "gateway g2", "missing 'local-address' in ike gateway g2")],
    ),
    "a routing instance that is not a name": (
        [f'{M}ike gateway ks-pair local-address 198.18.0.2 routing-instance "a b"'],
        [
            At(
                '"a b"',
                '"a b"',
                "invalid value 'a b' for 'routing-instance' (expected a name of up to 64 letters, digits, '_', '.' and '-')",
            )
        ],
    ),
    "server port zero": (
        [f"{M}ike gateway ks-pair server-port 0"],
        [At("server-port 0", "0", "invalid value '0' for 'server-port' (expected a number from 1 to 65535)")],
    ),
    "two VPNs in one service set": (
        [
            f"{M}ipsec vpn lan2 ike-gateway ks-pair",
            f"{M}ipsec vpn lan2 group 99",
            "set services service-set gvpn ipsec-group-vpn lan2",
        ],
        [At("ipsec-group-vpn lan2", "lan2", "second group VPN 'lan2' in service-set gvpn; a service set applies one")],
    ),
    "one VPN in two service sets": (
        ["set services service-set other ipsec-group-vpn lan"],
        [
            At(
                "other ipsec-group-vpn lan",
                "lan",
                "ipsec vpn lan is already applied by service-set gvpn; a VPN is in one service set",
            )
        ],
    ),
    "a service set for an undefined VPN": (
        ["set services service-set other ipsec-group-vpn wan"],
        [At("ipsec-group-vpn wan", "wan", "undefined ipsec vpn 'wan' (defined: lan)")],
    ),
    "a service set without a VPN": (
        ["set services service-set other interface-service service-interface ms-1/0/0"],
        [At("service-set other", "service-set other", "missing 'ipsec-group-vpn' in service-set other")],
    ),
    "an interface applying an undefined service set": (
        ["set interfaces eth2 unit 0 family inet service output service-set nope"],
        [At("service-set nope", "nope", "undefined service-set 'nope' (defined: gvpn)")],
    ),
    "a Junos interface name": (
        ["set interfaces ge-0/0/0 unit 0 family inet address 10.0.0.1/24"],
        [
            At(
                "ge-0/0/0",
                "ge-0/0/0",
                "invalid interface name 'ge-0/0/0' (expected a Linux interface name: 1 to 15 characters without '/', ':' or spaces)",
            )
        ],
    ),
    "a unit number out of range": (
        ["set interfaces eth2 unit 16385 family inet address 10.0.0.1/24"],
        [At("unit 16385", "16385", "invalid value '16385' for 'unit' (expected a number from 0 to 16384)")],
    ),
    "an interface address without a length": (
        ["set interfaces eth2 unit 0 family inet address 10.0.0.1"],
        [
            At(
                "eth2 unit 0 family inet address 10.0.0.1",
                "10.0.0.1",
                "invalid value '10.0.0.1' for 'address' (expected an IPv4 address/length)",
            )
        ],
    ),
    "an IPv4 address in family inet6": (
        ["set interfaces eth2 unit 0 family inet6 address 198.18.0.9/24"],
        [
            At(
                "198.18.0.9/24",
                "198.18.0.9/24",
                "invalid value '198.18.0.9/24' for 'address' (expected an IPv6 address/length)",
            )
        ],
    ),
    "an IPv6 address in family inet": (
        ["set interfaces eth2 unit 0 family inet address 2001:db8::1/64"],
        [
            At(
                "2001:db8::1/64",
                "2001:db8::1/64",
                "invalid value '2001:db8::1/64' for 'address' (expected an IPv4 address/length)",
            )
        ],
    ),
    **{
        name: (
            [f"{F}term x from {condition}" for condition in conditions],
            [At(line, token, message)],
        )
        for name, conditions, line, token, message in [
            (
                "a service filter prefix with except",
                ["source-address 198.18.0.0/16 except"],
                "except",
                "except",
                (
                    "'except' in source-address of term x of inet service-filter f is not supported: ip rules "
                    "cannot exclude a prefix; put a term for it before this one instead"
                ),
            ),
            (
                "a service filter prefix that is not one",
                ["destination-address 198.18.0.0/33"],
                "198.18.0.0/33",
                "198.18.0.0/33",
                (
                    "invalid value '198.18.0.0/33' for 'destination-address' (expected an IPv4 or IPv6 prefix "
                    "(address/length))"
                ),
            ),
            (
                "an IPv6 prefix in a family inet filter",
                ["destination-address 2001:2::/48"],
                "2001:2::/48",
                "2001:2::/48",
                "'2001:2::/48' is IPv6 but term x of inet service-filter f is IPv4",
            ),
            (
                "a service filter protocol zero",
                ["protocol [ udp 0 ]"],
                "udp 0",
                "0 ]",
                (
                    "invalid value '0' for 'protocol' (expected a protocol number from 1 to 255 or one of: "
                    f"{', '.join(PROTOCOLS)})"
                ),
            ),
            (
                "next-header in a family inet filter",
                ["next-header tcp"],
                "next-header",
                "next-header",
                "term x of inet service-filter f is IPv4: its terms match 'protocol', not 'next-header'",
            ),
            (
                "a service filter port without a protocol",
                ["destination-port 5000"],
                "x from destination-port",
                "destination-port",
                PORTS_NEED,
            ),
            (
                "a service filter port with a protocol that has none",
                ["protocol [ udp esp ]", "source-port 5000"],
                "x from source-port",
                "source-port",
                PORTS_NEED.replace("'destination-port'", "'source-port'"),
            ),
            *(
                (
                    f"a service filter port {value}",
                    ["protocol udp", f"destination-port {value}"],
                    f"destination-port {value}",
                    value,
                    (
                        f"invalid value '{value}' for 'destination-port' (expected a port from 1 to 65534, a range "
                        f"'low-high' of them, or one of: {', '.join(PORTS)} (Linux ip rules cannot match port 0 "
                        "or 65535))"
                    ),
                )
                for value in ("0", "65535", "1024-65535", "5010-5000", "5000-", "gdoi")
            ),
        ]
    },
    "a service filter term that services and skips": (
        [f"{F}term x then service", f"{F}term x then skip"],
        [
            At(
                "term x then skip",
                "skip",
                "term x of inet service-filter f is both 'service' and 'skip'; give one of them",
            )
        ],
    ),
    "a service filter term of too many combinations": (
        [f"{F}term x from {end}-address 198.18.{n}.0/24" for end in ("source", "destination") for n in range(5)]
        + [f"{F}term x from protocol [ tcp udp sctp ]"],
        [
            At(
                "term x from source-address 198.18.0.0/24",
                "term x",
                "term x of inet service-filter f matches 75 combinations of addresses, protocols and ports; at most "
                "64 (one ip rule each): split it into terms",
            )
        ],
    ),
    "a service filter of 33 terms": (
        [f"{F}term t{n} then skip" for n in range(33)],
        [
            At(
                "term t32",
                "term t32",
                "33 terms in inet service-filter f; at most 32 are allowed (one rule preference each)",
            )
        ],
    ),
    "protocol in a family inet6 filter": (
        ["set firewall family inet6 service-filter f6 term y from protocol tcp"],
        [
            At(
                "f6 term y from protocol",
                "protocol",
                "term y of inet6 service-filter f6 is IPv6: its terms match 'next-header', not 'protocol'",
            )
        ],
    ),
    "an unsupported service filter condition": (
        [f"{F}term x from dscp ef"],
        [
            At(
                "dscp",
                "dscp",
                "unknown statement 'dscp' under 'firewall family inet service-filter f term x from' (expected one "
                "of: destination-address, destination-port, next-header, protocol, source-address, source-port)",
            )
        ],
    ),
    "an unsupported service filter action": (
        [f"{F}term x then count hits"],
        [
            At(
                "count",
                "count",
                "unknown statement 'count' under 'firewall family inet service-filter f term x then' (expected one "
                "of: service, skip)",
            )
        ],
    ),
    "an undefined service filter": (
        ["set interfaces eth2 unit 0 family inet service output service-set gvpn service-filter nope"],
        [At("service-filter nope", "nope", "undefined inet service-filter 'nope' (defined: bypass-bgp)")],
    ),
    "a service filter of the other family": (
        [
            "set firewall family inet6 service-filter v6only term t then skip",
            "set interfaces eth1 unit 0 family inet service output service-set gvpn service-filter v6only",
        ],
        [
            At(
                "service-set gvpn service-filter v6only",
                "v6only",
                "undefined inet service-filter 'v6only' (defined: bypass-bgp); 'v6only' is a family inet6 "
                "service-filter",
            )
        ],
    ),
    "two service filters in one direction": (
        [
            "set firewall family inet service-filter second term t then skip",
            "set interfaces eth2 unit 0 family inet service input service-set gvpn service-filter second",
        ],
        [
            At(
                "service-set gvpn service-filter second",
                "second",
                "service-set gvpn has service-filter second in the input direction of family inet on eth2, but "
                f"bypass-bgp on eth1; {ONE_FILTER}",
            )
        ],
    ),
    "a service filter and none in one direction": (
        ["set interfaces eth2 unit 0 family inet service input service-set gvpn"],
        [
            At(
                "eth2 unit 0 family inet service input",
                "service-set gvpn",
                "service-set gvpn has no service-filter in the input direction of family inet on eth2, but bypass-bgp "
                f"on eth1; {ONE_FILTER}",
            )
        ],
    ),
}


def _server_group(name: str, group_id: int) -> list[str]:
    return [
        f"{S}group {name} group-id {group_id}",
        f"{S}group {name} ike-gateway gm1",
        f"{S}group {name} ipsec-sa s proposal aes128-sha256",
        f"{S}group {name} ipsec-sa s match-policy m source 172.16.0.0/12",
        f"{S}group {name} ipsec-sa s match-policy m destination 172.16.0.0/12",
    ]


SA1 = f"{S}group g1 ipsec-sa sa1 "
KEK = f"{S}group g1 server-member-communication "
SERVER_CASES = {
    "group id zero": (
        [f"{S}group g1 group-id 0"],
        [At("group-id 0", "0", "invalid value '0' for 'group-id' (expected a number from 1 to 4294967295)")],
    ),
    "two groups with one id": (
        _server_group("g2", 1234),
        [At("g2 group-id", "1234", "group-id 1234 is already the id of group g1")],
    ),
    "a listen address other than the groups'": (
        [f"{S}listen-address 198.18.0.9"],
        [
            At(
                "g1 server-address",
                "198.18.0.1",
                "server-address of group g1 198.18.0.1 differs from the key server's address 198.18.0.9 (listen-address); a key server answers on one address",
            ),
            At(
                "gm1 local-address",
                "198.18.0.1",
                "local-address of ike gateway gm1 198.18.0.1 differs from the key server's address 198.18.0.9 (listen-address); a key server answers on one address",
            ),
            At(
                "gm2 local-address",
                "198.18.0.1",
                "local-address of ike gateway gm2 198.18.0.1 differs from the key server's address 198.18.0.9 (listen-address); a key server answers on one address",
            ),
        ],
    ),
    "a gateway in another routing instance": (
        [f"{S}ike gateway gm1 local-address 198.18.0.1 routing-instance red"],
        [
            At(
                "routing-instance red",
                "red",
                "routing-instance red differs from the key server's: listen-address has no routing-instance; a key server runs in one routing instance",
            )
        ],
    ),
    "port zero": (
        [f"{S}port 0"],
        [At("server port 0", "0", "invalid value '0' for 'port' (expected a number from 1 to 65535)")],
    ),
    "a relative state file": (
        [f"{S}state-file ks.db"],
        [At("state-file ks.db", "ks.db", "invalid value 'ks.db' for 'state-file' (expected an absolute file path)")],
    ),
    "addresses and any-address": (
        [f"{S}ike gateway gm1 any-address"],
        [At("any-address", "any-address", "ike gateway gm1 lists member addresses and any-address; give one of them")],
    ),
    "a gateway admitting no one": (
        [f"{S}ike gateway gm3 ike-policy gms"],
        [
            At(
                "gateway gm3",
                "gateway gm3",
                "missing 'address' (members' addresses) or 'any-address' (group-wide key) in ike gateway gm3",
            )
        ],
    ),
    "one member with two keys": (
        [
            f"{S}ike policy other proposals psk-sha256-dh14-aes128",
            f"{S}ike policy other pre-shared-key ascii-text {OTHER_KEY}",
            f"{S}ike gateway gm3 ike-policy other",
            f"{S}ike gateway gm3 address [ 198.18.0.9 198.18.0.3 ]",
        ],
        [
            At(
                "gm3 address",
                "198.18.0.3",
                "member 198.18.0.3 is also listed in ike gateway gm2, with another pre-shared key",
            )
        ],
    ),
    "two group-wide keys": (
        [
            f"{S}ike policy other proposals psk-sha256-dh14-aes128",
            f"{S}ike policy other pre-shared-key ascii-text {OTHER_KEY}",
            f"{S}ike gateway any1 ike-policy gms",
            f"{S}ike gateway any1 any-address",
            f"{S}ike gateway any2 ike-policy other",
            f"{S}ike gateway any2 any-address",
        ],
        [
            At(
                "any2 any-address",
                "any-address",
                "ike gateway any2 has another group-wide key than ike gateway any1; there is one group-wide key",
            )
        ],
    ),
    "GCM with an integrity algorithm": (
        [
            f"{S}ipsec proposal gcm encryption-algorithm aes-128-gcm",
            f"{S}ipsec proposal gcm authentication-algorithm hmac-sha1-96",
        ],
        [
            At(
                "gcm authentication-algorithm",
                "authentication-algorithm",
                "aes-128-gcm has its own integrity; remove authentication-algorithm from ipsec proposal gcm",
            )
        ],
    ),
    "CBC without an integrity algorithm": (
        [f"{S}ipsec proposal cbc encryption-algorithm aes-256-cbc"],
        [
            At(
                "proposal cbc",
                "proposal cbc",
                "missing 'authentication-algorithm' in ipsec proposal cbc (aes-256-cbc needs one)",
            )
        ],
    ),
    "a TEK lifetime below the policy bound": (
        [f"{S}ipsec proposal aes128-sha256 lifetime-seconds 9"],
        [
            At(
                "lifetime-seconds 9",
                "9",
                "invalid value '9' for 'lifetime-seconds' (expected a number from 10 to 2592000)",
            )
        ],
    ),
    "an undefined ipsec proposal": (
        [f"{SA1}proposal aes256"],
        [At("proposal aes256", "aes256", "undefined ipsec proposal 'aes256' (defined: aes128-sha256)")],
    ),
    "a match policy without a destination": (
        [f"{SA1}match-policy half source 10.9.0.0/16", f"{SA1}match-policy half action deny"],
        [
            At(
                "match-policy half source",
                "match-policy half",
                "missing 'destination' in group g1 ipsec-sa sa1 match-policy half",
            )
        ],
    ),
    "a match policy across IP versions": (
        [f"{SA1}match-policy lan-to-lan destination 2001:db8::/32"],
        [At("2001:db8::/32", "2001:db8::/32", "'2001:db8::/32' is IPv6 but source is IPv4")],
    ),
    "a port without a protocol": (
        [f"{SA1}match-policy lan-to-lan destination-port 179"],
        [
            At(
                "lan-to-lan destination-port 179",
                "179",
                "destination-port 179 needs a protocol in group g1 ipsec-sa sa1 match-policy lan-to-lan",
            )
        ],
    ),
    "an unknown protocol": (
        [f"{SA1}match-policy lan-to-lan protocol tcpx"],
        [
            At(
                "protocol tcpx",
                "tcpx",
                f"invalid value 'tcpx' for 'protocol' (expected a protocol number from 0 to 255 or one of: {', '.join(PROTOCOLS)})",
            )
        ],
    ),
    "a port out of range": (
        [f"{SA1}match-policy lan-to-lan protocol tcp", f"{SA1}match-policy lan-to-lan source-port 65536"],
        [
            At(
                "source-port 65536",
                "65536",
                "invalid value '65536' for 'source-port' (expected a number from 0 to 65535)",
            )
        ],
    ),
    "a second permit policy that is not a mirror image": (
        [f"{SA1}match-policy more source 192.168.0.0/16", f"{SA1}match-policy more destination 10.0.0.0/8"],
        [
            At(
                "match-policy more source",
                "match-policy more",
                "group g1 ipsec-sa sa1 already permits match-policy lan-to-lan; an SA covers one selector or two that mirror each other (RFC 6407 §5.5): give this one its own ipsec-sa",
            )
        ],
    ),
    "an SA that only denies": (
        [
            f"{S}group g1 ipsec-sa sa2 proposal aes128-sha256",
            f"{S}group g1 ipsec-sa sa2 match-policy d source 10.1.0.0/16",
            f"{S}group g1 ipsec-sa sa2 match-policy d destination 10.2.0.0/16",
            f"{S}group g1 ipsec-sa sa2 match-policy d action deny",
        ],
        [
            At(
                "ipsec-sa sa2 proposal",
                "ipsec-sa sa2",
                "no permit match-policy in group g1 ipsec-sa sa2; a TEK needs traffic to protect",
            )
        ],
    ),
    "an anti-replay window of zero": (
        [f"{S}group g1 anti-replay-time-window 0"],
        [At("window 0", "0", "invalid value '0' for 'anti-replay-time-window' (expected a number from 1 to 65535)")],
    ),
    "a window and no anti-replay": (
        [f"{S}group g1 no-anti-replay"],
        [
            At(
                "no-anti-replay",
                "no-anti-replay",
                "group g1 sets anti-replay-time-window and no-anti-replay; give one of them",
            )
        ],
    ),
    "an activation delay beyond 16 bits": (
        [f"{S}group g1 activation-time-delay 65536"],
        [
            At(
                "delay 65536",
                "65536",
                "invalid value '65536' for 'activation-time-delay' (expected a number from 0 to 65535)",
            )
        ],
    ),
    "a rekey percentage over half": (
        [f"{S}group g1 rekey-percentage 51"],
        [At("rekey-percentage 51", "51", "invalid value '51' for 'rekey-percentage' (expected a number from 1 to 50)")],
    ),
    "multicast without a group address": (
        [f"{KEK}communication-type multicast"],
        [
            At(
                "communication-type unicast",
                "server-member-communication",
                "missing 'multicast-group' in server-member-communication with communication-type multicast",
            )
        ],
    ),
    "a unicast multicast group": (
        [f"{KEK}communication-type multicast", f"{KEK}multicast-group 198.18.0.77"],
        [
            At(
                "multicast-group 198.18.0.77",
                "198.18.0.77",
                "invalid value '198.18.0.77' for 'multicast-group' (expected a multicast address)",
            )
        ],
    ),
    "a multicast group for unicast pushes": (
        [f"{KEK}multicast-group 239.1.1.1", f"{KEK}multicast-port 1848"],
        [
            At("multicast-group 239.1.1.1", "multicast-group", "'multicast-group' needs communication-type multicast"),
            At("multicast-port 1848", "multicast-port", "'multicast-port' needs communication-type multicast"),
        ],
    ),
    "a KEK lifetime below the policy bound": (
        [f"{KEK}lifetime-seconds 5"],
        [
            At(
                "lifetime-seconds 5",
                "5",
                "invalid value '5' for 'lifetime-seconds' (expected a number from 10 to 2592000)",
            )
        ],
    ),
    "no retransmission period": (
        [f"{KEK}retransmission-period 0"],
        [
            At(
                "retransmission-period 0",
                "0",
                "invalid value '0' for 'retransmission-period' (expected a number from 1 to 600)",
            )
        ],
    ),
    "eleven retransmissions": (
        [f"{KEK}number-of-retransmission 11"],
        [
            At(
                "retransmission 11",
                "11",
                "invalid value '11' for 'number-of-retransmission' (expected a number from 0 to 10)",
            )
        ],
    ),
    "a relative signing key": (
        [f"{KEK}signing-key g1.pem"],
        [
            At(
                "signing-key g1.pem",
                "g1.pem",
                "invalid value 'g1.pem' for 'signing-key' (expected an absolute file path)",
            )
        ],
    ),
    "an undefined gateway": (
        [f"{S}group g1 ike-gateway gm9"],
        [At("ike-gateway gm9", "gm9", "undefined ike gateway 'gm9' (defined: gm1, gm2)")],
    ),
    "a group without SAs or gateways": (
        [f"{S}group g3 group-id 3"],
        [
            At("group g3", "group g3", "missing 'ike-gateway' in group g3"),
            At("group g3", "group g3", "missing 'ipsec-sa' in group g3"),
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(MEMBER_CASES))
def test_member_problems(name):
    extra, found = MEMBER_CASES[name]
    text = MEMBER_BASE + "".join(f"{line}\n" for line in extra)
    assert problems(text, Role.MEMBER) == expected(text, found)


@pytest.mark.parametrize("name", sorted(SERVER_CASES))
def test_server_problems(name):
    extra, found = SERVER_CASES[name]
    text = SERVER_BASE + "".join(f"{line}\n" for line in extra)
    assert problems(text, Role.SERVER) == expected(text, found)


def test_the_bases_are_valid():
    assert load(MEMBER_BASE, Role.MEMBER) and load(SERVER_BASE, Role.SERVER)


def test_a_member_without_a_vpn():
    lines = [line for line in MEMBER_BASE.split("\n") if "ipsec vpn" not in line]
    text = "\n".join(lines)
    first = next(n for n, line in enumerate(lines, 1) if line.startswith(M))
    service_set = lines.index("set services service-set gvpn ipsec-group-vpn lan") + 1
    assert problems(text, Role.MEMBER) == [
        (
            first,
            len("set security group-vpn ") + 1,
            "no group VPN configured (security group-vpn member ipsec vpn NAME)",
        ),
        (
            service_set,
            len("set services service-set gvpn ipsec-group-vpn ") + 1,
            "undefined ipsec vpn 'lan' (defined: none)",
        ),
    ]


def test_a_server_without_groups_or_address():
    text = "\n".join(line for line in SERVER_BASE.split("\n") if " group " not in line and "local-address" not in line)
    assert problems(text, Role.SERVER) == [
        (1, text.index("server") + 1, "no group configured (security group-vpn server group NAME)"),
        (1, text.index("server") + 1, "no key server address: set listen-address or a group's server-address"),
    ]


def test_a_file_for_both_daemons():
    text = MEMBER_BASE + "set security group-vpn server port 848\n"
    assert problems(text, None) == [
        (
            text.count("\n"),
            len("set security group-vpn ") + 1,
            "both 'group-vpn server' and 'group-vpn member' are configured; a file configures one daemon",
        )
    ]


def test_a_file_without_the_block_of_its_role():
    assert problems("set services service-set s ipsec-group-vpn v\n", Role.MEMBER) == [
        (1, 1, "'security group-vpn member' is not configured")
    ]
    assert problems("", Role.SERVER) == [(1, 1, "'security group-vpn server' is not configured")]
