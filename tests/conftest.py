from __future__ import annotations

import io
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import LazySettings
from PIL import Image as PILImage

from ml.testing import make_guarded_checkpoint, make_tiny_checkpoint, synthetic_cells
from tests.factories import CaseFactory, MembershipFactory
from webportal.cases.models import ModelVersion
from webportal.celery import use_broker
from webportal.notifications import outbound
from webportal.pipeline import registration

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "demo"
TINY_CLASSES = ["lymphocyte", "monocyte", "neutrophil"]


@pytest.fixture(autouse=True)
def _media_in_tmp(settings: LazySettings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _broker_in_tmp(
    settings: LazySettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Messages a test sends land in its own folder, never in the developer's var/broker."""
    use_broker("filesystem://", tmp_path_factory.mktemp("broker"))
    yield
    use_broker(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_FOLDER)


EXAMPLE_PUBLIC_ADDRESS = "93.184.216.34"


@pytest.fixture(autouse=True)
def _example_names_are_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Webhook URLs on *.example (RFC 2606) resolve to a public address without DNS, so the
    outbound guard (webportal.notifications.outbound) accepts them; every other name resolves
    as usual."""
    real = outbound.resolve

    def resolve(host: str, port: int) -> list[outbound.IPAddress]:
        if host.endswith((".example", ".example.org")):
            return [ipaddress.ip_address(EXAMPLE_PUBLIC_ADDRESS)]
        return real(host, port)

    monkeypatch.setattr(outbound, "resolve", resolve)


@pytest.fixture
def local_receivers_allowed(settings: LazySettings) -> None:
    """Plain http (DEBUG) and 127.0.0.1 allowed as an operator would allow an on-site LIS."""
    settings.DEBUG = True
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]


@pytest.fixture
def tiny_model(db: None, tmp_path: Path) -> ModelVersion:
    """A randomly initialised, fast checkpoint registered as the newest model."""
    path = make_tiny_checkpoint(tmp_path / "tiny.pt", TINY_CLASSES)
    return registration.register_model(checkpoint_path=path, name="tiny")


# A tiny model with a batch guard (ml.ood) fitted on ml.testing.synthetic_cells: cells drawn
# like those are in distribution, shifted ones are not. Its temperature makes every cell's
# confidence reach its threshold, so what keeps a cell from auto-acceptance is the guard alone.
GUARDED_THRESHOLD = 0.4


@pytest.fixture(scope="session")
def guarded_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session (about 10 s of CPU): fitted on 120 cells, calibrated on 100."""
    return make_guarded_checkpoint(
        tmp_path_factory.mktemp("guarded") / "guarded.pt",
        TINY_CLASSES,
        fit_on=synthetic_cells(120, seed=1),
        calibrate_on=synthetic_cells(100, seed=2),
        temperature=0.02,
        threshold=GUARDED_THRESHOLD,
    )


@pytest.fixture
def guarded_model(db: None, guarded_checkpoint: Path) -> ModelVersion:
    """The guarded checkpoint registered as the newest model."""
    return registration.register_model(checkpoint_path=guarded_checkpoint, name="guarded")


def cell_pngs(
    n: int, *, seed: int, shifted: bool = False, prefix: str = "cell"
) -> list[tuple[str, io.BytesIO]]:
    """Uploads of n synthetic single-cell pictures (ml.testing.synthetic_cells) as PNG files."""
    files = []
    for i, picture in enumerate(synthetic_cells(n, seed=seed, shifted=shifted)):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        buffer.seek(0)
        files.append((f"{prefix}-{i:03d}.png", buffer))
    return files


@pytest.fixture
def member(db: None):
    return MembershipFactory.create()


@pytest.fixture
def case(member):
    return CaseFactory.create(lab=member.lab)


def png_bytes(
    size: tuple[int, int] = (48, 48), colour: tuple[int, int, int] = (200, 80, 120)
) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def noisy_jpeg_bytes(size: tuple[int, int] = (48, 48)) -> bytes:
    """A JPEG of random noise: no two calls give the same file, so none is a duplicate."""
    image = PILImage.effect_noise(size, 40).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
