"""A real MLLP listener (TCP on 127.0.0.1) standing in for a lab information system: it reads
framed HL7 v2 messages, keeps them, and answers each with an ACK built by hl7apy."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from webportal.notifications import mllp


@dataclass
class Listener:
    host: str
    port: int
    ack_code: str = "AA"
    messages: list[str] = field(default_factory=list)


@contextmanager
def mllp_listener(ack_code: str = "AA") -> Iterator[Listener]:
    listener = Listener(host="127.0.0.1", port=0, ack_code=ack_code)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while True:
                try:
                    data = mllp.read_frame(self.request)
                except mllp.MllpError:
                    return  # the sender closed the connection
                text = mllp.unframe(data)
                listener.messages.append(text)
                self.request.sendall(mllp.frame(mllp.ack_for(text, code=listener.ack_code)))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    listener.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        server.shutdown()
        server.server_close()
