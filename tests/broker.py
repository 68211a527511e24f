"""A real Mosquitto broker for tests: started on a free port in a temp dir, stopped on exit.

Usage::

    from tests.broker import MosquittoBroker
    with MosquittoBroker(tmp_path) as broker:                 # anonymous access
        client.connect(broker.host, broker.port)
    with MosquittoBroker(tmp_path, users={"cloud": "pw"}, acl=ACL_TEXT) as broker:
        ...                                                   # password file + ACL, no anonymous

Needs the ``mosquitto`` binary (Debian package ``mosquitto``; ``mosquitto_passwd`` for users).
Raises :class:`BrokerError` with the broker's log if it cannot start.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["BrokerError", "MosquittoBroker", "free_port"]


class BrokerError(RuntimeError):
    """Mosquitto is missing or failed to start (message includes its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MosquittoBroker:
    """One ``mosquitto`` process listening on ``host:port``.

    Args:
        workdir: directory for mosquitto.conf, the password/ACL files and the log (e.g. pytest's tmp_path).
        users: ``{username: password}``; when given (or ``password_lines``), anonymous access is off and a
            password file is written with ``mosquitto_passwd`` (PBKDF2-SHA512 hashes).
        password_lines: ready-made password-file lines ``username:$7$...`` (hashes made elsewhere, e.g.
            by the cloud for its devices), appended to the file as they are.
        acl: the text of a Mosquitto ACL file (``user NAME`` / ``topic readwrite PATTERN`` lines).
        host: listen address (loopback by default).
        persistence: keep sessions, subscriptions and queued QoS 1 messages across a restart (saved on
            SIGTERM), as a production broker does.
    """

    def __init__(self, workdir: str | os.PathLike, *, users: dict[str, str] | None = None,
                 password_lines: list[str] | None = None, acl: str | None = None, host: str = "127.0.0.1",
                 persistence: bool = False) -> None:
        self.workdir = Path(workdir)
        self.users = dict(users or {})
        self.password_lines = list(password_lines or [])
        self.acl = acl
        self.host = host
        self.persistence = persistence
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

    def _write_config(self) -> Path:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)
        if binary is None:
            raise BrokerError("mosquitto not found; install the Debian package 'mosquitto' (scripts/setup does)")
        self._binary = binary
        self.workdir.mkdir(parents=True, exist_ok=True)
        # as root, mosquitto would switch to the 'mosquitto' user and fail to read our 0600 files
        persist = (["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
                   if self.persistence else ["persistence false"])
        lines = [f"user {pwd.getpwuid(os.getuid()).pw_name}", f"listener {self.port} {self.host}", *persist,
                 f"log_dest file {self.workdir / 'mosquitto.log'}", "log_type all"]
        if self.users or self.password_lines:
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
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0, port: int | None = None) -> "MosquittoBroker":
        """Start the broker and wait until it accepts TCP connections. Raises BrokerError.

        Args:
            port: listen on this port (e.g. restart on the port clients know); default a free one.
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
        log = self.workdir / "mosquitto.log"
        raise BrokerError(f"mosquitto did not start: {self._stderr}{log.read_text() if log.exists() else ''}")

    def stop(self) -> None:
        """Terminate the broker (idempotent)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
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
