"""systemd's readiness protocol (``sd_notify``) in a few lines of the standard library.

When systemd starts a ``Type=notify`` service it sets ``NOTIFY_SOCKET`` to a Unix datagram
socket (a leading ``@`` names an abstract one); the service sends ``READY=1`` once it serves
and ``STOPPING=1`` when it begins to stop. Without the variable this does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` (``KEY=value`` lines) to systemd; whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True
