"""systemd's readiness protocol (sd_notify): datagrams of `KEY=value` lines to the socket that
NOTIFY_SOCKET names, for `Type=notify` services. Without NOTIFY_SOCKET nothing is sent.

The watcher sends READY=1 once it watches, STATUS= with its counts, WATCHDOG=1 every half of
WATCHDOG_USEC (when systemd asks for it, for this process), and STOPPING=1 on shutdown.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self.address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # seconds between keep-alive pings: half of the watchdog timeout, or None
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) and mine else None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            pass  # systemd gone or restarting: the service goes on

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
