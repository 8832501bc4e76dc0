"""Fault injection with real worker processes: `pytest -m faults`.

Each test crashes something real (the worker, the broker, the database connection) in the
middle of a batch and then checks the database: every batch done, every accepted image with
exactly one prediction from the batch's model version, nothing missing.
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import LazySettings
from django.db import connection

from ml.testing import make_tiny_checkpoint
from tests.conftest import TINY_CLASSES, noisy_jpeg_bytes
from tests.services import (
    IN_CI,
    RedisServer,
    TcpProxy,
    celery_worker,
    database_url,
    kill_worker,
    wait_until,
    writes_held,
)
from webportal.cases import services
from webportal.cases.models import Batch, Cell, Image, ModelVersion, Prediction, Shard
from webportal.celery import use_broker
from webportal.pipeline import registration

pytestmark = [pytest.mark.faults, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# Short deadlines so a rescue happens within seconds, not the production minutes.
FAST_RESCUE = {
    "BROKER_VISIBILITY_TIMEOUT_SECONDS": "5",
    "BATCH_STUCK_AFTER_SECONDS": "4",
    "BATCH_RESEND_AFTER_SECONDS": "4",
    "SWEEP_INTERVAL_SECONDS": "1",
    "INFERENCE_CHUNK_SIZE": "8",
    # The slow model must stay slow: a faster engine would finish a shard before the kill.
    "INFERENCE_ENGINE": "eager",
}


@pytest.fixture
def slow_model(db: None, tmp_path: Path) -> ModelVersion:
    """Random weights at 160 px: slow enough on one thread to be caught mid-batch."""
    path = make_tiny_checkpoint(tmp_path / "slow.pt", TINY_CLASSES, input_size=160)
    return registration.register_model(checkpoint_path=path, name="slow")


@pytest.fixture
def redis_server(tmp_path: Path, settings: LazySettings) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    use_broker(server.url, tmp_path / "broker")
    yield server
    server.crash()


def _submit(case, count: int, priority: str = "routine") -> Batch:
    files = [(f"cell-{i}.jpg", io.BytesIO(noisy_jpeg_bytes((96, 96)))) for i in range(count)]
    return services.submit_batch(case=case, created_by=None, files=files, priority=priority)


def _predicted(batch: Batch) -> int:
    return Prediction.objects.filter(cell__image__batch=batch).count()


def _status(batch: Batch) -> str:
    return Batch.objects.values_list("status", flat=True).get(pk=batch.pk)


def _assert_exactly_once(batch: Batch, model_version: ModelVersion, log: Path) -> None:
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE, f"{batch.status}: {batch.error}\n{log.read_text()}"
    cells = Cell.objects.filter(image__batch=batch, image__status=Image.Status.OK)
    assert cells.count() == batch.total_images
    for cell in cells:
        assert Prediction.objects.filter(cell=cell, model_version=model_version).count() == 1
    assert batch.processed_images == batch.total_images
    assert batch.reports.latest("version").total_cells == batch.total_images


def _worker_kwargs(tmp_path: Path, broker_url: str, **extra):
    return {
        "broker_url": broker_url,
        "broker_folder": tmp_path / "broker",
        "log_path": tmp_path / "worker.log",
        "extra_env": {**FAST_RESCUE, **extra.pop("extra_env", {})},
        "beat": True,
        **extra,
    }


def test_killing_workers_mid_batch_loses_and_duplicates_nothing(
    redis_server: RedisServer, slow_model: ModelVersion, case, tmp_path: Path, settings
) -> None:
    seed = int(os.environ.get("FAULT_SEED", time.time()))
    rng = random.Random(seed)
    batch = _submit(case, count=200)
    kwargs = _worker_kwargs(tmp_path, redis_server.url)
    killed_mid_batch = 0
    for _ in range(3):
        # Gate on observed progress, not on time: wait for a random number of new predictions,
        # freeze the batch there, and kill the worker while it is frozen mid-way.
        target = _predicted(batch) + rng.randint(1, 24)
        with celery_worker(**kwargs) as worker:
            wait_until(
                lambda t=target: _predicted(batch) >= t or _status(batch) == "done",
                timeout=90,
                interval=0.02,
                what=f"{target} predictions (seed {seed})",
            )
            with writes_held():
                if _status(batch) != "done":
                    killed_mid_batch += 1
                kill_worker(worker)
    with celery_worker(**kwargs):
        wait_until(lambda: _status(batch) == "done", timeout=180, what=f"the batch (seed {seed})")
    assert killed_mid_batch >= 1, f"no kill landed mid-batch (seed {seed})"
    _assert_exactly_once(batch, slow_model, tmp_path / "worker.log")


def test_a_broker_restart_that_loses_the_queue_loses_no_batch(
    redis_server: RedisServer, slow_model: ModelVersion, case, tmp_path: Path, settings
) -> None:
    batch = _submit(case, count=120)
    waiting = _submit(case, count=8)  # still queued when the broker forgets it
    with celery_worker(**_worker_kwargs(tmp_path, redis_server.url)):
        wait_until(
            lambda: _predicted(batch) > 0, timeout=90, interval=0.02, what="the first predictions"
        )
        with writes_held():  # the crash lands mid-batch, with the other batch still queued
            assert _predicted(batch) < batch.total_images
            assert _status(waiting) == "queued"
            redis_server.crash()
        time.sleep(1)  # the broker stays down a moment
        redis_server.start()  # empty: nothing was kept on disk
        for item in (batch, waiting):
            wait_until(lambda b=item: _status(b) == "done", timeout=180, what=f"batch {item.pk}")
    for item in (batch, waiting):
        _assert_exactly_once(item, slow_model, tmp_path / "worker.log")


def test_a_brief_database_outage_is_retried_until_the_batch_completes(
    redis_server: RedisServer, slow_model: ModelVersion, case, tmp_path: Path, settings
) -> None:
    database = connection.settings_dict
    if not database["ENGINE"].endswith("postgresql"):
        message = "the database outage test needs PostgreSQL (set DATABASE_URL)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    proxy = TcpProxy(database.get("HOST") or "127.0.0.1", int(database.get("PORT") or 5432))
    through_proxy = database_url({**database, "HOST": "127.0.0.1", "PORT": proxy.port})
    batch = _submit(case, count=160)
    log = tmp_path / "worker.log"
    try:
        with celery_worker(**_worker_kwargs(tmp_path, redis_server.url, database=through_proxy)):
            wait_until(
                lambda: _predicted(batch) > 0,
                timeout=90,
                interval=0.02,
                what="the first predictions",
            )
            proxy.cut()
            # The worker cannot save while the proxy is cut: the outage is mid-batch.
            assert _predicted(batch) < batch.total_images
            time.sleep(4)  # the outage lasts a moment
            proxy.restore()
            wait_until(lambda: _status(batch) == "done", timeout=180, what="the batch")
    finally:
        proxy.close()
    assert "Retry in" in log.read_text(), "the outage never reached the worker"
    _assert_exactly_once(batch, slow_model, log)


def test_a_stat_batch_overtakes_a_routine_backlog(
    redis_server: RedisServer, slow_model: ModelVersion, case, tmp_path: Path, settings
) -> None:
    # Many shards of routine work at any speed of this machine (the slow model does about 100
    # images/s on an idle core): the STAT batch's shard is claimed after the current one.
    settings.BATCH_SHARD_IMAGES = 16
    routine = _submit(case, count=300)
    kwargs = _worker_kwargs(tmp_path, redis_server.url)
    with celery_worker(**kwargs):
        wait_until(
            lambda: _predicted(routine) > 0, timeout=90, interval=0.02, what="the routine batch"
        )
        with writes_held():  # submitted while the routine batch is observed mid-way
            assert _predicted(routine) < routine.total_images
            stat = _submit(case, count=8, priority="stat")
        wait_until(lambda: _status(stat) == "done", timeout=120, what="the STAT batch")
        assert _status(routine) != "done", "the routine batch finished first"
        wait_until(lambda: _status(routine) == "done", timeout=180, what="the routine batch")
    _assert_exactly_once(stat, slow_model, tmp_path / "worker.log")
    _assert_exactly_once(routine, slow_model, tmp_path / "worker.log")


def test_killing_a_worker_mid_shard_the_sweeper_reoffers_that_shard_and_nothing_is_lost(
    redis_server: RedisServer, slow_model: ModelVersion, case, tmp_path: Path, settings
) -> None:
    """Sharded: two workers on one batch, one killed while it holds a shard half done; the
    sweeper offers that shard again, the survivor (or a new worker) finishes it."""
    seed = int(os.environ.get("FAULT_SEED", time.time()))
    rng = random.Random(seed)
    settings.BATCH_SHARD_IMAGES = 24
    batch = _submit(case, count=144)  # six shards
    kwargs = _worker_kwargs(tmp_path, redis_server.url)
    # The victim without the embedded beat: its one child is the pool process that claims.
    with celery_worker(**kwargs), celery_worker(**{**kwargs, "beat": False}) as victim:
        # Wait for a shard held by the victim with some but not all of its cells saved.
        target = rng.randint(1, 20)

        def victim_mid_shard() -> bool:
            for shard in Shard.objects.filter(batch=batch, status=Shard.Status.PROCESSING):
                if not shard.claimed_by.endswith(f":{_pool_child(victim.pid)}"):
                    continue
                done = _predicted_in(batch, shard)
                if target <= done < shard.images:
                    return True
            return False

        wait_until(victim_mid_shard, timeout=120, interval=0.02, what=f"mid-shard (seed {seed})")
        with writes_held():
            held = [
                (shard.pk, shard.claimed_by, _predicted_in(batch, shard))
                for shard in Shard.objects.filter(batch=batch, status=Shard.Status.PROCESSING)
                if shard.claimed_by.endswith(f":{_pool_child(victim.pid)}")
            ]
            kill_worker(victim)
        assert held, f"the victim held no shard when killed (seed {seed})"
        wait_until(lambda: _status(batch) == "done", timeout=180, what=f"the batch (seed {seed})")
    _assert_exactly_once(batch, slow_model, tmp_path / "worker.log")
    log = (tmp_path / "worker.log").read_text()
    assert "sweep: requeued" in log  # re-offered by the sweeper, not by luck
    for shard_id, killed_by, saved in held:
        shard = Shard.objects.get(pk=shard_id)
        assert shard.status == Shard.Status.DONE
        assert shard.claimed_by != killed_by, f"shard {shard_id} finished by the dead worker?"
        assert 0 < saved < shard.images  # it really was killed mid-shard
    assert Batch.objects.get(pk=batch.pk).reports.count() == 1


def _pool_child(parent_pid: int) -> int:
    """The pid of a prefork worker's one pool child (the process that claims shards)."""
    children = Path(f"/proc/{parent_pid}/task/{parent_pid}/children").read_text().split()
    return int(children[0]) if len(children) == 1 else 0  # 0: not started yet


def _predicted_in(batch: Batch, shard: Shard) -> int:
    return Prediction.objects.filter(
        cell__image__batch=batch,
        cell__image_id__gte=shard.first_image_id,
        cell__image_id__lte=shard.last_image_id,
    ).count()
