"""Where the explorer may serve: the host, port and thread options checked with the standard library only, so
that `edt-lab app` refuses a bad one in a fraction of a second, before gradio and torch load."""

import errno
import os
import socket


def check_address(host: str, port: int) -> None:
    """Bind host:port once and let it go, so that an address that is not this machine's, or a busy port, is one
    line before the models load (at launch, uvicorn would print its own error first)."""
    if ":" in host:  # gradio writes the server's URL as http://HOST:PORT, which an IPv6 address breaks
        raise ValueError(f"--host {host}: IPv6 addresses are not supported (gradio's server URL has no brackets); "
                         f"use 127.0.0.1, 0.0.0.0 or a host name")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            # as uvicorn binds: a port left in TIME_WAIT by a server just stopped is free, one with a listener not
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        why = "the port is in use" if error.errno == errno.EADDRINUSE else "not an address of this machine"
        raise ValueError(f"cannot serve on {host}:{port}: {why}") from None


def check_serve_options(host: str, port: int, threads: int | None) -> None:
    """ValueError, one line naming the option, unless `threads` (None: torch's choice) fits this machine's CPUs and
    host:port can be served on."""
    if threads is not None and not 1 <= threads <= os.cpu_count():
        raise ValueError(f"--threads must lie in 1..{os.cpu_count()} (this machine's CPUs), got {threads}")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must lie in 0..65535, got {port}")
    check_address(host, port)
