"""Several "hosts" on one machine: network namespaces joined by a bridge, for partition tests.

Each host is a network namespace with ``lo`` and one veth link (``eth0``) into a *switch*
namespace that holds a bridge; addresses come from a random private /24. Nothing touches the
root namespace's network: the test process reaches the hosts by entering one of them
(``Network.entered``, a per-thread ``setns``), and every host process is started through
``ip netns exec``.

A host's link can be cut two ways (``Network.cut``):

- ``"drop"``: its switch port is disabled, so frames are dropped both ways and TCP just hangs
  (retransmits into nothing), as with a dead cable behind a switch or a firewall's DROP;
- ``"down"``: its link goes down and every TCP connection to or from it is reset on both ends
  (``ss -K``), so connections fail at once and new ones get ``ENETUNREACH``, as with a
  host whose interface went away or a firewall's REJECT.

``restore`` undoes either. ``close`` restores every link, stops every process it started (by
PID; what is left in the process group or in one of its namespaces is killed by PID too) and
deletes the namespaces. Namespace names start with ``iqt<pid>-`` so parallel runs never collide;
namespaces left by a run whose process is gone are removed on the next start.

Needs root and iproute2 (``ip``, ``bridge``, ``ss``); ``unavailable()`` says why not.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.support.procs import ROOT, Proc

PREFIX = "iqt"
CLONE_NEWNET = 0x40000000
Cut = Literal["drop", "down"]
_counter = itertools.count()


def _ip() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def _run(*argv: str, timeout: float = 15, check: bool = True) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc={out.returncode} {out.stderr.strip()}")
    return out.stdout


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    missing = [b for b in ("ip", "bridge", "ss") if shutil.which(b) is None]
    if missing:
        return f"iproute2 tools missing: {', '.join(missing)}"
    name = f"{PREFIX}{os.getpid()}-probe{next(_counter)}"
    try:
        _run(_ip(), "netns", "add", name)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"ip netns add failed: {exc}"
    try:
        _run(_ip(), "-n", name, "link", "add", "br0", "type", "bridge")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"no bridge inside a network namespace: {exc}"
    finally:
        _run(_ip(), "netns", "del", name, check=False)
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(ns: str) -> None:
    """SIGKILL, by PID, whatever still runs in namespace ``ns`` (only ours can be there)."""
    for line in _run(_ip(), "netns", "pids", ns, check=False).split():
        with suppress(ValueError, ProcessLookupError):
            os.kill(int(line), signal.SIGKILL)


def remove_stale() -> None:
    """Delete namespaces of earlier runs whose process is gone (a run killed hard)."""
    for line in _run(_ip(), "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{PREFIX}(\d+)-", name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _kill_inside(name)
            _run(_ip(), "netns", "del", name, check=False)


def _exited(pid: int, timeout: float) -> bool:
    """Whether child ``pid`` exited within ``timeout`` (without reaping it: its PID and process
    group stay ours until ``wait``)."""
    end = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)


def stop(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stop ``proc`` by PID (``sig``, then SIGKILL after ``timeout``), then SIGKILL what is left
    of its process group while the group's PID is still reserved (the leader not reaped)."""
    if proc.popen.returncode is None:
        try:
            os.kill(proc.pid, sig)
            os.kill(proc.pid, signal.SIGCONT)  # a paused one must run to handle it
        except ProcessLookupError:
            pass
        if not _exited(proc.pid, timeout):
            os.kill(proc.pid, signal.SIGKILL)
            _exited(proc.pid, 10)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.stop(timeout=10)  # reaps it and closes its log


@dataclass
class Host:
    """One namespace with one address, a folder of its own and the processes it runs."""

    name: str
    ns: str
    addr: str
    port: str
    """Its veth end in the switch namespace (the switch port)."""
    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    cut: Cut | None = None
    _signals: dict[int, int] = field(default_factory=dict)

    def spawn(
        self, argv: Sequence[str], env: dict[str, str], name: str, sig: int = signal.SIGTERM
    ) -> Proc:
        """Start ``argv`` on this host (``ip netns exec``, which execs: the PID is the
        program's); its output goes to ``<tmp>/<name>.log``."""
        log = self.tmp / f"{name}.log"
        proc = Proc([_ip(), "netns", "exec", self.ns, *argv], env, log, f"{self.name}:{name}")
        self.procs.append(proc)
        self._signals[proc.pid] = sig
        return proc

    def run(
        self, argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60
    ) -> str:
        """Run ``argv`` on this host to the end; its stdout (raises on failure)."""
        out = subprocess.run(
            [_ip(), "netns", "exec", self.ns, *argv],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)}: rc={out.returncode}\n{out.stderr}")
        return out.stdout

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            stop(p, self._signals.get(p.pid, signal.SIGTERM))
        self.procs.clear()


class Network:
    """A switch namespace with a bridge and hosts plugged into it (see the module)."""

    def __init__(self, tmp: Path) -> None:
        remove_stale()
        self.tmp = tmp
        self.tag = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.subnet = f"10.213.{random.randrange(256)}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._add_ns(self.switch)
        _run(_ip(), "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run(_ip(), "-n", self.switch, "link", "set", "br0", "up")

    def _add_ns(self, ns: str) -> None:
        _run(_ip(), "netns", "add", ns)
        self._namespaces.append(ns)
        _run(_ip(), "-n", ns, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A new host ``name`` (a short word: it names its switch port) with the next address."""
        ns, port = f"{self.tag}-{name}", f"p-{name}"[:15]
        addr = f"{self.subnet}.{10 + len(self.hosts)}"
        self._add_ns(ns)
        sw = (_ip(), "-n", self.switch)
        _run(*sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run(*sw, "link", "set", port, "master", "br0")
        _run(*sw, "link", "set", port, "up")
        _run(_ip(), "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _run(_ip(), "-n", ns, "link", "set", "eth0", "up")
        tmp = self.tmp / name
        (tmp / "tmp").mkdir(parents=True, exist_ok=True)
        host = self.hosts[name] = Host(name, ns, addr, port, tmp)
        return host

    @contextmanager
    def entered(self, host: Host) -> Iterator[Host]:
        """Run the calling thread (and threads it starts meanwhile) on ``host``'s network."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{host.ns}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield host
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)

    def cut(self, host: Host, how: Cut) -> None:
        """Cut ``host`` off the network, both ways (see the module for ``drop`` / ``down``)."""
        if how == "drop":
            _run("bridge", "-n", self.switch, "link", "set", "dev", host.port, "state", "0")
        else:
            _run(_ip(), "-n", host.ns, "link", "set", "eth0", "down")
            host.run(["ss", "-K", "-t", "-n", "state", "connected"])
            for other in self.hosts.values():
                if other is not host:
                    other.run(["ss", "-K", "-t", "-n", "dst", host.addr])
        host.cut = how

    def restore(self, host: Host) -> None:
        """Plug ``host`` back in."""
        if host.cut == "drop":
            _run("bridge", "-n", self.switch, "link", "set", "dev", host.port, "state", "3")
        elif host.cut == "down":
            _run(_ip(), "-n", host.ns, "link", "set", "eth0", "up")
        host.cut = None

    def close(self) -> None:
        """Restore links, stop every process (hosts in reverse order), delete the namespaces."""
        errors: list[BaseException] = []
        for host in reversed(list(self.hosts.values())):
            try:
                if host.cut:
                    self.restore(host)
            except Exception as exc:
                errors.append(exc)
            try:
                host.stop_all()
            except Exception as exc:
                errors.append(exc)
        for ns in reversed(self._namespaces):
            _kill_inside(ns)
            _run(_ip(), "netns", "del", ns, check=False)
        self._namespaces.clear()
        if errors:
            raise errors[0]
