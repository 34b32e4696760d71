"""``groupvpn config check`` as an operator runs it: exit status and FILE:LINE:COLUMN output."""

import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def check(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "groupvpn.cli", "config", "check", str(path), *options]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["member.set", "server.conf"])
def test_a_valid_file_succeeds(name):
    result = check(FIXTURES / name)
    assert (result.returncode, result.stdout, result.stderr) == (0, "configuration check succeeds\n", "")


def test_every_problem_is_printed_sorted_as_file_line_column_without_the_key(tmp_path):
    path = tmp_path / "gm.set"
    lines = (FIXTURES / "member.set").read_text().replace('Lm4"', '"').split("\n")
    lines += [
        "set security group-vpn member ipsec vpn lan group 4294967296",
        "set services service-set gvpn ipsec-group-vpn missing",
        "set security group-vpn member ike gateway ks-pair ike-policy nope",
    ]
    path.write_text("\n".join(lines) + "\n")
    result = check(path)
    key_line = next(n for n, line in enumerate(lines, 1) if "ascii-text" in line)
    key_column = lines[key_line - 1].index('"Zq8') + 1
    count = len(lines)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{path}:{key_line}:{key_column}: pre-shared key for policy ks has 18 characters; at least 20 are required",
        f"{path}:{count - 2}:51: invalid value '4294967296' for 'group' (expected a number from 1 to 4294967295)",
        f"{path}:{count - 1}:47: second group VPN 'missing' in service-set gvpn; a service set applies one",
        f"{path}:{count}:62: undefined ike policy 'nope' (defined: ks)",
    ]
    assert "Zq8" not in result.stdout + result.stderr and "Jy7" not in result.stdout + result.stderr


def test_the_role_can_be_forced(tmp_path):
    result = check(FIXTURES / "server.conf", "--role", "member")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith(f"{FIXTURES / 'server.conf'}:3:9: unknown statement 'server'")


def test_a_file_for_no_daemon_is_reported(tmp_path):
    path = tmp_path / "empty.conf"
    path.write_text("# nothing yet\n")
    result = check(path)
    assert (result.returncode, result.stdout) == (
        1,
        f"{path}:1:1: neither 'security group-vpn server' nor 'security group-vpn member' is configured\n",
    )


def test_bytes_that_are_not_utf8_are_located(tmp_path):
    path = tmp_path / "latin1.conf"
    before = b"    group-vpn { member { ike { proposal caf"
    path.write_bytes(b"security {\n" + before + b"\xe9 { } } } }\n}\n")
    result = check(path)
    assert (result.returncode, result.stdout) == (1, f"{path}:2:{len(before) + 1}: not UTF-8 text\n")


def test_an_unreadable_file_is_an_error(tmp_path):
    result = check(tmp_path / "missing.conf")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"{tmp_path / 'missing.conf'}: cannot read: No such file or directory\n"
