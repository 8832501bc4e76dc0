"""The embedded broker writes each message whole before any reader can see it."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from webportal import broker
from webportal.celery import app, broker_transport_options, use_broker


def _queue() -> Queue:
    """A queue of its own: kombu keeps declared bindings per process (class state), so a
    name another test declared in its folder would not be bound in this test's folder."""
    name = f"q{uuid.uuid4().hex}"
    return Queue(name, Exchange(name), routing_key=name)


def _connection(folder: Path) -> Connection:
    return Connection(
        "filesystem://",
        transport=broker.TRANSPORT,
        transport_options=broker_transport_options("filesystem://", folder),
    )


def test_the_celery_app_uses_the_atomic_transport_for_the_filesystem_broker(tmp_path) -> None:
    use_broker("filesystem://", tmp_path)
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, broker.AtomicFilesystemTransport)
    use_broker("redis://127.0.0.1:6379/0", tmp_path)
    with app.connection_for_write() as connection:
        assert not isinstance(connection.transport, broker.AtomicFilesystemTransport)


def test_no_message_file_is_visible_while_it_is_being_written(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_folder = tmp_path / "queue"
    seen_mid_write: list[list[str]] = []
    real_fsync = os.fsync

    def fsync_and_look(fd: int) -> None:
        visible = [n for n in os.listdir(queue_folder) if n.endswith(f".{queue.name}.msg")]
        seen_mid_write.append(visible)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_and_look)
    queue = _queue()
    with _connection(tmp_path) as connection:
        producer = connection.Producer()
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key=queue.routing_key,
                         declare=[queue])  # fmt: skip

    assert seen_mid_write  # the write went through the atomic path
    assert all(names == [] for names in seen_mid_write)
    assert len([n for n in os.listdir(queue_folder) if n.endswith(f".{queue.name}.msg")]) == 1
    assert not [n for n in os.listdir(queue_folder) if n.endswith(".tmp")]


def test_a_reader_polling_during_many_concurrent_writes_gets_every_message_whole(
    tmp_path,
) -> None:
    """16 writers at once, a reader polling meanwhile: nothing lost, nothing half-read."""
    queue = _queue()
    writers, each = 16, 25
    received: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    with _connection(tmp_path) as setup:
        queue(setup.default_channel).declare()

    def write(start: int) -> None:
        try:
            with _connection(tmp_path) as connection:
                producer = connection.Producer()
                for n in range(start, start + each):
                    producer.publish(
                        {"n": n}, exchange=queue.exchange, routing_key=queue.routing_key
                    )
        except BaseException as exc:  # pragma: no cover - the failure this test is about
            errors.append(exc)

    def read() -> None:
        try:
            with _connection(tmp_path) as connection:
                simple = connection.SimpleQueue(queue.name)  # the same queue, exchange and key
                while not (done.is_set() and len(received) == writers * each):
                    try:
                        message = simple.get(timeout=0.05)
                    except simple.Empty:
                        if done.is_set() and not os.listdir(tmp_path / "queue"):
                            return
                        continue
                    received.append(message.payload["n"])
                    message.ack()
        except BaseException as exc:  # pragma: no cover - the failure this test is about
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(i * each,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join(timeout=60)

    assert errors == []
    assert sorted(received) == list(range(writers * each))
