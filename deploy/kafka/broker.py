"""A local single-node Apache Kafka broker (KRaft, combined broker+controller).

The real broker runs on the machine's ``java`` from jars that Maven fetches
from Maven Central once into a cache outside the repo (see README.md).

Module use::

    from deploy.kafka.broker import KafkaBroker

    with KafkaBroker.ephemeral(tmp_path / "kafka") as broker:
        ...  # connect clients to broker.bootstrap

CLI::

    python deploy/kafka/broker.py {fetch,start,stop,status}
        [--port N] [--controller-port N] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
FUTURE_TIMESTAMPS_MS = 7 * 24 * 3600 * 1000

DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
DEFAULT_DATA_DIR = REPO_ROOT / ".run" / "kafka"

HOST = "127.0.0.1"
NODE_ID = 1

# The serial GC starts fastest and suits a small heap on a 2-core machine.
_JVM_COMMON = ("-XX:+UseSerialGC", "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}")
BROKER_JVM_OPTS = ("-Xms256m", "-Xmx1g", *_JVM_COMMON)
# The storage tool lives about a second: C1 alone gets it there sooner.
TOOL_JVM_OPTS = ("-Xmx256m", "-XX:TieredStopAtLevel=1", *_JVM_COMMON)

_MARKER = ".complete"
_LOG_TAIL_LINES = 40


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted, started or stopped."""


def kafka_version() -> str:
    """The Kafka version pinned in pom.xml (the one source of truth)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(POM).findtext("m:properties/m:kafka.version", namespaces=ns)
    if not version:
        raise BrokerError(f"{POM} has no <kafka.version> property")
    return version


def libs_dir() -> Path:
    """Where the broker classpath is cached: outside the repo, one dir per version."""
    cache = os.environ.get("FAULTLINE_CACHE") or Path.home() / ".cache" / "faultline"
    return Path(cache) / "kafka" / kafka_version() / "libs"


def fetch_libs() -> Path:
    """Copy the broker's runtime jars into libs_dir() unless already there."""
    libs = libs_dir()
    marker = libs / _MARKER
    # The marker holds the pom's hash, so editing the pom refreshes the cache.
    stamp = hashlib.sha256(POM.read_bytes()).hexdigest()
    if _read_text(marker) == stamp:
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".lock", "w") as lock:
        # Parallel test sessions may fetch at once; one copies, the rest wait.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_text(marker) == stamp:
            return libs
        shutil.rmtree(libs, ignore_errors=True)  # drop a partial or outdated copy
        command = [
            _require("mvn"),
            "-B",
            "-q",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"mvn failed to fetch Kafka jars:\n{_tail(result.stdout + result.stderr)}")
        marker.write_text(stamp)
    return libs


def new_cluster_id() -> str:
    """A cluster id as Kafka's Uuid.randomUuid() makes it: 16 random bytes, base64url, no padding."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # Kafka avoids these: they read as CLI flags
            return cluster_id


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class KafkaBroker:
    """One broker+controller process whose state all lives in ``data_dir``."""

    def __init__(self, port: int, controller_port: int, data_dir: Path) -> None:
        if port == controller_port:
            raise ValueError(f"port and controller_port must differ (both {port})")
        self.port = port
        self.controller_port = controller_port
        self.data_dir = Path(data_dir).resolve()
        self.config_path = self.data_dir / "server.properties"
        self.log_path = self.data_dir / "broker.log"
        self.pid_path = self.data_dir / "broker.pid"
        self.log_dirs = self.data_dir / "logs"
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def ephemeral(cls, data_dir: Path) -> KafkaBroker:
        """A broker on two distinct free ports, for a private per-test-session broker."""
        with socket.socket() as first, socket.socket() as second:
            # Both held open while picking, so the kernel cannot hand out the same port twice.
            first.bind((HOST, 0))
            second.bind((HOST, 0))
            return cls(first.getsockname()[1], second.getsockname()[1], data_dir)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def fetch(self) -> Path:
        """Ensure the broker classpath is cached; returns the libs directory."""
        return fetch_libs()

    def format(self) -> None:
        """Write server.properties and format the storage unless already formatted."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._server_properties())
        if (self.log_dirs / "meta.properties").exists():
            return
        result = subprocess.run(
            [
                *self._java(TOOL_JVM_OPTS),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                new_cluster_id(),
                "-c",
                str(self.config_path),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise BrokerError(f"kafka storage format failed:\n{_tail(result.stdout + result.stderr)}")

    def start(self, timeout: float = 120.0) -> None:
        """Launch the broker detached and wait until it serves client requests."""
        launched = False
        if not self.is_running():
            self.format()
            for port in (self.port, self.controller_port):
                _check_port_free(port)
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    [*self._java(BROKER_JVM_OPTS), "kafka.Kafka", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    start_new_session=True,  # outlives the launching CLI; no terminal signals
                )
            self.pid_path.write_text(f"{self._proc.pid}\n")
            launched = True
        try:
            self._wait_ready(timeout)
        except BrokerError:
            if launched:
                self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the broker (SIGKILL after ``timeout``); a no-op if it is not running."""
        pid = self.pid
        if pid is not None:
            _signal(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout):
                _signal(pid, signal.SIGKILL)
                if not self._wait_exit(pid, 10.0):
                    raise BrokerError(f"Kafka broker pid {pid} survived SIGKILL")
        if self._proc is not None:
            self._proc.wait()  # reap our child so it does not linger as a zombie
            self._proc = None
        self.pid_path.unlink(missing_ok=True)

    def is_running(self) -> bool:
        return self.pid is not None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (from this object or the pid file)."""
        if self._proc is not None:
            pid: int | None = self._proc.pid
        else:
            text = _read_text(self.pid_path)
            pid = int(text) if text and text.strip().isdigit() else None
        return pid if pid is not None and self._pid_alive(pid) else None

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _server_properties(self) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": NODE_ID,
            # A static single voter: restarting on other ports needs no re-format.
            "controller.quorum.voters": f"{NODE_ID}@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": self.log_dirs,
            "num.partitions": 1,
            "auto.create.topics.enable": "true",
            "group.initial.rebalance.delay.ms": 0,
            # One replica, and one partition per internal topic: creating the
            # default 50 __consumer_offsets partitions stalls a 2-core machine.
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "share.coordinator.state.topic.num.partitions": 1,
            # Fewer threads and smaller buffers/segments suit a small test machine.
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
            "log.segment.bytes": 8 * 1024 * 1024,
            # `make run` replays event time after whatever an earlier run left in the topics (the rca
            # service seeks by time), so repeated runs move ahead of the clock; Kafka 4 refuses records
            # more than an hour ahead by default, a local broker takes a week.
            "log.message.timestamp.after.max.ms": FUTURE_TIMESTAMPS_MS,
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _java(self, jvm_opts: tuple[str, ...]) -> list[str]:
        return [_require("java"), *jvm_opts, "-cp", str(self.fetch() / "*")]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise BrokerError(f"Kafka broker exited during startup; {self.log_path}:\n{self._log_tail()}")
            with contextlib.suppress(OSError):
                if _live_brokers(self.port, timeout=2.0) > 0:
                    return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"Kafka broker not ready on {self.bootstrap} after {timeout:g}s; "
                    f"{self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.2)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._exited(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _exited(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is not None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        # Not _pid_alive(): an exiting process loses its command line before
        # it has closed its sockets. Exited means zombie (Z) or dead (X).
        return stat.rpartition(")")[2].split()[0] in ("Z", "X")

    def _pid_alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        # A stale pid file can name a recycled pid: only our broker's command
        # line carries our config path (a zombie's is empty).
        return str(self.config_path).encode() in cmdline.split(b"\0")

    def _log_tail(self) -> str:
        return _tail(_read_text(self.log_path) or "(no log)")


def _live_brokers(port: int, timeout: float) -> int:
    """Ask a real Kafka Metadata v1 request how many unfenced brokers the cluster has.

    The listener socket accepts TCP connections well before the broker serves
    requests, and a fenced (not yet registered) broker lists no brokers, so a
    non-zero count means clients can use it.
    """
    correlation_id = 0x46_4C_54_4C
    client_id = b"faultline-probe"
    # Header v1: api_key=3 (Metadata), api_version=1, correlation id, client id;
    # body: an empty topic array, which in v1 means "no topics".
    request = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        response = _recv_exact(sock, size)
    if size < 8:
        raise ConnectionError("short Metadata response")
    got_id, brokers = struct.unpack_from(">ii", response)
    if got_id != correlation_id:
        raise ConnectionError(f"unexpected correlation id {got_id}")
    return brokers


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        data += chunk
    return bytes(data)


def _check_port_free(port: int) -> None:
    # Otherwise the readiness probe could be answered by whatever holds the port.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise BrokerError(f"port {HOST}:{port} is already in use") from exc


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        os.kill(pid, sig)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` not found on PATH; the Kafka broker needs it")
    return path


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(description="Local single-node Kafka broker for Faultline.")
    parser.add_argument("command", choices=("fetch", "start", "stop", "status"))
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("FAULTLINE_KAFKA_PORT", DEFAULT_PORT)),
        help="PLAINTEXT client port (env FAULTLINE_KAFKA_PORT, default %(default)s)",
    )
    parser.add_argument(
        "--controller-port",
        type=int,
        default=int(env.get("FAULTLINE_KAFKA_CONTROLLER_PORT", DEFAULT_CONTROLLER_PORT)),
        help="KRaft controller port (env FAULTLINE_KAFKA_CONTROLLER_PORT, default %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env.get("FAULTLINE_KAFKA_DATA_DIR", DEFAULT_DATA_DIR)),
        help="config, logs, pid file and data (env FAULTLINE_KAFKA_DATA_DIR, default %(default)s)",
    )
    args = parser.parse_args(argv)
    broker = KafkaBroker(args.port, args.controller_port, args.data_dir)
    try:
        if args.command == "fetch":
            print(broker.fetch())
        elif args.command == "start":
            began = time.monotonic()
            broker.start()
            print(
                f"Kafka {kafka_version()} ready at {broker.bootstrap} in {time.monotonic() - began:.1f}s "
                f"(log: {broker.log_path})"
            )
        elif args.command == "stop":
            broker.stop()
            print("Kafka stopped")
        elif (pid := broker.pid) is not None:
            print(f"running at {broker.bootstrap} (pid {pid})")
        else:
            print(f"not running ({broker.bootstrap})")
            return 1
    except BrokerError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
