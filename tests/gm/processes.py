"""Real `groupvpn ks` / `groupvpn member` processes for the daemon and end-to-end tests.

Each ``Daemon`` runs in the foreground with its own control socket and
log file under a test directory, optionally inside a network namespace
(``ip netns exec``).  Waiting is bounded polling; ``stop`` escalates from
SIGTERM to SIGKILL, so a teardown never hangs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from groupvpn.runtime.control import ControlError, call

T = TypeVar("T")
PYTHON = sys.executable


def wait_for(condition: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something true, for at most ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def groupvpn(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "groupvpn.cli", *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class Daemon:
    """``groupvpn ROLE --config DIR/NAME.conf`` in the foreground, in ``namespace`` if given."""

    role: str  # "ks" or "member"
    name: str
    directory: Path
    namespace: str | None = None
    extra: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        return self.directory / f"{self.name}.conf"

    @property
    def socket(self) -> Path:
        return self.directory / f"{self.name}.sock"

    @property
    def log_file(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def write(self, text: str) -> Daemon:
        self.config.write_text(text)
        return self

    def command(self) -> list[str]:
        command = [PYTHON, "-m", "groupvpn.cli", self.role, "--config", str(self.config), "--socket", str(self.socket)]
        command += ["--log-file", str(self.log_file), "--foreground", *self.extra]
        return command if self.namespace is None else ["ip", "netns", "exec", self.namespace, *command]

    def start(self, timeout: float = 20.0) -> Daemon:
        """Start and wait until the control socket answers."""
        return self.launch().ready(timeout)

    def launch(self) -> Daemon:
        """Start without waiting (several daemons start faster side by side); then ``ready``."""
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def ready(self, timeout: float = 20.0) -> Daemon:
        wait_for(self._ready, timeout, f"{self.name} to serve its control socket")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            stderr = self.process.stderr.read().decode() if self.process.stderr else ""
            raise AssertionError(f"{self.name} exited with {self.process.returncode}: {stderr}\n{self.log}")
        return self.socket.exists()

    def request(self, op: str, topic: str | None = None, **options: Any) -> Any:
        role = "server" if self.role == "ks" else "member"
        return call(self.socket, {"op": op, "role": role, "topic": topic, **options}, timeout=10)

    def show(self, topic: str, **options: Any) -> Any:
        return self.request("show", topic, **options)

    def records(self, topic: str, **options: Any) -> list[dict[str, Any]]:
        return list(self.show(topic, **options)["records"])

    def try_show(self, topic: str, **options: Any) -> Any:
        try:
            return self.show(topic, **options)
        except ControlError:
            return None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit status."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout)

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def member_conf(
    *,
    servers: Sequence[str],
    local: str,
    group: int,
    psk: str,
    interface: str,
    server_port: int | None = None,
    routing_instance: str | None = None,
    proposal: str = "aes-128-cbc",
    vpn: str = "lan",
    df_bit: str = "clear",
    family: str = "inet",
) -> str:
    """A member configuration in the seed's shapes: IKE proposal/policy/gateway, vpn, service set, interface."""
    instance = f" routing-instance {routing_instance}" if routing_instance else ""
    port = f"\n                    server-port {server_port};" if server_port else ""
    return f"""\
security {{
    group-vpn {{
        member {{
            ike {{
                proposal p1 {{
                    authentication-method pre-shared-keys;
                    authentication-algorithm sha-256;
                    dh-group group14;
                    encryption-algorithm {proposal};
                    lifetime-seconds 3600;
                }}
                policy ks {{
                    mode main;
                    proposals p1;
                    pre-shared-key ascii-text "{psk}";
                }}
                gateway kss {{
                    ike-policy ks;
                    server-address [ {" ".join(servers)} ];
                    local-address {local}{instance};{port}
                }}
            }}
            ipsec {{
                vpn {vpn} {{
                    ike-gateway kss;
                    group {group};
                    match-direction output;
                    df-bit {df_bit};
                }}
            }}
        }}
    }}
}}
services {{
    service-set gvpn {{
        interface-service {{
            service-interface ms-0/0/0;
        }}
        ipsec-group-vpn {vpn};
    }}
}}
interfaces {{
    {interface} {{
        unit 0 {{
            family {family} {{
                service {{
                    input {{
                        service-set gvpn;
                    }}
                    output {{
                        service-set gvpn;
                    }}
                }}
            }}
        }}
    }}
}}
"""


def server_head(
    listen: str, state_file: Path, psk: str, members: Iterable[str], *, port: int | None = None, others: Iterable[str] = ()
) -> str:
    """A key server configuration up to its `ipsec` block: listen address, store, IKE admitting ``members``
    (gateway ``gms``) and ``others`` (gateway ``others``, when given).

    The caller appends the rest of the `server` hierarchy and closes the three open braces.
    """
    port_line = f"\n            port {port};" if port else ""
    others = list(others)
    others_line = f"\n                gateway others {{ ike-policy gms; address [ {' '.join(others)} ]; }}" if others else ""
    return f"""\
security {{
    group-vpn {{
        server {{
            listen-address {listen};{port_line}
            state-file {state_file};
            ike {{
                proposal p1 {{
                    authentication-method pre-shared-keys;
                    authentication-algorithm sha-256;
                    dh-group group14;
                    encryption-algorithm aes-128-cbc;
                    lifetime-seconds 3600;
                }}
                policy gms {{ mode main; proposals p1; pre-shared-key ascii-text "{psk}"; }}
                gateway gms {{ ike-policy gms; address [ {" ".join(members)} ]; }}{others_line}
            }}
"""


def ks_conf(
    *,
    listen: str,
    state_file: Path,
    psk: str,
    members: Sequence[str],
    others: Sequence[str],
    port: int | None = None,
    lans: Sequence[tuple[str, str]] = (("198.18.10.0/24", "198.18.20.0/24"),),
) -> str:
    """A key server: group 1 for ``members`` (a TEK for each pair of ``lans``, both ways), group 2 for ``others`` only."""
    teks = "".join(
        f"""
                ipsec-sa lan-{n} {{
                    proposal aes128-sha256;
                    match-policy out {{ source {a}; destination {b}; }}
                    match-policy back {{ source {b}; destination {a}; }}
                }}"""
        for n, (a, b) in enumerate(lans, 1)
    )
    return server_head(listen, state_file, psk, members, port=port, others=others) + f"""\
            ipsec {{
                proposal aes128-sha256 {{
                    authentication-algorithm hmac-sha-256-128;
                    encryption-algorithm aes-128-cbc;
                    lifetime-seconds 3600;
                }}
            }}
            group one {{
                group-id 1;
                ike-gateway gms;
                anti-replay-time-window 10;{teks}
            }}
            group two {{
                group-id 2;
                ike-gateway others;
                ipsec-sa lan {{
                    proposal aes128-sha256;
                    match-policy out {{ source 198.18.30.0/24; destination 198.18.40.0/24; }}
                }}
            }}
        }}
    }}
}}
"""
