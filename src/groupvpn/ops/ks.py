"""``groupvpn ks``: run the key server daemon.

The configuration is checked before anything starts: an invalid file
prints each problem with its line and column and exits 1.  Without
``--foreground`` the daemon detaches once it serves (keys loaded, socket
open), and this command exits 0, or 1 with the reason it did not start.

``--crash-before-push`` is hidden and for tests only: the daemon kills
itself (SIGKILL) the first time it has claimed a push SEQ, after the
rekey's keys are stored and before the push is sent (``KilledAtPush``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import daemon
from ..runtime.ks_daemon import KeyServerDaemon, load
from .show import ROLE_SOCKETS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ks = subparsers.add_parser(
        "ks",
        help="run the key server daemon",
        description="Run the GDOI key server of a Junos-style 'security group-vpn server' configuration.",
    )
    ks.add_argument("--config", required=True, type=Path, help="the configuration file (curly-brace or set form)")
    ks.add_argument("--state-dir", type=Path, help="keep the key store (ks.db) here instead of the configured state-file")
    ks.add_argument(
        "--socket", type=Path, default=ROLE_SOCKETS["server"], help="control socket (default %(default)s)"
    )
    ks.add_argument("--log-file", type=Path, help="log here (default: stderr in the foreground, else /var/log/groupvpn/ks.log)")
    ks.add_argument("--foreground", action="store_true", help="do not detach; log to stderr unless --log-file")
    ks.add_argument("--crash-before-push", action="store_true", help=argparse.SUPPRESS)
    ks.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = args.config.resolve()
    if daemon.check_config("ks", config, load) is None:
        return daemon.EXIT_FAILED
    state_dir = None if args.state_dir is None else args.state_dir.resolve()
    return daemon.run(
        "ks",
        lambda: KeyServerDaemon.start(config, state_dir, crash_before_push=args.crash_before_push),
        control_path=args.socket.resolve(),
        foreground=args.foreground,
        log_file=None if args.log_file is None else args.log_file.resolve(),
    )
