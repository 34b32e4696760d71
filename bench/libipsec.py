"""strongSwan's userspace ESP (charon + kernel-libipsec) between two lab members: what a Linux user would run.

This kernel has no ESP (lab-notes/interop-lab.md §2.2), so charon's
``kernel-libipsec`` plugin does ESP in userspace over a TUN device
``ipsec0`` and always UDP-encapsulates it (port 4500): no header
preservation, unlike the group VPN.  Each charon runs in its member's
namespace with a private tmpfs on /run (``ip netns exec`` gives it its own
mount namespace), so pid files and sockets never meet another charon's;
its files go to a directory that must not be under /run for that reason.
IKEv2 with a pre-shared key protects LAN-to-LAN traffic; ``install_routes``
puts the remote LAN in routing table 220 via ``ipsec0``, which also
catches the hosts' forwarded traffic.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Self

CHARON = Path("/usr/lib/ipsec/charon")
PLUGIN = Path("/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so")
PLUGINS = (
    "kernel-libipsec kernel-netlink random nonce openssl aes sha1 sha2 hmac gcm kdf gmp "
    "pem pkcs1 x509 pubkey socket-default vici"
)
READY_TIMEOUT = 10.0
SA_TIMEOUT = 15
STOP_GRACE = 5.0

_STRONGSWAN_CONF = """\
charon {{
    load = {plugins}
    install_routes = yes
    install_virtual_ip = no
    plugins {{
        vici {{
            socket = unix://{dir}/charon.vici
        }}
    }}
    filelog {{
        main {{
            path = {dir}/charon.log
            time_format = %H:%M:%S
            flush_line = yes
            append = no
            default = 1
        }}
    }}
}}
"""

# swanctl.conf takes one `key = value` per line.
_SWANCTL_CONF = """\
connections {{
    bench {{
        version = 2
        local_addrs = {local}
        remote_addrs = {remote}
        encap = yes
        proposals = aes128-sha256-modp2048
        local {{
            auth = psk
            id = {local}
        }}
        remote {{
            auth = psk
            id = {remote}
        }}
        children {{
            lans {{
                mode = tunnel
                local_ts = {local_ts}
                remote_ts = {remote_ts}
                esp_proposals = {esp}
            }}
        }}
    }}
}}
secrets {{
    ike-bench {{
        secret = "{psk}"
    }}
}}
"""


class StrongSwanError(RuntimeError):
    pass


def missing() -> str | None:
    """Why the strongSwan baseline cannot run here, or None."""
    if not CHARON.exists() or shutil.which("swanctl") is None:
        return "strongswan-charon and strongswan-swanctl are not installed"
    if not PLUGIN.exists():
        return "the kernel-libipsec plugin is not installed (Debian package libcharon-extra-plugins)"
    return None


@dataclass(frozen=True)
class Gateway:
    """One charon's view of the tunnel: its namespace, WAN address and protected LAN."""

    netns: str
    address: IPv4Address
    lan: IPv4Network


class Charon:
    """One charon in ``gateway.netns`` with its files under ``workdir``."""

    def __init__(self, gateway: Gateway, workdir: Path) -> None:
        self.gateway = gateway
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"unix://{self.workdir}/charon.vici"

    def swanctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.gateway.netns, "swanctl", *args, "--uri", self.uri],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "strongswan.conf"
        conf.write_text(_STRONGSWAN_CONF.format(plugins=PLUGINS, dir=self.workdir))
        script = f"mount -t tmpfs tmpfs /run && mkdir -p /run/strongswan && exec {CHARON}"
        with open(self.workdir / "charon.out", "wb") as out:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.gateway.netns, "env", f"STRONGSWAN_CONF={conf}", "sh", "-c", script],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while self.swanctl("--stats").returncode != 0:
            if self.process.poll() is not None:
                raise StrongSwanError(
                    f"charon in {self.gateway.netns} exited with {self.process.returncode}: {self._tail()}"
                )
            if time.monotonic() > deadline:
                raise StrongSwanError(
                    f"charon in {self.gateway.netns} not ready after {READY_TIMEOUT} s: {self._tail()}"
                )
            time.sleep(0.05)

    def load(self, peer: Gateway, esp: str, psk: str) -> None:
        path = self.workdir / "swanctl.conf"
        path.write_text(
            _SWANCTL_CONF.format(
                local=self.gateway.address,
                remote=peer.address,
                local_ts=self.gateway.lan,
                remote_ts=peer.lan,
                esp=esp,
                psk=psk,
            )
        )
        path.chmod(0o600)
        done = self.swanctl("--load-all", "--file", str(path))
        if done.returncode != 0 or "successfully loaded 1 connections" not in done.stdout:
            raise StrongSwanError(f"swanctl --load-all in {self.gateway.netns}: {done.stdout}{done.stderr}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_GRACE)

    def _tail(self, lines: int = 8) -> str:
        log = self.workdir / "charon.log"
        text = (
            log.read_text(errors="replace")
            if log.exists()
            else (self.workdir / "charon.out").read_text(errors="replace")
        )
        return "\n".join(text.splitlines()[-lines:])


class Tunnel:
    """Two charons and one CHILD_SA carrying ``left.lan`` <-> ``right.lan`` with ``esp`` (swanctl syntax)."""

    def __init__(self, left: Gateway, right: Gateway, esp: str, workdir: Path) -> None:
        self.esp = esp
        self.left = Charon(left, workdir / "left")
        self.right = Charon(right, workdir / "right")

    def __enter__(self) -> Self:
        psk = secrets.token_urlsafe(24)
        try:
            for charon, peer in ((self.left, self.right), (self.right, self.left)):
                charon.start()
                charon.load(peer.gateway, self.esp, psk)
            done = self.left.swanctl(
                "--initiate", "--child", "lans", "--timeout", str(SA_TIMEOUT), timeout=SA_TIMEOUT + 10
            )
            if done.returncode != 0:
                raise StrongSwanError(f"CHILD_SA not established: {done.stdout[-800:]}{done.stderr}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.left.stop()
        self.right.stop()
