"""Serving the edge's web app: the session key and :class:`DisplayServer` (werkzeug, background thread)."""

from __future__ import annotations

import logging
import os
import secrets
import threading
from pathlib import Path

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from ..webguard import Streams

log = logging.getLogger(__name__)


def load_secret_key(home: Path) -> bytes:
    """The session/CSRF key from ``<home>/secret_key``, created once (32 random bytes, hex, mode 0600).

    Raises:
        OSError: the folder or file cannot be created or read.
    """
    path = Path(home) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    key = path.read_text().strip()
    if len(key) < 32:
        raise OSError(f"{path}: secret key too short; delete the file to make a new one")
    return key.encode()


class DisplayServer:
    """Serve an app from :func:`create_app` on ``(host, port)`` in a background daemon thread.

    Args:
        app: the WSGI app; host: address to bind (``127.0.0.1`` for the kiosk only, ``0.0.0.0`` to let
            staff phones on the LAN reach ``/staff``); port: TCP port, 0 = any free port.

    Attributes:
        url: ``http://host:port`` once started (the bound port; loopback for a wildcard host).
    """

    def __init__(self, app: Flask, host: str, port: int):
        self.app = app
        self.host = host
        self.port = port
        self.url = ""
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and start serving.

        Raises:
            OSError: the address cannot be bound (e.g. the port is in use); the message names it.
        """
        if self._server is not None:
            return
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        streams: Streams | None = self.app.extensions.get("dangol_streams")  # type: ignore[union-attr]
        if streams is not None:
            streams.stopping.clear()
        try:
            server = make_server(self.host, self.port, self.app, threaded=True)
        except SystemExit as exc:  # werkzeug prints the reason and calls sys.exit(1) when bind fails
            raise OSError(f"cannot listen on {self.host}:{self.port} (in use or not a local address)") from exc
        server.daemon_threads = True
        self._server = server
        self.port = server.port
        shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{self.port}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="dangol-display", daemon=True)
        self._thread.start()
        log.info("menu display on %s", self.url)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting requests, end open event streams (within ~:data:`STREAM_STEP_S`) and close the
        socket. Waits at most ``timeout`` seconds for streams to finish. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        streams: Streams | None = self.app.extensions.get("dangol_streams")  # type: ignore[union-attr]
        if streams is not None:
            streams.stopping.set()
        server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout)
        if streams is not None and not streams.wait_idle(timeout):
            log.warning("%d event stream(s) still open after stop", streams.open)
        server.server_close()
