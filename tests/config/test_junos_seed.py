"""The configuration samples of the Group VPNv2 overview (the project seed), verbatim.

Each fixture is a sample block copied unchanged, its ``[edit ...]`` line
included; ``NAME.set`` states the tree the sample means, written by hand
in the other syntax.  Three samples carry documentation mistakes that a
strict parser must report (and Junos would reject): for those the exact
problems are pinned, and ``NAME.fixed.conf`` is the sample with the
minimal correction.
"""

from pathlib import Path

import pytest

from groupvpn.config.errors import ConfigError
from groupvpn.config.junos import Node, parse, parse_set
from groupvpn.config.schema import MEMBER

SEED = Path(__file__).parent / "fixtures" / "seed"


def load_sample(path: Path) -> Node:
    """Parse a sample relative to its ``[edit ...]`` line, keeping file line numbers."""
    banner, _, body = path.read_text().partition("\n")
    assert banner.startswith("[edit") and banner.endswith("]")
    return parse("\n" + body, MEMBER, at=banner[len("[edit") : -1].split())


def expected(name: str) -> Node:
    return parse_set((SEED / f"{name}.set").read_text(), MEMBER)


def test_every_sample_block_of_the_seed_has_a_fixture():
    seed = Path("/work/shared/seed/group-vpnv2-overview.txt")
    if not seed.exists():
        pytest.skip("seed document not available")
    blocks = seed.read_text().count("\n[edit")
    assert blocks == len(list(SEED.glob("*.set"))) == 7


@pytest.mark.parametrize("name", ["apply-service-set", "df-bit", "ikev1", "service-filter"])
def test_correct_samples_parse_to_the_tree_they_describe(name):
    assert load_sample(SEED / f"{name}.conf") == expected(name)


ERRONEOUS = {
    # `ipsec-group-vpn` belongs inside the service-set block (as the text above the sample says).
    "service-set": [
        (7, 1, "unknown statement 'ipsec-group-vpn' under 'services' (expected one of: service-set)"),
    ],
    # no ';' after either leaf, and one '}' too many
    "fail-open": [
        (4, 33, "missing ';' after 'source-address source-ip-address'"),
        (5, 43, "missing ';' after 'destination-address destination-ip-address'"),
        (7, 1, "unexpected '}' (no block is open)"),
    ],
    "gdoi-ipsec": [
        (16, 31, "missing ';' after 'source-address 198.51.100.1/24'"),
        (17, 33, "missing ';' after 'destination-address 192.0.2.1/24'"),
    ],
}


@pytest.mark.parametrize("name", sorted(ERRONEOUS))
def test_erroneous_samples_report_every_mistake_where_it_is(name):
    with pytest.raises(ConfigError) as caught:
        load_sample(SEED / f"{name}.conf")
    assert [(p.line, p.column, p.message) for p in caught.value.problems] == ERRONEOUS[name]


@pytest.mark.parametrize("name", sorted(ERRONEOUS))
def test_corrected_samples_parse_to_the_tree_they_describe(name):
    assert load_sample(SEED / f"{name}.fixed.conf") == expected(name)


def test_sample_lookups_reach_the_values_a_daemon_needs():
    gateway = (
        load_sample(SEED / "gdoi-ipsec.fixed.conf")
        .child("security")
        .child("group-vpn")
        .child("member")
        .child("ike")
        .child("gateway", "gateway-name")
    )
    assert gateway.child("server-address").values == ("<IP_KS1>", "<IP_KS2>", "<IP_KS3>", "<IP_KS4>")
    local = gateway.child("local-address")
    assert local.value == "<IP_GM>"
    assert local.child("routing-instance").value == "routing-instance-name"
    assert (local.line, local.column) == (8, 1)
