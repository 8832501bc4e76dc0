"""Uploads inspected in threads (issue 23): the serial verdicts, in the serial order."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator

import pytest
from django.test import override_settings
from PIL import Image

from tests.badfiles import (
    CORPUS_WARNINGS,
    EXPECTED_REASON,
    bad_file_corpus,
    edge_case_corpus,
    image_bytes,
    make_zip,
)
from webportal.cases import services, uploads
from webportal.cases.models import ModelVersion

pytestmark = CORPUS_WARNINGS

BAD = bad_file_corpus()
EDGE = edge_case_corpus()


def png(width: int, height: int, shade: int) -> bytes:
    return image_bytes(Image.new("RGB", (width, height), (shade % 256, 90, 160)), "PNG")


def outcome(result: uploads.UploadResult) -> tuple[object, ...]:
    """Everything a result says, bytes included, to compare two runs exactly."""
    if isinstance(result, uploads.RejectedFile):
        return ("rejected", result.name, result.reason)
    return (
        "accepted",
        result.name,
        result.sha256,
        result.width,
        result.height,
        result.source_format,
        result.content,
        result.model_input,
    )


def inspect(
    files: list[tuple[str, bytes]], *, threads: int, limits: uploads.UploadLimits | None = None
) -> list[tuple[object, ...]]:
    pairs = [(name, io.BytesIO(content)) for name, content in files]
    return [
        outcome(result)
        for result in uploads.inspect_uploads(
            pairs,
            limits=limits or uploads.UploadLimits(),
            fit=lambda image: image.resize((12, 10)),
            threads=threads,
        )
    ]


def mixed_upload() -> list[tuple[str, bytes]]:
    """Every bad kind and every edge case, interleaved, with copies and a ZIP of both."""
    good = [(case.name, case.content) for case in EDGE]
    bad = [(name, content) for name, content, _ in BAD]
    files: list[tuple[str, bytes]] = []
    for index in range(max(len(good), len(bad))):
        files.extend(good[index : index + 1])
        files.extend(bad[index : index + 1])
    files.insert(3, ("copy-of-first.png", good[0][1]))  # while the first may still be decoding
    files.append(("late-copy.bmp", good[1][1]))
    files.append(("cells.zip", make_zip([("a.png", png(20, 20, 1)), ("b.png", good[0][1])])))
    return files


@pytest.mark.parametrize("threads", [2, 4, 8])
def test_threads_give_the_serial_verdicts_in_the_serial_order(threads: int) -> None:
    files = mixed_upload()
    serial = inspect(files, threads=1)
    assert inspect(files, threads=threads) == serial
    assert sum(result[0] == "accepted" for result in serial) == len(EDGE) + 1
    by_name = {result[1]: result for result in serial}
    for copy in ("copy-of-first.png", "late-copy.bmp", "cells.zip/b.png"):
        assert "Duplicate of" in str(by_name[copy][2]), copy
    assert by_name["cells.zip/a.png"][0] == "accepted"


def test_every_bad_file_is_still_rejected_with_its_reason_in_threads() -> None:
    files = [(name, content) for name, content, _ in BAD]
    results = inspect(files, threads=4)
    # In upload order: each file's result(s), a ZIP's members named "archive.zip/member".
    remaining = iter(results)
    for name, _ in files:
        result = next(remaining)
        assert result[1] == name or str(result[1]).startswith(name + "/"), (name, result[1])
        assert result[0] == "rejected", name
        assert EXPECTED_REASON[name] in str(result[2]).lower(), (name, result[2])
        while name.endswith(".zip") and (following := next(remaining, None)) is not None:
            if not str(following[1]).startswith(name + "/"):
                remaining = iter([following, *remaining])
                break
            assert following[0] == "rejected", following


@pytest.mark.parametrize("bomb", ["bomb_20000.png", "bomb_header.jpg", "bomb_header.bmp"])
def test_a_decompression_bomb_is_still_refused_in_threads(bomb: str) -> None:
    content = next(content for name, content, _ in BAD if name == bomb)
    good = png(30, 30, 7)
    results = inspect([("ok.png", good), (bomb, content), ("ok2.png", png(30, 30, 8))], threads=4)
    assert [result[0] for result in results] == ["accepted", "rejected", "accepted"]
    assert "too large to process safely" in str(results[1][2])


@pytest.mark.parametrize("threads", [1, 3])
def test_the_image_limit_and_the_pixel_budget_count_the_same_files_in_threads(
    threads: int,
) -> None:
    files = [(f"{n}.png", png(40, 40, n)) for n in range(9)]
    archive = make_zip([(f"m{n}.png", png(40, 40, 100 + n)) for n in range(4)])
    files.insert(2, ("cells.zip", archive))
    by_count = inspect(files, threads=threads, limits=uploads.UploadLimits(max_images=6))
    by_pixels = inspect(
        files, threads=threads, limits=uploads.UploadLimits(max_upload_pixels=7 * 1600)
    )
    assert [r[0] for r in by_count] == ["accepted"] * 6 + ["rejected"] * 7
    assert all("at most 6 images" in str(r[2]) for r in by_count[6:])
    assert [r[0] for r in by_pixels] == ["accepted"] * 7 + ["rejected"] * 6
    assert "exceed 11,200 decoded pixels" in str(by_pixels[7][2])
    assert by_count == inspect(files, threads=1, limits=uploads.UploadLimits(max_images=6))


def test_large_images_are_decoded_one_at_a_time_in_the_callers_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(uploads, "THREADED_MAX_PIXELS", 50 * 50)
    fitted_in: dict[int, str] = {}
    lock = threading.Lock()

    def fit(image: Image.Image) -> Image.Image:
        with lock:
            fitted_in[image.width] = threading.current_thread().name
        return image

    sizes = [40, 60, 45, 80, 30]
    files = [(f"{side}.png", io.BytesIO(png(side, side, side))) for side in sizes]
    results = list(uploads.inspect_uploads(files, fit=fit, threads=4))
    assert [r.name for r in results] == [f"{side}.png" for side in sizes]
    assert all(isinstance(r, uploads.AcceptedImage) for r in results)
    caller = threading.current_thread().name
    assert fitted_in[60] == caller
    assert fitted_in[80] == caller
    assert {fitted_in[side] for side in (40, 45, 30)}.isdisjoint({caller})


def test_files_are_read_only_a_bounded_window_ahead_of_the_results() -> None:
    pulled: list[int] = []

    def arriving() -> Iterator[tuple[str, io.BytesIO]]:
        for number in range(40):
            pulled.append(number)
            yield f"{number}.png", io.BytesIO(png(20, 20, number))

    results = uploads.inspect_uploads(arriving(), threads=2)
    next(results)
    assert len(pulled) <= 2 * 2 + 2
    assert len(list(results)) == 39


def test_a_caller_that_stops_early_leaves_no_decoding_thread_behind() -> None:
    files = [(f"{n}.png", io.BytesIO(png(64, 64, n))) for n in range(30)]
    results = uploads.inspect_uploads(files, threads=4)
    next(results)
    results.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("upload-decode")]


def test_a_bug_in_our_own_fitting_is_still_raised_in_threads() -> None:
    def broken_fit(image: Image.Image) -> Image.Image:
        raise KeyError("geometry")

    files = [(f"{n}.png", io.BytesIO(png(20, 20, n))) for n in range(5)]
    with pytest.raises(KeyError, match="geometry"):
        list(uploads.inspect_uploads(files, fit=broken_fit, threads=3))


def test_threads_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(uploads.inspect_uploads([], threads=0))


def test_a_zip_read_ahead_keeps_its_members_in_order() -> None:
    members = [(f"cell-{n}.png", png(24, 24, n)) for n in range(12)]
    archive = make_zip(members, compression=zipfile.ZIP_STORED)
    results = inspect([("cells.zip", archive), ("after.png", png(24, 24, 99))], threads=4)
    assert [r[1] for r in results] == [f"cells.zip/cell-{n}.png" for n in range(12)] + ["after.png"]


def test_the_upload_service_stores_the_same_images_with_threads_as_without(
    model_version: ModelVersion,
) -> None:
    files = [(f"{n}.png", png(30 + n, 30, n)) for n in range(6)]
    files.insert(3, ("notes.jpg", b"just some text, not an image at all"))
    files.append(("again.png", files[0][1]))

    def prepared_with(threads: int) -> list[tuple[str, str, str]]:
        with override_settings(UPLOAD_THREADS=threads):
            assert services.upload_threads() == threads
            prepared = services.prepare_upload(
                model_version=model_version,
                files=[(name, io.BytesIO(content)) for name, content in files],
            )
        try:
            return [
                (image.original_name, image.status, image.sha256 or image.reject_reason)
                for image in prepared.images
            ]
        finally:
            prepared.discard()

    serial = prepared_with(1)
    assert prepared_with(4) == serial
    assert [status for _, status, _ in serial].count("rejected") == 2


def test_upload_threads_zero_means_one_per_core_at_most_eight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with override_settings(UPLOAD_THREADS=0):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)))
        assert services.upload_threads() == 2
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(32)))
        assert services.upload_threads() == services.MAX_AUTO_UPLOAD_THREADS == 8
    with override_settings(UPLOAD_THREADS=3):
        assert services.upload_threads() == 3
