"""strongSwan's charon as a third-party IKEv1 peer, in private network namespaces.

Follows shared/lab-notes/interop-lab.md §2: Debian's plain ``charon`` with the
``kernel-netlink`` plugin (this kernel has no ESP state, so Quick Mode fails
to install but Main Mode completes), a private tmpfs on ``/run`` per
``ip netns exec`` so pid files never clash with another charon, the vici
socket and a filelog with ``ike = 4`` (key dumps) in a per-test directory.

``NetnsPair`` builds two namespaces joined by a veth pair on 198.18.0.0/24
(benchmarking space, no route out) with names unique per process, and tears
everything down even when a test fails.  ``Charon`` starts, configures,
drives and stops one daemon; ``key_dumps`` reads the SKEYID family back out of
its log so our own derivation can be compared with charon's.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHARON = Path("/usr/lib/ipsec/charon")
SWANCTL = shutil.which("swanctl")

requires_strongswan = pytest.mark.skipif(
    not CHARON.exists() or SWANCTL is None or os.geteuid() != 0,
    reason="needs root, strongswan-charon and strongswan-swanctl (`make test` installs them)",
)

# The lab notes' plugin list plus md5/gmp: IKEv1 PSK with MODP/ECP groups, AES/3DES/DES (openssl), MD5/SHA1/SHA2.
PLUGINS = "kernel-netlink random nonce openssl aes sha1 sha2 md5 hmac kdf gmp pem pkcs1 x509 pubkey socket-default vici"

_STRONGSWAN_CONF = """\
charon {{
    port = {port}
    port_nat_t = {port_nat_t}
    load = {plugins}
    install_routes = no
    install_virtual_ip = no
    retransmit_tries = {retransmit_tries}
    retransmit_timeout = 1.0
    retransmit_base = 1.4
    plugins {{
        vici {{
            socket = unix://{dir}/charon.vici
        }}
    }}
    filelog {{
        main {{
            path = {dir}/charon.log
            time_format = %H:%M:%S
            ike_name = yes
            flush_line = yes
            append = no
            default = 1
            ike = 4
            chd = 2
            enc = {enc}
            cfg = 2
            net = {net}
            knl = 1
        }}
    }}
}}
"""


def run(args: Sequence[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a command, failing loudly with its output when it fails."""
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done


@dataclass(frozen=True, slots=True)
class Host:
    """One end of the lab link: its namespace, interface and address."""

    netns: str
    ifname: str
    address: str

    def command(self, *args: str) -> list[str]:
        """``args`` wrapped to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *args]


@dataclass
class NetnsPair:
    """Two fresh namespaces joined by a veth pair; ``close`` removes both and everything in them."""

    left: Host
    right: Host
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, subnet: str = "198.18.0") -> NetnsPair:
        tag = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"
        left = Host(f"gvpn-{tag}-l", f"gl{tag}", f"{subnet}.1")
        right = Host(f"gvpn-{tag}-r", f"gr{tag}", f"{subnet}.2")
        pair = cls(left, right)
        try:
            for host in (left, right):
                run(["ip", "netns", "add", host.netns])
            run(["ip", "link", "add", left.ifname, "netns", left.netns, "type", "veth",
                 "peer", "name", right.ifname, "netns", right.netns])
            for host in (left, right):
                run(["ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.ifname])
                run(["ip", "-n", host.netns, "link", "set", host.ifname, "up"])
                run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        except BaseException:
            pair.close()
            raise
        return pair

    def popen(self, host: Host, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process in ``host``'s namespace that ``close`` will reap."""
        process = subprocess.Popen(host.command(*args), **kwargs)  # type: ignore[call-overload]
        self._processes.append(process)
        return process

    def close(self) -> None:
        for process in self._processes:
            stop_process(process)
        for host in (self.left, self.right):
            # Anything still running in our namespace was started by this test; end it by pid.
            pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            # Deleting the namespace also destroys the veth pair.
            subprocess.run(["ip", "netns", "delete", host.netns], capture_output=True)


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; no-op when already gone."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    pair = NetnsPair.create()
    try:
        yield pair
    finally:
        pair.close()


class CharonError(RuntimeError):
    pass


@dataclass
class Charon:
    """One charon daemon in ``host``'s namespace with its files under ``workdir``."""

    pair: NetnsPair
    host: Host
    workdir: Path
    # charon expects a non-ESP marker on any datagram where neither port is 500
    # (receiver.c); plain ISAKMP to or from charon therefore needs 500 on one side.
    port: int = 500
    port_nat_t: int = 4500
    retransmit_tries: int = 2
    log_levels: tuple[int, int] = (1, 2)  # enc, net; raise to see every parsed field
    process: subprocess.Popen[bytes] | None = None

    @property
    def vici_uri(self) -> str:
        return f"unix://{self.workdir}/charon.vici"

    @property
    def log_path(self) -> Path:
        return self.workdir / "charon.log"

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "strongswan.conf"
        conf.write_text(
            _STRONGSWAN_CONF.format(
                port=self.port,
                port_nat_t=self.port_nat_t,
                plugins=PLUGINS,
                retransmit_tries=self.retransmit_tries,
                enc=self.log_levels[0],
                net=self.log_levels[1],
                dir=self.workdir,
            )
        )
        # A private tmpfs on /run (this `ip netns exec` has its own mount namespace) keeps
        # /run/charon.pid apart from any other charon on the machine.
        script = f"mount -t tmpfs tmpfs /run && mkdir -p /run/strongswan && exec {CHARON}"
        out = open(self.workdir / "charon.out", "wb")
        self.process = self.pair.popen(
            self.host, ["env", f"STRONGSWAN_CONF={conf}", "sh", "-c", script], stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CharonError(f"charon exited with {self.process.returncode}: {self._tail()}")
            if self._answers() and self._bound():
                return
            time.sleep(0.05)
        raise CharonError(f"charon not ready after {timeout} s: {self._tail()}")

    def _answers(self) -> bool:
        probe = subprocess.run(
            self.host.command(SWANCTL or "swanctl", "--stats", "--uri", self.vici_uri), capture_output=True
        )
        return probe.returncode == 0

    def _bound(self) -> bool:
        sockets = subprocess.run(self.host.command("ss", "-lun"), capture_output=True, text=True).stdout
        return f":{self.port} " in sockets

    def _tail(self, lines: int = 8) -> str:
        text = self.log() or (self.workdir / "charon.out").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def swanctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run swanctl against this daemon (no check: initiate failures are results)."""
        return subprocess.run(
            self.host.command(SWANCTL or "swanctl", *args, "--uri", self.vici_uri),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def load(self, swanctl_conf: str) -> None:
        path = self.workdir / "swanctl.conf"
        path.write_text(swanctl_conf)
        done = self.swanctl("--load-all", "--file", str(path))
        if done.returncode != 0 or "successfully loaded 1 connections" not in done.stdout:
            raise CharonError(f"swanctl --load-all failed: {done.stdout}{done.stderr}")

    def initiate(self, ike: str = "lab", child: str | None = None, timeout: int = 15) -> subprocess.CompletedProcess[str]:
        args = ["--initiate", "--ike", ike, "--timeout", str(timeout)]
        if child is not None:
            args += ["--child", child]
        return self.swanctl(*args, timeout=timeout + 10)

    def list_sas(self) -> str:
        return self.swanctl("--list-sas").stdout

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_mark(self) -> int:
        """Where the log ends now; pass it as ``since`` to look only at what follows."""
        return len(self.log())

    def wait_log(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        """Poll the log (bounded) until ``pattern`` appears after offset ``since``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log()[since:])
            if match is not None:
                return match
            if time.monotonic() >= deadline:
                raise CharonError(f"{pattern!r} not in charon's log after {timeout} s: {self._tail(20)}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def psk_connection(
    *,
    local: str,
    remote: str,
    psk: str,
    proposals: str,
    remote_port: int = 500,
    name: str = "lab",
    remote_id: str | None = None,
    dpd_delay: int | None = None,
) -> str:
    """swanctl.conf for IKEv1 Main Mode PSK between two lab addresses (one `key = value` per line)."""
    remote_id_line = f"            id = {remote_id}\n" if remote_id else ""
    dpd_line = f"        dpd_delay = {dpd_delay}s\n" if dpd_delay else ""
    return f"""\
connections {{
    {name} {{
        version = 1
        aggressive = no
        local_addrs = {local}
        remote_addrs = {remote}
        remote_port = {remote_port}
        proposals = {proposals}
{dpd_line}        local {{
            auth = psk
            id = {local}
        }}
        remote {{
            auth = psk
{remote_id_line}        }}
        children {{
            net {{
                mode = tunnel
                local_ts = 10.1.0.0/16
                remote_ts = 10.2.0.0/16
                esp_proposals = aes128-sha1
            }}
        }}
    }}
}}
secrets {{
    ike-{name} {{
        secret = "{psk}"
    }}
}}
"""


_DUMP_HEAD = re.compile(r"<(?:[^|>]*\|)?(\d+)> (.+?) => (\d+) bytes @ 0x[0-9a-f]+$")
_DUMP_LINE = re.compile(r"<(?:[^|>]*\|)?(\d+)>\s+(\d+): ((?:[0-9A-F]{2} ){1,16})")

KEY_LABELS = ("SKEYID", "SKEYID_d", "SKEYID_a", "SKEYID_e", "encryption key Ka", "initial IV")


def key_dumps(log: str, labels: Sequence[str] = KEY_LABELS) -> dict[int, dict[str, bytes]]:
    """The hex dumps charon writes at ``ike = 4``: IKE SA unique id -> label -> octets.

    A label logged twice for one SA (e.g. ``next IV``) keeps the last dump.
    """
    out: dict[int, dict[str, bytes]] = {}
    current: tuple[int, str, int] | None = None
    collected = bytearray()
    for line in log.splitlines():
        if current is not None:
            body = _DUMP_LINE.search(line)
            if body is not None and int(body.group(1)) == current[0]:
                collected += bytes.fromhex(body.group(3))
                if len(collected) >= current[2]:
                    out.setdefault(current[0], {})[current[1]] = bytes(collected[: current[2]])
                    current = None
                continue
            current = None
        head = _DUMP_HEAD.search(line)
        if head is not None and head.group(2) in labels:
            current = (int(head.group(1)), head.group(2), int(head.group(3)))
            collected = bytearray()
            if current[2] == 0:
                out.setdefault(current[0], {})[current[1]] = b""
                current = None
    return out


_ESTABLISHED = re.compile(r"IKE_SA (\S+)\[(\d+)\] established between (\S+)\[[^\]]*\]\.\.\.(\S+)\[[^\]]*\]")


@dataclass(frozen=True, slots=True)
class Established:
    name: str
    uid: int
    local: str
    remote: str


def established(log: str) -> list[Established]:
    """Every "IKE_SA name[uid] established between a[...]...b[...]" line, in order."""
    return [Established(m[1], int(m[2]), m[3], m[4]) for m in _ESTABLISHED.finditer(log)]


_LISTED_SA = re.compile(r"^(\S+): #(\d+), (\w+), IKEv1, ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r", re.M)


@dataclass(frozen=True, slots=True)
class ListedSa:
    """One IKE SA as ``swanctl --list-sas`` shows it (the log never shows the cookies)."""

    name: str
    uid: int
    state: str
    initiator_cookie: bytes
    responder_cookie: bytes


def listed_sas(text: str) -> list[ListedSa]:
    return [ListedSa(m[1], int(m[2]), m[3], bytes.fromhex(m[4]), bytes.fromhex(m[5])) for m in _LISTED_SA.finditer(text)]
