"""The `groupvpn` command line: one subcommand per operator task.

Each command module exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (taking the parsed args, returning an exit status).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .ops import config, decode, export, ike, ks, lab, member, show

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

# One line per command module; keep sorted by command name.
COMMANDS: tuple[Registrar, ...] = (
    config.register,
    decode.register,
    export.register,
    ike.register,
    ks.register,
    lab.register,
    member.register,
    show.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupvpn", description="GDOI group VPN key server and member")
    parser.add_argument("--version", action="version", version=f"groupvpn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
