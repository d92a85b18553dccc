"""Private brokers a test may restart: a Redis and a RabbitMQ of its own, on loopback.

The machine's shared Redis and RabbitMQ serve every test; a restart test needs a broker it
owns. Each starts as a child process in its own session and is stopped by that session's
process group (RabbitMQ's start script hands over to ``beam.smp`` as the ``rabbitmq`` user).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.procs import free_port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateBroker:
    """A broker process of this test's; ``stop`` and ``start`` again keep its port."""

    kind = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        return _answers(self.port)

    def start(self, timeout: float = 60) -> float:
        """Start it; returns when it answers (monotonic time)."""
        log = (self.root / "server.log").open("ab")
        self.popen = subprocess.Popen(
            self.argv(),
            env=self.env(),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        end = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > end or self.popen.poll() is not None:
                self.stop()
                tail = (self.root / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.kind} did not start:\n{tail}")
            time.sleep(0.05)
        return time.monotonic()

    def close(self) -> None:
        """Stop it for good and remove what it kept."""
        self.stop()

    def stop(self, timeout: float = 20) -> None:
        """End its process group (SIGTERM, then SIGKILL) and wait until the port is free."""
        if self.popen is None:
            return
        pgid = self.popen.pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            end = time.monotonic() + wait
            while time.monotonic() < end:
                self.popen.poll()  # reap the leader (a zombie still counts as in the group)
                if not (self._group_alive(pgid) or _answers(self.port)):
                    break
                time.sleep(0.05)
            self.popen.poll()
            if not self._group_alive(pgid):
                break
        self.popen = None

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False


class PrivateRedis(PrivateBroker):
    """Keeps nothing on disk: a restart loses every message, as a cache-style Redis would."""

    kind = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        exe = shutil.which("redis-server") or "redis-server"
        return [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        # (--appendonly is off by default)


class PrivateRabbit(PrivateBroker):
    """A RabbitMQ node of its own (own node name, ports, data folder); durable queues and
    persistent messages survive its restart, as they would in production."""

    kind = "rabbitmq"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.dist_port = free_port()
        self.node = f"iqtest{self.port}@localhost"
        # the node runs as the rabbitmq user, who cannot enter pytest's folders (mode 0700)
        self.data = Path(tempfile.mkdtemp(prefix="inferq-rabbit-"))
        (self.data / "plugins").write_text("[].\n")
        (self.data / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        for p in (self.data, *self.data.iterdir()):
            shutil.chown(p, "rabbitmq", "rabbitmq")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def argv(self) -> list[str]:
        # as the rabbitmq user directly: started as root, its script switches user through su,
        # which opens a new session that a stop of this process group would not reach
        exe = shutil.which("rabbitmq-server") or "rabbitmq-server"
        return ["runuser", "-u", "rabbitmq", "--", exe]

    def env(self) -> dict[str, str]:
        r = self.data
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(r / "mnesia"),
            "RABBITMQ_LOG_BASE": str(r / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(r / "plugins"),
            "RABBITMQ_PID_FILE": str(r / "pid"),
            "RABBITMQ_CONFIG_FILE": str(r / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(r / "advanced.config"),
        }

    def ready(self) -> bool:
        """AMQP logins work (the port opens before the broker accepts them)."""
        if not _answers(self.port):
            return False
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=1) as conn:
                conn.connect()
            return True
        except Exception:
            return False


class PrivatePostgres(PrivateBroker):
    """A PostgreSQL server of its own (``initdb`` into a folder, trust auth, loopback only), run
    as the ``postgres`` user; ``stop`` is a fast shutdown (``pg_ctl stop -m fast``: SIGINT)."""

    kind = "postgres"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.data = Path(tempfile.mkdtemp(prefix="inferq-pg-"))
        shutil.chown(self.data, "postgres", "postgres")
        self.pgdata = self.data / "pgdata"
        subprocess.run(
            [
                "runuser", "-u", "postgres", "--",
                shutil.which("initdb") or "initdb",
                "-D", str(self.pgdata), "-A", "trust", "-U", "postgres", "--no-sync",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def argv(self) -> list[str]:
        return [
            "runuser", "-u", "postgres", "--",
            shutil.which("postgres") or "postgres",
            "-D", str(self.pgdata), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
            "-k", str(self.data), "-c", "fsync=off", "-c", "max_connections=200",
        ]  # fmt: skip

    def ready(self) -> bool:
        if not _answers(self.port):
            return False
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    def stop(self, timeout: float = 20) -> None:
        if self.popen is not None and self.popen.poll() is None:
            # the postmaster (runuser's child) takes SIGINT as a fast shutdown
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGINT)
            end = time.monotonic() + timeout
            while time.monotonic() < end and (self.popen.poll() is None or _answers(self.port)):
                time.sleep(0.05)
        super().stop(timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


def available(kind: str) -> str | None:
    """Why a private ``kind`` broker cannot run here, or None."""
    exe = {"redis": "redis-server", "rabbitmq": "rabbitmq-server", "postgres": "postgres"}[kind]
    if shutil.which(exe) is None:
        return f"{exe} is not installed"
    if kind != "redis" and os.geteuid() != 0:
        return f"a private {kind} server here runs as its own user, which needs root"
    return None
