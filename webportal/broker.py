"""The embedded default's broker: kombu's filesystem transport, with messages written atomically.

kombu's filesystem transport creates a message's file under its final name, then locks and
writes it; a worker polling the folder may move and read the file in between, finds it empty
(`JSONDecodeError`), and the worker dies with the message gone. Under concurrent uploads this
happened (bench.broker_race reproduces it: docs/ARCHITECTURE.md, "The embedded broker"). The
same open-then-write pattern creates an exchange's routing table.

Here a message is written in full to a hidden name that no reader looks at, flushed, and then
renamed to its final name: a rename within one folder is atomic on POSIX (os.replace), so a
reader sees the whole message or nothing. The folders, the names and the reading side are
kombu's own, so an old worker and a new one can share a folder during an upgrade.

Celery uses this class for `filesystem://` through the `broker_transport` setting
(webportal.celery).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

TRANSPORT = "webportal.broker:AtomicFilesystemTransport"


def write_atomically(path: Path, data: bytes) -> None:
    """`data` appears at `path` whole, or not at all (a hidden temporary in the same folder,
    fsync, rename)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb", buffering=0) as handle:
            handle.write(data)
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class AtomicFilesystemChannel(filesystem.Channel):
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        """A message on `queue`: kombu's name (time, uuid, queue), written atomically."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        path = Path(self.data_folder_out) / name
        try:
            write_atomically(path, dumps(payload).encode())
        except OSError as exc:
            raise ChannelError(f"Cannot add file {str(path)!r} to directory") from exc

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str | None, queue: str) -> None:
        """An exchange's table is created whole (an empty table, linked into place, so a
        second creator cannot overwrite the first's), then kombu adds the binding under its
        lock (the table only grows)."""
        # kombu validates the name and keeps the file inside the control folder (untyped).
        file: Path = self._exchange_file(exchange)  # type: ignore[attr-defined]
        if not file.exists():
            self.control_folder.mkdir(exist_ok=True)
            temporary = file.with_name(f".{file.name}.{uuid.uuid4().hex}.tmp")
            try:
                write_atomically(temporary, dumps([]).encode())
                with contextlib.suppress(FileExistsError):
                    os.link(temporary, file)  # never replaces a table another process made
            except OSError as exc:
                raise ChannelError(f"Cannot open {file}") from exc
            finally:
                temporary.unlink(missing_ok=True)
        super()._queue_bind(exchange, routing_key, pattern, queue)


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = AtomicFilesystemChannel
