"""Malformed configurations: every problem reported, at its exact line and column, secrets masked."""

import pytest

from groupvpn.config.errors import ConfigError, Problem
from groupvpn.config.junos import parse, parse_curly, parse_set
from groupvpn.config.schema import MEMBER, SERVER

PROPOSAL_CHILDREN = (
    "authentication-algorithm, authentication-method, description, dh-group, encryption-algorithm, lifetime-seconds"
)
MEMBER_TOP = "firewall, interfaces, security, services"
VPN = "security group-vpn member ipsec vpn v1"

CURLY = [
    (
        "unknown statement, nested",
        """\
security {
    group-vpn {
        member {
            ike {
                proposal p1 {
                    encryptoin-algorithm aes-128-cbc;
                }
            }
        }
    }
}
""",
        [
            (
                6,
                21,
                (
                    "unknown statement 'encryptoin-algorithm' under 'security group-vpn member ike proposal p1' "
                    f"(expected one of: {PROPOSAL_CHILDREN})"
                ),
            )
        ],
    ),
    (
        "unknown statement: its block is skipped, the rest still checked",
        "system { host-name x; bogus; }\nsecurity { group-vpn { membr; } }\n",
        [
            (1, 1, f"unknown statement 'system' at top level (expected one of: {MEMBER_TOP})"),
            (2, 24, "unknown statement 'membr' under 'security group-vpn' (expected one of: member)"),
        ],
    ),
    (
        "missing value",
        "security { group-vpn { member { ike { proposal p1 { lifetime-seconds; } } } } }",
        [(1, 53, "'lifetime-seconds' needs a value")],
    ),
    (
        "missing name",
        "security { group-vpn { member { ike { proposal { dh-group group2; } } } } }",
        [(1, 39, "'proposal' needs a name")],
    ),
    (
        "too many values",
        "security { group-vpn { member { ipsec { vpn v1 { df-bit clear set; } } } } }",
        [(1, 63, "too many values for 'df-bit' (it takes one value)")],
    ),
    (
        "a list where one value goes",
        "security { group-vpn { member { ipsec { vpn v1 { df-bit [ clear ]; } } } } }",
        [(1, 57, "'df-bit' takes one value, not a list")],
    ),
    (
        "value not among the choices",
        "security { group-vpn { member { ipsec { vpn v1 { df-bit maybe; } } } } }",
        [(1, 57, "invalid value 'maybe' for 'df-bit' (expected one of: clear, set, copy)")],
    ),
    (
        "empty list",
        "security { group-vpn { member { ike { gateway g { server-address [ ]; } } } } }",
        [(1, 66, "empty list for 'server-address'")],
    ),
    (
        "list values split",
        "security { group-vpn { member { ike { gateway g { server-address 198.18.1.1 [ 198.18.1.2 ]; } } } } }",
        [(1, 77, "values of 'server-address' must be given as one list")],
    ),
    (
        "missing ';' before '}' and before the next statement",
        """\
security {
    group-vpn {
        member {
            ipsec {
                vpn v1 {
                    df-bit clear
                    match-direction output }
            }
        }
    }
}
""",
        [
            (6, 33, "missing ';' after 'df-bit clear'"),
            (7, 43, "missing ';' after 'match-direction output'"),
        ],
    ),
    (
        "missing ';' mid-line: the next statement is still checked",
        "security { group-vpn { member { ipsec { vpn v1 { df-bit clear match-direction sideways; } } } } }",
        [
            (1, 62, "missing ';' after 'df-bit clear'"),
            (1, 79, "invalid value 'sideways' for 'match-direction' (expected one of: input, output)"),
        ],
    ),
    (
        "an unbracketed list ends at the next keyword",
        (
            "security { group-vpn { member { ike { gateway g1 {\n"
            "    server-address 198.18.1.1 198.18.1.2\n"
            "    local-address 198.18.0.2;\n"
            "} } } } }"
        ),
        [(2, 41, "missing ';' after 'server-address 198.18.1.1 198.18.1.2'")],
    ),
    (
        "a statement after a one-line nested one",
        "security { group-vpn { member { ike { gateway g local-address 198.18.0.2 ike-policy p; } } } }",
        [
            (
                1,
                74,
                "unexpected 'ike-policy' after 'gateway g local-address 198.18.0.2' (it needs a statement of its own)",
            )
        ],
    ),
    (
        "missing ';' at the end of the input",
        "security { group-vpn { member { ipsec { vpn v1 { df-bit clear; } } } } }\nservices",
        [(2, 9, "missing ';' after 'services'")],
    ),
    (
        "a leaf cannot open a block",
        "security { group-vpn { member { ipsec { vpn v1 { df-bit clear { } } } } } }",
        [(1, 63, "'df-bit' is a leaf statement and cannot open a block")],
    ),
    (
        "one '}' too many",
        "services { }\n}\n",
        [(2, 1, "unexpected '}' (no block is open)")],
    ),
    (
        "unclosed blocks, reported where they open and sorted with the rest",
        "security {\n    group-vpn {\n        bogus;\n",
        [
            (1, 10, "'{' is never closed (missing '}')"),
            (2, 15, "'{' is never closed (missing '}')"),
            (3, 9, "unknown statement 'bogus' under 'security group-vpn' (expected one of: member)"),
        ],
    ),
    (
        "unterminated string: nothing after it is judged",
        'security { group-vpn { member { ipsec { vpn v1 {\n    description "no end;\n} } } } }\n',
        [(2, 17, "unterminated quoted string")],
    ),
    (
        "unterminated comment",
        "services { /* note\n service-set s; }\n",
        [(1, 12, "unterminated comment ('/*' without '*/')")],
    ),
    (
        "brackets",
        (
            "security { group-vpn { member { ike { gateway g {\n"
            "server-address [ 198.18.1.1;\n"
            "server-address ];\n"
            "server-address [ [ 198.18.1.1 ] ];\n"
            "} } } } }\n"
        ),
        [
            (2, 16, "'[' is never closed (missing ']')"),
            (3, 16, "unexpected ']' (no list is open)"),
            (4, 18, "unexpected '[' inside a list"),
        ],
    ),
    (
        "empty statement, block without statement, dangling inactive:",
        "; { } inactive: ;",
        [
            (1, 1, "unexpected ';' (empty statement)"),
            (1, 3, "'{' without a statement before it"),
            (1, 7, "'inactive:' must be followed by a statement"),
        ],
    ),
    (
        "a quoted string is never a keyword",
        '"security" { }',
        [(1, 1, f"a quoted string instead of a statement at top level (expected one of: {MEMBER_TOP})")],
    ),
    (
        "a list is never a keyword",
        "[ security ];",
        [(1, 1, f"a '[' list instead of a statement at top level (expected one of: {MEMBER_TOP})")],
    ),
    (
        "positions count characters, tabs included, on CRLF lines",
        "services {\r\n\tservice-sett s;\r\n}\r\n",
        [(2, 2, "unknown statement 'service-sett' under 'services' (expected one of: service-set)")],
    ),
]


@pytest.mark.parametrize("text, problems", [case[1:] for case in CURLY], ids=[case[0] for case in CURLY])
def test_curly_problems(text, problems):
    with pytest.raises(ConfigError) as caught:
        parse_curly(text, MEMBER)
    assert [(p.line, p.column, p.message) for p in caught.value.problems] == problems


SET = [
    (
        "unsupported verb",
        "delete security group-vpn\n",
        [(1, 1, "unsupported command 'delete' (only 'set' and 'deactivate' are accepted)")],
    ),
    (
        "not a command",
        "set services\nsecurity group-vpn\n",
        [(2, 1, "expected a command ('set' and 'deactivate')")],
    ),
    ("set without a path", "set\n", [(1, 1, "'set' needs a statement path")]),
    ("punctuation", "set services {\n", [(1, 14, "unexpected '{' in a 'set' command")]),
    (
        "two statements in one command",
        f"set {VPN} df-bit clear match-direction output\n",
        [
            (
                1,
                57,
                f"one statement per 'set' command: unexpected 'match-direction' after '{VPN} df-bit clear'",
            )
        ],
    ),
    (
        "too many values",
        f"set {VPN} group 1 2\n",
        [(1, 52, "too many values for 'group' (it takes one value)")],
    ),
    (
        "deactivating what is not configured",
        f"set {VPN} df-bit clear\ndeactivate {VPN} df-bit set\ndeactivate {VPN} group\n",
        [
            (2, 51, f"cannot deactivate '{VPN} df-bit set': it is not configured"),
            (3, 51, f"cannot deactivate '{VPN} group': it is not configured"),
        ],
    ),
    (
        "every line checked",
        "set security group-vpn member ike proposal\nset services service-set s bogus x\n",
        [
            (1, 35, "'proposal' needs a name"),
            (
                2,
                28,
                (
                    "unknown statement 'bogus' under 'services service-set s' "
                    "(expected one of: interface-service, ipsec-group-vpn)"
                ),
            ),
        ],
    ),
]


@pytest.mark.parametrize("text, problems", [case[1:] for case in SET], ids=[case[0] for case in SET])
def test_set_problems(text, problems):
    with pytest.raises(ConfigError) as caught:
        parse_set(text, MEMBER)
    assert [(p.line, p.column, p.message) for p in caught.value.problems] == problems


def test_server_schema_problems():
    text = """\
security {
    group-vpn {
        server {
            group g1 {
                no-anti-replay yes;
                ipsec-sa sa1 {
                    match-policy m1 {
                        action allow;
                    }
                }
            }
        }
    }
}
"""
    with pytest.raises(ConfigError) as caught:
        parse(text, SERVER)
    assert [(p.line, p.column, p.message) for p in caught.value.problems] == [
        (5, 32, "too many values for 'no-anti-replay' (it takes no value)"),
        (8, 32, "invalid value 'allow' for 'action' (expected one of: permit, deny)"),
    ]


def test_error_text_lists_one_problem_per_line_in_position_order():
    error = ConfigError([Problem(3, 1, "b"), Problem(1, 9, "a"), Problem(3, 1, "b")])
    assert str(error) == "line 1, column 9: a\nline 3, column 1: b"


def test_an_error_without_problems_is_a_programming_mistake():
    with pytest.raises(ValueError):
        ConfigError([])


POLICY = "security { group-vpn { member { ike { policy p { %s } } } } }"
SECRET_CASES = [
    (POLICY % 'pre-shared-key "hunter2-secret";', "a quoted string instead of a statement under"),
    (POLICY % "pre-shared-key hunter2-secret;", "unknown statement '<hidden>' under"),
    (POLICY % 'pre-shared-key ascii-txt "hunter2-secret";', "unknown statement '<hidden>' under"),
    (POLICY % 'pre-shared-key ascii-text "hunter2-secret" "more";', "too many values for 'ascii-text'"),
    (POLICY % 'pre-shared-key ascii-text [ "hunter2-secret" ];', "'ascii-text' takes one value, not a list"),
    (
        POLICY % 'pre-shared-key ascii-text "hunter2-secret" }',
        "missing ';' after 'pre-shared-key ascii-text <hidden>'",
    ),
    (
        POLICY % 'pre-shared-key ascii-text "hunter2-secret" mode main;',
        "missing ';' after 'pre-shared-key ascii-text <hidden>'",
    ),
    (POLICY % 'pre-shared-key ascii-text "hunter2-secret', "unterminated quoted string"),
    # A list without its values takes the words after it, the key among them.
    (
        POLICY % 'proposals\n pre-shared-key ascii-text "hunter2-secret";',
        "line 2, column 28: a value of 'proposals' shares a line with a pre-shared key",
    ),
    (
        POLICY % 'pre-shared-key ascii-text "hunter2-secret"; proposals p1;',
        "a value of '<hidden>' shares a line with a pre-shared key; give the key a line of its own",
    ),
    (
        POLICY % 'pre-shared-key ascii-text "hunter2-secret";' + " interfaces { eth0 { unit 0; } }",
        "a <interface-name> shares a line with a pre-shared key; give the key a line of its own",
    ),
    (
        # A stray quote earlier shifts all quoting: the key's pieces become bare words elsewhere,
        # and the policy name a string holding the key's keyword.
        (
            'security { group-vpn { member { ike { policy" p {\n'
            '    pre-shared-key ascii-text "hunter2 \\"x\\"";\n'
            "    mode main;\n"
            "} } } } }\n"
        ),
        "line 1, column 45: a value of 'policy' shares a line with a pre-shared key; give the key a line of its own",
    ),
    (
        'deactivate security group-vpn member ike policy p pre-shared-key hexadecimal "hunter2-secret"',
        "cannot deactivate 'security group-vpn member ike policy p pre-shared-key hexadecimal <hidden>'",
    ),
]


@pytest.mark.parametrize("text, message", SECRET_CASES)
def test_pre_shared_keys_never_appear_in_errors(text, message):
    with pytest.raises(ConfigError) as caught:
        parse(text, MEMBER)
    assert "hunter2" not in str(caught.value)
    assert message in str(caught.value)


def test_an_at_path_that_is_not_a_block_is_a_programming_mistake():
    with pytest.raises(ValueError, match="unknown statement 'bogus'"):
        parse("", MEMBER, at=("security", "bogus"))
    with pytest.raises(ValueError, match="not a container"):
        parse("", MEMBER, at=("security", "group-vpn", "member", "ipsec", "vpn", "v1", "df-bit", "clear"))
