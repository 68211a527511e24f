"""A local Mosquitto broker run by this process: tests, benches and the demo start one here.

Usage::

    from dangol_cloud.local_broker import MosquittoBroker
    with MosquittoBroker(tmp_path) as broker:                 # anonymous access, a free loopback port
        client.connect(broker.host, broker.port)
    with MosquittoBroker(tmp_path, users={"cloud": "pw"}, acl=ACL_TEXT) as broker:
        ...                                                   # password file + ACL, no anonymous
    with MosquittoBroker(tmp_path, config_file=out / "dangol-dynsec.conf") as broker:
        ...                                                   # broker-config's dynamic-security plugin

Files written in ``workdir``: ``mosquitto.conf``, ``passwd`` and ``acl`` (0600, when asked for), the log
(``mosquitto.log`` unless ``log_file``) and, with ``persistence``, ``mosquitto.db``. Needs the ``mosquitto``
binary (Debian package ``mosquitto``; ``mosquitto_passwd`` for ``users``). Raises :class:`BrokerError` with the
broker's log if it cannot start. Not for production: the appliance's broker is configured by ``dangol.conf``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BrokerError", "MosquittoBroker", "free_port"]


class BrokerError(RuntimeError):
    """Mosquitto is missing or failed to start (message includes its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (another process may take it before it is used)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MosquittoBroker:
    """One ``mosquitto`` process listening on ``host:port`` (TCP, no TLS), configured in ``workdir``.

    Nothing is written or started until :meth:`start` (or ``with``). When this process runs as root the
    configuration names the current user (``user root``), since mosquitto would otherwise switch to the
    ``mosquitto`` user and fail to read the 0600 files written here.

    Args:
        workdir: directory for mosquitto.conf, the password/ACL files, the log and the persistence store
            (e.g. pytest's tmp_path); created by :meth:`start`.
        users: ``{username: password}``; when given (or ``password_lines``), anonymous access is off and a
            password file is written with ``mosquitto_passwd`` (PBKDF2-SHA512 hashes).
        password_lines: ready-made password-file lines ``username:$7$...`` (hashes made elsewhere, e.g.
            by the cloud for its devices, or the ``passwd`` of ``dangol-cloud broker-config``), appended as they are.
        acl: the text of a Mosquitto ACL file (``user NAME`` / ``topic readwrite PATTERN`` lines).
        host: listen address (loopback by default).
        persistence: keep sessions, subscriptions and queued QoS 1 messages across a restart (saved on
            SIGTERM, and every second), as a production broker does.
        config_file: a file of Mosquitto options whose text is appended as it is, e.g. ``dangol-dynsec.conf``
            of ``dangol-cloud broker-config`` (the dynamic-security plugin, ``allow_anonymous false``, queue
            limits). It decides access: no ``allow_anonymous``/``password_file``/``acl_file`` lines are written.
        options: more ``mosquitto.conf`` lines, appended last (e.g. ``"max_inflight_messages 100"``).
        log_file: where mosquitto logs (default ``workdir/mosquitto.log``).
        log_types: the ``log_type`` values; empty for mosquitto's default (error, warning, notice, information).
        user: the user mosquitto runs as (``user`` option; it drops to it after reading ``mosquitto.conf``, before
            loading plugins), default the current one. Another (e.g. ``nobody``, as root only) shows what the
            packaged broker, running as ``mosquitto``, may read and write: ``workdir`` and the files it names must be
            open to it.

    Raises:
        ValueError: ``config_file`` together with ``users``, ``password_lines`` or ``acl``.
    """

    def __init__(self, workdir: str | os.PathLike, *, users: dict[str, str] | None = None,
                 password_lines: list[str] | None = None, acl: str | None = None, host: str = "127.0.0.1",
                 persistence: bool = False, config_file: str | os.PathLike | None = None,
                 options: Sequence[str] = (), log_file: str | os.PathLike | None = None,
                 log_types: Sequence[str] = ("all",), user: str | None = None) -> None:
        if config_file is not None and (users or password_lines or acl is not None):
            raise ValueError("MosquittoBroker: config_file decides access; do not pass users, password_lines or acl")
        self.workdir = Path(workdir)
        self.users = dict(users or {})
        self.password_lines = list(password_lines or [])
        self.acl = acl
        self.host = host
        self.persistence = persistence
        self.config_file = Path(config_file) if config_file is not None else None
        self.options = list(options)
        self.log_file = Path(log_file) if log_file is not None else self.workdir / "mosquitto.log"
        self.log_types = list(log_types)
        self.user = user
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr = ""

    @property
    def url(self) -> str:
        """``mqtt://host:port`` (no credentials)."""
        return f"mqtt://{self.host}:{self.port}"

    def url_for(self, username: str) -> str:
        """``mqtt://username:password@host:port`` for one of ``users``."""
        return f"mqtt://{username}:{self.users[username]}@{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the mosquitto process is started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the running mosquitto (e.g. to read its memory in /proc), None when stopped."""
        return self._proc.pid if self._proc is not None else None

    def _write_config(self) -> Path:
        """Write ``workdir/mosquitto.conf`` (and passwd/acl) for :attr:`port`; returns its path. Raises BrokerError."""
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)
        if binary is None:
            raise BrokerError("mosquitto not found; install the Debian package 'mosquitto' (scripts/setup does)")
        self._binary = binary
        self.workdir.mkdir(parents=True, exist_ok=True)
        # as root, mosquitto would switch to the 'mosquitto' user and fail to read our 0600 files
        persist = (["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
                   if self.persistence else ["persistence false"])
        user = self.user or pwd.getpwuid(os.getuid()).pw_name
        lines = [f"user {user}", f"listener {self.port} {self.host}", *persist,
                 f"log_dest file {self.log_file}", *(f"log_type {t}" for t in self.log_types)]
        if self.config_file is not None:
            lines.append(self.config_file.read_text())
        elif self.users or self.password_lines:
            passwd = self.workdir / "passwd"
            passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            passwd.chmod(0o600)
            if self.users:
                tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
                subprocess.run([tool, "-U", str(passwd)], check=True, capture_output=True)
            with passwd.open("a") as fh:
                fh.writelines(line.rstrip("\n") + "\n" for line in self.password_lines)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl = self.workdir / "acl"
            acl.write_text(self.acl)
            acl.chmod(0o600)
            lines.append(f"acl_file {acl}")
        lines += self.options
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0, port: int | None = None) -> "MosquittoBroker":
        """Start the broker and wait until it accepts TCP connections; returns self.

        If mosquitto exits at once (e.g. another process took the free port), tries again, three times in all.

        Args:
            timeout: seconds to wait for each attempt to listen.
            port: listen on this port (e.g. restart on the port clients know); default a free one.

        Raises:
            BrokerError: mosquitto is missing, or did not listen (with its stderr and log).
        """
        for _attempt in range(3):
            self.port = port or free_port(self.host)
            conf = self._write_config()
            self._proc = subprocess.Popen([self._binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break  # exited (port race?): retry on another port
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.2):
                        return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
        log = self.log_file
        raise BrokerError(f"mosquitto did not start: {self._stderr}{log.read_text() if log.exists() else ''}")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker with SIGTERM (it saves its persistence store), killed after ``timeout``
        seconds; idempotent."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._proc is not None and self._proc.stderr:
            self._stderr = self._proc.stderr.read().decode(errors="replace")
            self._proc.stderr.close()
        self._proc = None

    def __enter__(self) -> "MosquittoBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
