"""Routing against a real Redis: a batch's message lands in its own queue and nowhere else."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis

from tests.conftest import noisy_jpeg_bytes
from tests.services import REDIS_URL, require_service
from webportal.cases import services
from webportal.cases.models import ModelVersion
from webportal.celery import QUEUES, app, use_broker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("priority", ["stat", "routine"])
def test_a_batch_message_lands_in_exactly_the_queue_of_its_priority(
    priority: str, tiny_model: ModelVersion, case, tmp_path: Path
) -> None:
    parsed = urlparse(REDIS_URL)
    require_service("Redis", parsed.hostname or "127.0.0.1", parsed.port or 6379)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    use_broker(REDIS_URL, tmp_path / "broker")
    # Declare every queue with its bindings, as a worker does when it starts consuming.
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in app.amqp.queues.values():
            queue.bind(channel).declare()
    services.submit_batch(
        case=case,
        created_by=None,
        files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))],
        priority=priority,
    )
    lengths = {name: client.llen(name) for name in QUEUES}
    assert lengths == {name: int(name == priority) for name in QUEUES}
