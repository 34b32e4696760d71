"""Whatever the text, loading a configuration either succeeds or raises ConfigError, never anything else.

Three sources of bad input: character and word edits of valid files
(mostly syntax), valid files with values swapped for awkward ones or
statements dropped (the model's checks), and random trees of the schema.
"""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from junos_strategies import mutation, trees
from test_model_seed import curly

from groupvpn.config.errors import ConfigError
from groupvpn.config.junos import parse, render_set
from groupvpn.config.model import KeyServerConfig, MemberConfig, Role, load
from groupvpn.config.schema import MEMBER, SERVER

FIXTURES = Path(__file__).parent / "fixtures"
SERVER_TEXT = (FIXTURES / "server.conf").read_text()
MEMBER_TEXT = (FIXTURES / "member.set").read_text()
BASES = [MEMBER_TEXT, SERVER_TEXT, render_set(parse(SERVER_TEXT, SERVER)), curly()]
SECRETS = ['Zq8#Wv2 kP0x-"Jy7"Lm4', "Vr4-members of g1 only", "a pre-shared key of the seed group"]
AWKWARD = st.sampled_from(
    [
        "0",
        "1",
        "-1",
        "+1",
        "007",
        "65535",
        "65536",
        "4294967295",
        "4294967296",
        "9" * 40,
        "1_000",
        "٣",
        "0.0.0.0",
        "255.255.255.255",
        "239.1.1.1",
        "198.18.0.1",
        "::",
        "::1",
        "2001:db8::1",
        "fe80::1%eth0",
        "10.0.0.0/8",
        "10.0.0.1/33",
        "2001:db8::/129",
        "::/0",
        "10.0.0.1/255.0.0.0",
        "10.0.0.1/24",
        "tcp",
        "icmp6",
        "256",
        "a b",
        "",
        "$9$abc",
        "/var/lib/x.db",
        "relative.db",
        "/",
        "x\x00y",
        "00112233445566778899aabbccddeeff00112233",
        "0g",
        "ge-0/0/0",
        "eth0",
        "a" * 80,
    ]
)


def _check(text: str, role: Role | None) -> None:
    try:
        config = load(text, role)
    except ConfigError as error:
        lines = text.split("\n")
        assert list(error.problems) == sorted(error.problems)
        for problem in error.problems:
            assert 1 <= problem.line <= len(lines), problem
            assert 1 <= problem.column <= len(lines[problem.line - 1]) + 1, problem
        shown = str(error)
        assert not any(secret in shown for secret in SECRETS)
    else:
        assert isinstance(config, {Role.SERVER: KeyServerConfig, Role.MEMBER: MemberConfig, None: object}[role])


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_edited_files_only_ever_raise_config_error(data):
    text = data.draw(st.sampled_from(BASES))
    for _ in range(data.draw(st.integers(1, 3))):
        text = data.draw(mutation(text))
    _check(text, data.draw(st.sampled_from([None, Role.SERVER, Role.MEMBER])))


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_awkward_values_and_missing_statements_only_ever_raise_config_error(data):
    root, text = data.draw(st.sampled_from([(MEMBER, MEMBER_TEXT), (SERVER, SERVER_TEXT), (MEMBER, curly())]))
    lines = render_set(parse(text, root)).splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        if data.draw(st.booleans()):
            del lines[i]
            if not lines:
                break
        else:
            words = lines[i].split(" ")
            value = data.draw(AWKWARD)
            words[-1] = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines[i] = " ".join(words)
    _check("".join(f"{line}\n" for line in lines), Role.MEMBER if root is MEMBER else Role.SERVER)


@pytest.mark.parametrize(("root", "role"), [(MEMBER, Role.MEMBER), (SERVER, Role.SERVER)], ids=["member", "server"])
def test_random_trees_only_ever_raise_config_error(root, role):
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(tree=trees(root))
    def check(tree):
        _check(render_set(tree), role)

    check()
