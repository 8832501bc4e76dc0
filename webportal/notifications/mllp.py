"""MLLP, the Minimal Lower Layer Protocol that carries HL7 v2 messages over TCP (HL7 v2.5.1
Implementation Guide, appendix C): each message is framed <VT> message <FS><CR>, and the receiver
answers with an ACK framed the same way. The ACK's MSA-1 says whether the receiver took it:
AA (or CA) accepted; AE/CE an error, AR/CR rejected (HL7 table 0008); MSA-2 echoes the control id
of the message it answers.

`send` connects to an address the caller has already vetted (the outbound rules decide which
hosts may be reached) and never follows anything elsewhere.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from hl7apy.core import Message
from hl7apy.parser import parse_message

START = b"\x0b"
END = b"\x1c\r"
MAX_ACK_BYTES = 1 << 20
ACCEPTED = frozenset({"AA", "CA"})


class MllpError(Exception):
    """No usable acknowledgement: the connection failed, timed out or the answer was not an ACK
    to this message. The message text is fit for the delivery log."""


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # MSA-3 or ERR, when the receiver gave one

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED


def frame(message: str) -> bytes:
    return START + message.encode("utf-8") + END


def unframe(data: bytes) -> str:
    start, end = data.find(START), data.rfind(END)
    if start < 0 or end < start:
        raise MllpError("The answer was not an MLLP frame.")
    return data[start + 1 : end].decode("utf-8", errors="replace")


def read_frame(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(END):
        chunk = connection.recv(65536)
        if not chunk:
            raise MllpError("The receiver closed the connection before acknowledging.")
        data += chunk
        if len(data) > MAX_ACK_BYTES:
            raise MllpError("The receiver's answer is larger than any acknowledgement.")
    return data


def parse_ack(text: str) -> Ack:
    try:
        message = parse_message(text.replace("\n", "\r"), find_groups=False)
        msa = message.msa
        code = msa.msa_1.to_er7()
        control_id = msa.msa_2.to_er7()
        detail = msa.msa_3.to_er7() if msa.msa_3.to_er7() else ""
    except Exception as exc:  # hl7apy raises several kinds for text that is not an ACK
        raise MllpError(
            f"The answer was not an HL7 acknowledgement ({type(exc).__name__})."
        ) from exc
    return Ack(code=code, control_id=control_id, text=detail)


def send(*, address: tuple[str, int], message: str, control_id: str, timeout: float) -> Ack:
    """Send one framed message to `address` (an IP address and port) and return its ACK."""
    try:
        with socket.create_connection(address, timeout=timeout) as connection:
            connection.settimeout(timeout)
            connection.sendall(frame(message))
            answer = unframe(read_frame(connection))
    except TimeoutError as exc:
        raise MllpError(f"No acknowledgement within {timeout:g} s.") from exc
    except OSError as exc:
        raise MllpError("Could not connect to the receiver.") from exc
    ack = parse_ack(answer)
    if ack.control_id != control_id:
        raise MllpError(
            f"The acknowledgement answers message {ack.control_id!r}, not {control_id!r}."
        )
    return ack


def ack_for(message_text: str, *, code: str = "AA", text: str = "") -> str:
    """The ACK a receiver sends for `message_text` (used by the test listener and by anyone
    receiving orders): MSH swapped sender/receiver, MSA with the original control id."""
    received = parse_message(message_text.replace("\n", "\r"), find_groups=False)
    ack = Message("ACK", version=received.msh.msh_12.to_er7() or "2.5.1")
    ack.msh.msh_3 = received.msh.msh_5.to_er7() or "RECEIVER"
    ack.msh.msh_4 = received.msh.msh_6.to_er7()
    ack.msh.msh_5 = received.msh.msh_3.to_er7()
    ack.msh.msh_6 = received.msh.msh_4.to_er7()
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = f"ACK-{received.msh.msh_10.to_er7()}"
    ack.msh.msh_11 = "P"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = received.msh.msh_10.to_er7()
    if text:
        ack.msa.msa_3 = text
    return str(ack.to_er7())
