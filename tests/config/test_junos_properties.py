"""Generated trees survive both syntaxes; mangled texts only ever yield ConfigError."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from junos_strategies import mutation, trees

from groupvpn.config.errors import ConfigError
from groupvpn.config.junos import parse, parse_curly, parse_set, render_curly, render_set
from groupvpn.config.schema import MEMBER, SERVER

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("root", [MEMBER, SERVER], ids=["member", "server"])
def test_curly_and_set_forms_of_any_tree_parse_to_that_tree(root):
    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(tree=trees(root))
    def check(tree):
        curly, commands = render_curly(tree), render_set(tree)
        assert parse_curly(curly, root) == tree
        assert parse_set(commands, root) == tree
        assert parse(curly, root) == parse(commands, root) == tree

    check()


def _base(path: Path) -> tuple[str, object, tuple[str, ...]]:
    """A fixture as (text, schema, at), seed samples relative to their ``[edit ...]`` line."""
    text = path.read_text()
    root = SERVER if path.name.startswith("server") else MEMBER
    banner, _, body = text.partition("\n")
    if banner.startswith("[edit"):
        return "\n" + body, root, tuple(banner[len("[edit") : -1].split())
    return text, root, ()


BASES = [_base(path) for path in sorted(FIXTURES.rglob("*.*")) if path.suffix in (".conf", ".set")]


def _check_problems(error: ConfigError, text: str) -> None:
    lines = text.split("\n")
    assert list(error.problems) == sorted(error.problems)
    for problem in error.problems:
        assert 1 <= problem.line <= len(lines)
        assert 1 <= problem.column <= len(lines[problem.line - 1]) + 1
        assert problem.message


@settings(max_examples=3000, deadline=None)
@given(data=st.data())
def test_mutated_configurations_only_ever_raise_config_error(data):
    text, root, at = data.draw(st.sampled_from(BASES))
    for _ in range(data.draw(st.integers(1, 4))):
        text = data.draw(mutation(text))
    try:
        tree = parse(text, root, at=at)
    except ConfigError as error:
        _check_problems(error, text)
    else:
        assert parse_curly(render_curly(tree), root) == tree
        assert parse_set(render_set(tree), root) == tree


SECRET = 'Zq8#Wv2 kP0x-"Jy7"Lm4'
SECRET_BASES = [
    (FIXTURES / "member.set").read_text(),
    (
        "security { group-vpn { member { ike { policy ks {\n"
        "    mode main;\n"
        '    pre-shared-key ascii-text "Zq8#Wv2 kP0x-\\"Jy7\\"Lm4"; ## SECRET-DATA\n'
        "    proposals p1;\n"
        "} } } } }\n"
    ),
]
assert all(SECRET.replace('"', '\\"') in base for base in SECRET_BASES)
# Any 4 consecutive characters of the key in a message would be a leak.
SECRET_PIECES = {SECRET[i : i + 4] for i in range(len(SECRET) - 3)}


@settings(max_examples=1500, deadline=None)
@given(data=st.data())
def test_a_single_slip_near_a_pre_shared_key_never_shows_it(data):
    # A word moved elsewhere is left out: a piece of a key pasted into another
    # statement is indistinguishable from any other misplaced word.
    text = data.draw(mutation(data.draw(st.sampled_from(SECRET_BASES)), moves=False))
    try:
        parse(text, MEMBER)
    except ConfigError as error:
        message = str(error)
        assert not [piece for piece in SECRET_PIECES if piece in message], message
