"""``groupvpn config check FILE``: validate a configuration file exactly as a daemon loads it.

Prints ``configuration check succeeds`` and exits 0, or prints every
problem as ``FILE:LINE:COLUMN: message`` in file order and exits 1 -- the
form compilers use, so editors can jump to each one.  Messages never hold
a pre-shared key: the parser and the model mask them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config.errors import ConfigError, Problem
from ..config.model import Role, load

SUCCESS = "configuration check succeeds"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = subparsers.add_parser("config", help="configuration tools")
    commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="validate a key server or member configuration file",
        description="Exit status: 0 valid, 1 problems found (each printed as FILE:LINE:COLUMN: message).",
    )
    check.add_argument("file", type=Path, help="configuration, curly-brace or set form")
    check.add_argument(
        "--role",
        choices=[role.value for role in Role],
        help="the daemon the file configures (default: server or member, from 'security group-vpn')",
    )
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    try:
        text = _read(args.file)
        load(text, None if args.role is None else Role(args.role))
    except OSError as error:
        print(f"{args.file}: cannot read: {error.strerror or error}", file=sys.stderr)
        return 1
    except ConfigError as error:
        for problem in error.problems:
            print(f"{args.file}:{problem.line}:{problem.column}: {problem.message}")
        return 1
    print(SUCCESS)
    return 0


def _read(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are a problem at their position."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        column = len(data[line_start : error.start].decode("utf-8", "replace")) + 1
        raise ConfigError([Problem(data.count(b"\n", 0, error.start) + 1, column, "not UTF-8 text")]) from None
