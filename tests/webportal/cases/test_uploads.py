"""Upload validation: every bad file gets a clear reason, every good file is stored normalised."""

from __future__ import annotations

import hashlib
import io
import itertools
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from tests.badfiles import (
    CORPUS_WARNINGS,
    EXPECTED_REASON,
    EdgeCase,
    bad_file_corpus,
    edge_case_corpus,
    image_bytes,
    make_zip,
    patch_single_member_zip,
    raw_png,
)
from webportal.cases import uploads
from webportal.cases.uploads import (
    AcceptedImage,
    RejectedFile,
    UploadLimits,
    UploadResult,
    inspect_uploads,
)

pytestmark = CORPUS_WARNINGS

BAD = bad_file_corpus()
EDGE = edge_case_corpus()
BAD_BY_NAME = {name: content for name, content, _ in BAD}
EDGE_BY_NAME = {case.name: case for case in EDGE}


def run(*files: tuple[str, bytes], limits: UploadLimits | None = None) -> list[UploadResult]:
    pairs = [(name, io.BytesIO(content)) for name, content in files]
    if limits is None:
        return list(inspect_uploads(pairs))
    return list(inspect_uploads(pairs, limits=limits))


def png_chunk_types(data: bytes) -> list[bytes]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    types, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        types.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return types


def decoded(result: UploadResult) -> Image.Image:
    assert isinstance(result, AcceptedImage), result
    img = Image.open(io.BytesIO(result.content))
    img.load()
    return img


def assert_human_sentence(reason: str) -> None:
    assert reason, "a rejection needs a reason"
    assert reason == reason.strip()
    assert reason[0].isupper(), reason
    assert reason.endswith("."), reason
    assert len(reason.split()) >= 4, reason
    for leak in ("\n", "Traceback", "object at 0x", "<_io.", "Error("):
        assert leak not in reason, reason


def belongs_to(result_name: str, upload_name: str) -> bool:
    return result_name == upload_name or result_name.startswith(upload_name + "/")


# ---------------------------------------------------------------------------------------------
# The corpora


# The kinds the corpus holds today: a kind that goes missing (or loses its expected reason)
# fails here, a new one raises the floor.
CORPUS_KINDS = 61


def test_corpora_cover_all_sixty_one_kinds_each_with_an_expected_reason() -> None:
    names = [name for name, _, _ in BAD]
    assert len(names) >= CORPUS_KINDS
    assert len(set(names)) == len(names), "corpus names must be unique"
    assert set(EXPECTED_REASON) == set(names), "every bad kind needs an expected reason"
    assert all(description for _, _, description in BAD)
    edge_names = [case.name for case in EDGE]
    assert len(set(edge_names)) == len(edge_names) >= 20
    assert not set(edge_names) & set(names)
    assert len({hashlib.sha256(case.content).digest() for case in EDGE}) == len(EDGE)


@pytest.mark.parametrize(("name", "content", "description"), BAD, ids=[n for n, _, _ in BAD])
def test_every_bad_file_is_rejected_with_a_clear_reason(
    name: str, content: bytes, description: str
) -> None:
    results = run((name, content))

    assert results, f"{description}: nothing was reported"
    for result in results:
        assert isinstance(result, RejectedFile), f"{description} was accepted as {result.name}"
        assert belongs_to(result.name, name)
        assert_human_sentence(result.reason)
        assert EXPECTED_REASON[name] in result.reason.lower(), result.reason


@pytest.mark.parametrize("case", EDGE, ids=[case.name for case in EDGE])
def test_every_edge_case_image_is_accepted_and_stored_as_a_clean_rgb_png(case: EdgeCase) -> None:
    [result] = run((case.name, case.content))

    assert isinstance(result, AcceptedImage), f"{case.description}: {result}"
    assert result.name == case.name
    assert result.sha256 == hashlib.sha256(case.content).hexdigest()
    assert (result.width, result.height) == (case.width, case.height)
    assert result.source_format == case.source_format
    img = decoded(result)
    assert (img.format, img.mode, img.size) == ("PNG", "RGB", (case.width, case.height))
    types = png_chunk_types(result.content)
    assert types[0] == b"IHDR"
    assert types[-1] == b"IEND"
    assert set(types) == {b"IHDR", b"IDAT", b"IEND"}, "metadata chunks must not be stored"


def test_every_bad_file_is_rejected_with_a_reason_and_good_files_still_pass() -> None:
    inputs = [
        item
        for pair in itertools.zip_longest(
            [(name, content) for name, content, _ in BAD],
            [(case.name, case.content) for case in EDGE],
        )
        for item in pair
        if item is not None
    ]
    alone = [run(item) for item in inputs]

    mixed = run(*inputs)

    # The same verdicts, in the same order, as when each file is uploaded on its own.
    assert mixed == [result for results in alone for result in results]
    position = 0
    for (name, _), own in zip(inputs, alone, strict=True):
        group = mixed[position : position + len(own)]
        assert group, name
        assert all(belongs_to(result.name, name) for result in group)
        if name in EDGE_BY_NAME:
            assert [type(result) for result in group] == [AcceptedImage]
        elif not name.endswith(".zip"):
            assert [type(result) for result in group] == [RejectedFile]
        position += len(own)
    assert position == len(mixed)
    assert {r.name for r in mixed if isinstance(r, AcceptedImage)} == set(EDGE_BY_NAME)


def test_the_same_checks_apply_to_every_member_of_a_zip() -> None:
    plain_bad = [(n, c) for n, c, _ in BAD if not n.endswith(".zip") and not c.startswith(b"PK")]
    good = [(case.name, case.content) for case in EDGE]
    archive = make_zip(plain_bad + good)

    results = run(("batch.zip", archive))

    assert [r.name for r in results] == [f"batch.zip/{name}" for name, _ in plain_bad + good]
    for (name, content), result in zip(plain_bad + good, results, strict=True):
        [alone] = run((name, content))
        if isinstance(alone, RejectedFile):
            assert isinstance(result, RejectedFile)
            if "only ZIP archives" in alone.reason:  # a gzip/7z upload; inside a zip: nested
                assert result.reason.startswith("Nested archive: this ZIP member is itself")
            else:
                assert result.reason == alone.reason
        else:
            assert isinstance(result, AcceptedImage), result
            assert (result.content, result.sha256) == (alone.content, alone.sha256)


# ---------------------------------------------------------------------------------------------
# Images


def test_exif_rotation_is_applied_before_storing() -> None:
    # The stored pixels are red on the left and blue on the right (see badfiles._exif_jpeg).
    for name, top, bottom in (
        ("exif_rotated_6.jpg", "red", "blue"),  # rotate 90° clockwise: left becomes top
        ("exif_rotated_8.jpg", "blue", "red"),  # rotate 90° counter-clockwise: left to bottom
    ):
        case = EDGE_BY_NAME[name]
        with Image.open(io.BytesIO(case.content)) as original:
            assert original.width > original.height, "the upload is stored landscape"
        [result] = run((name, case.content))
        img = decoded(result)
        assert img.height > img.width, "the stored image must be portrait"
        colours = {"red": (220, 20, 20), "blue": (20, 20, 220)}
        for y, expected in ((2, top), (img.height - 3, bottom)):
            pixel = img.getpixel((img.width // 2, y))
            assert isinstance(pixel, tuple)
            assert all(abs(a - b) < 40 for a, b in zip(pixel, colours[expected], strict=True))


def test_metadata_and_trailing_payloads_are_not_stored() -> None:
    for name, secret in (
        ("metadata.jpg", b"Jane Doe"),
        ("text_chunks.png", b"script"),
        ("jpeg_then_zip.jpg", b"PAYLOAD-MARKER"),
    ):
        case = EDGE_BY_NAME[name]
        assert secret in case.content, "the corpus must contain the secret"
        [result] = run((name, case.content))
        assert isinstance(result, AcceptedImage)
        assert secret not in result.content
        assert b"Exif" not in result.content
        assert set(png_chunk_types(result.content)) == {b"IHDR", b"IDAT", b"IEND"}


def test_sixteen_bit_images_are_scaled_to_eight_bits_not_clipped() -> None:
    gray = decoded(run(("gray16.png", EDGE_BY_NAME["gray16.png"].content))[0])
    # A vertical ramp from black to white, stored as 16-bit values (8-bit value x 256).
    column = [gray.getpixel((16, y)) for y in range(gray.height)]
    levels = [pixel[0] for pixel in column if isinstance(pixel, tuple)]
    assert len(levels) == gray.height
    assert levels == sorted(levels)
    assert levels[0] < 20
    assert levels[-1] > 235
    assert 110 <= levels[len(levels) // 2] <= 150, "mid-grey must stay mid-grey, not turn white"

    rgb = decoded(run(("rgb16.png", EDGE_BY_NAME["rgb16.png"].content))[0])
    pixel = rgb.getpixel((16, 8))  # written as (32000, 32000, 40000) of 65535
    assert isinstance(pixel, tuple)
    assert all(abs(a - b) <= 1 for a, b in zip(pixel, (125, 125, 156), strict=True))


def test_transparency_is_composited_on_white_and_cmyk_becomes_rgb() -> None:
    img = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    img.paste((0, 0, 255, 255), (8, 0, 16, 16))
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 0, 200, 0])
    palette.paste(1, (8, 0, 16, 16))
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))

    results = run(
        ("rgba.png", image_bytes(img, "PNG")),
        ("trns.png", image_bytes(palette, "PNG", transparency=0)),
        ("cmyk.jpg", image_bytes(cmyk, "JPEG", quality=100)),
    )

    rgba, trns, red = (decoded(result) for result in results)
    assert rgba.getpixel((2, 2)) == (255, 255, 255)
    assert rgba.getpixel((12, 2)) == (0, 0, 255)
    assert trns.getpixel((2, 2)) == (255, 255, 255)
    assert trns.getpixel((12, 2)) == (0, 200, 0)
    pixel = red.getpixel((8, 8))
    assert isinstance(pixel, tuple)
    assert pixel[0] > 200
    assert max(pixel[1], pixel[2]) < 50


def test_dimensions_are_checked_from_the_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    small = UploadLimits(max_pixels=1_000, max_side=40, min_side=10)

    results = run(
        ("wide.png", raw_png(41, 10)),
        ("many.png", raw_png(40, 26)),
        ("narrow.png", raw_png(9, 30)),
        limits=small,
    )

    reasons = [r.reason for r in results if isinstance(r, RejectedFile)]
    assert reasons == [
        "Image is too large: 41 x 10 pixels; the limit is 40 pixels on each side.",
        "Image is too large: 40 x 26 pixels (1,040 pixels); the limit is 1,000 pixels.",
        "Image is too small to be a cell image: 9 x 30 pixels; each side must be at least "
        "10 pixels.",
    ]


def test_pillow_decompression_bomb_protection_stays_on_and_its_warning_becomes_a_rejection() -> (
    None
):
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None
    # Even when the caller allows more, Pillow's own limit still applies.
    generous = UploadLimits(max_pixels=10**9, max_side=50_000)
    files = [
        ("pillow_limit.png", BAD_BY_NAME["pillow_limit.png"]),  # over the warning threshold
        ("bomb_20000.png", BAD_BY_NAME["bomb_20000.png"]),  # over Pillow's error threshold
    ]
    for action in ("always", "error"):  # hosts that turn warnings into errors included
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter(action)
            warning_limit, error_limit = run(*files, limits=generous)

        assert isinstance(warning_limit, RejectedFile)
        assert isinstance(error_limit, RejectedFile)
        assert "too large" in warning_limit.reason
        assert "decompression-bomb" in error_limit.reason
        assert before == Image.MAX_IMAGE_PIXELS
        if action == "always":
            assert [w.category for w in caught] == [Image.DecompressionBombWarning], (
                "Pillow's own protection must still be on"
            )
            assert f"the limit is {before:,} pixels" in warning_limit.reason


def test_bad_files_are_rejected_not_raised_when_warnings_are_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bad = run(*[(name, content) for name, content, _ in BAD])
        good = run(*[(case.name, case.content) for case in EDGE])

    assert bad
    assert all(isinstance(result, RejectedFile) for result in bad)
    assert [type(result) for result in good] == [AcceptedImage] * len(EDGE)


def test_inspection_leaves_the_process_warning_filters_alone() -> None:
    before = list(warnings.filters)
    run(*[(name, content) for name, content, _ in BAD[:20]], *[(c.name, c.content) for c in EDGE])
    assert before == list(warnings.filters)


def test_truncated_images_are_rejected_and_truncated_loading_must_stay_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    [result] = run(("truncated.jpg", BAD_BY_NAME["truncated.jpg"]))
    assert isinstance(result, RejectedFile)
    assert result.reason.startswith("Truncated or corrupt JPEG image:")

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        run(("cell.png", EDGE_BY_NAME["min_8x8.png"].content))


# ---------------------------------------------------------------------------------------------
# Names, duplicates, reading


@pytest.mark.parametrize(
    ("uploaded", "shown"),
    [
        ("C:\\fakepath\\cell.png", "cell.png"),
        ("../../etc/cell.png", "cell.png"),
        ("/var/www/cell.png", "cell.png"),
        ("ce\nll\x00.png", "cell.png"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("..", "unnamed file"),
        ("", "unnamed file"),
    ],
)
def test_upload_names_are_reduced_to_safe_base_names(uploaded: str, shown: str) -> None:
    [result] = run((uploaded, EDGE_BY_NAME["min_8x8.png"].content))
    assert isinstance(result, AcceptedImage)
    assert result.name == shown


def test_very_long_names_are_shortened_but_keep_their_extension() -> None:
    image = EDGE_BY_NAME["min_8x8.png"].content
    long_name = "x" * 500 + ".png"

    plain, member = run((long_name, image), ("y" * 500 + ".zip", make_zip([(long_name, image)])))

    assert len(plain.name) <= 200
    assert plain.name.endswith(".png")
    assert isinstance(member, RejectedFile)  # the same bytes again: a duplicate
    assert len(member.name) <= 401, "fits the portal's 500-character original_name"
    assert member.name.endswith(".zip/" + plain.name)


def test_duplicate_in_one_upload_is_rejected_naming_the_first() -> None:
    image = EDGE_BY_NAME["rgb.bmp"].content
    other = EDGE_BY_NAME["rgb.tif"].content
    broken = BAD_BY_NAME["truncated.jpg"]

    results = run(
        ("first.bmp", image),
        ("other.tif", other),
        ("again.bmp", image),
        ("batch.zip", make_zip([("copy.bmp", image)])),
        ("broken.jpg", broken),
        ("broken-again.jpg", broken),
    )

    assert [type(r) for r in results] == [
        AcceptedImage,
        AcceptedImage,
        RejectedFile,
        RejectedFile,
        RejectedFile,
        RejectedFile,
    ]
    for result in results[2:4]:
        assert isinstance(result, RejectedFile)
        assert "Duplicate of first.bmp in this upload" in result.reason
    assert results[3].name == "batch.zip/copy.bmp"
    # A copy of a rejected file gets the real reason, not "duplicate".
    assert isinstance(results[5], RejectedFile)
    assert results[5].reason.startswith("Truncated or corrupt JPEG image")
    # Duplicates are per call: the next upload may contain the same image.
    assert isinstance(run(("later.bmp", image))[0], AcceptedImage)


class EndlessStream(io.RawIOBase):
    """A stream that never ends and counts what was read from it."""

    def __init__(self) -> None:
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = len(buffer)
        buffer[:n] = b"\xff\xd8\xff" + bytes(n - 3) if n >= 3 else bytes(n)
        self.bytes_read += n
        return n


def test_reading_stops_one_byte_past_the_size_limit() -> None:
    stream = EndlessStream()
    limits = UploadLimits(max_file_bytes=10_000)

    [result] = inspect_uploads([("huge.jpg", stream)], limits=limits)  # type: ignore[list-item]

    assert isinstance(result, RejectedFile)
    assert result.reason == (
        "File is too large: it is bigger than the limit of 10,000 bytes. "
        "Please upload a smaller image."
    )
    assert stream.bytes_read == 10_001


def test_a_file_exactly_at_the_byte_limit_passes_and_one_byte_more_is_rejected() -> None:
    content = EDGE_BY_NAME["rgb.bmp"].content
    at_limit = UploadLimits(max_file_bytes=len(content))
    below = UploadLimits(max_file_bytes=len(content) - 1)

    assert isinstance(run(("a.bmp", content), limits=at_limit)[0], AcceptedImage)
    assert isinstance(run(("a.bmp", content), limits=below)[0], RejectedFile)
    [member] = run(("z.zip", make_zip([("a.bmp", content)])), limits=below)
    assert isinstance(member, RejectedFile)
    assert member.reason.startswith("File is too large")


def test_a_read_error_is_reported_and_the_rest_of_the_batch_goes_on() -> None:
    class Failing(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            raise OSError("connection reset by peer")

    good = EDGE_BY_NAME["rgb.bmp"]
    results = list(
        inspect_uploads([("lost.png", Failing()), (good.name, io.BytesIO(good.content))])
    )

    assert isinstance(results[0], RejectedFile)
    assert "could not be read" in results[0].reason
    assert "connection reset by peer" in results[0].reason
    assert isinstance(results[1], AcceptedImage)


def test_results_are_yielded_one_file_at_a_time() -> None:
    pulled: list[str] = []
    good = [EDGE_BY_NAME[n] for n in ("rgb.bmp", "rgb.tif", "palette.png")]

    def uploads_as_they_arrive() -> Iterator[tuple[str, io.BytesIO]]:
        for case in good:
            pulled.append(case.name)
            yield case.name, io.BytesIO(case.content)

    results = inspect_uploads(uploads_as_they_arrive())
    first = next(results)

    assert first.name == "rgb.bmp"
    assert pulled == ["rgb.bmp"], "the second file must not be read before the first is out"
    assert [r.name for r in results] == ["rgb.tif", "palette.png"]


# ---------------------------------------------------------------------------------------------
# ZIP archives


def test_zip_member_paths_never_escape_and_are_reduced_to_base_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may be extracted to disk")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(zipfile.ZipFile, "extract", forbidden)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", forbidden)
    images = [EDGE_BY_NAME[n].content for n in ("rgb.bmp", "rgb.tif", "palette.png")]
    images += [EDGE_BY_NAME[n].content for n in ("gray.jpg", "la.png", "lzw.tif")]
    paths = [
        "../../../../etc/cron.d/evil.bmp",
        "/absolute/root.tif",
        "..\\..\\windows\\system32\\win.png",
        "a/b/../../../c.jpg",
        "./././dot.png",
        "C:\\Users\\x\\drive.tif",
    ]
    archive = make_zip(zip(paths, images, strict=True))
    assert [i.filename for i in zipfile.ZipFile(io.BytesIO(archive)).infolist()] == paths

    results = run(("../uploads/photos.zip", archive))

    assert [r.name for r in results] == [
        "photos.zip/evil.bmp",
        "photos.zip/root.tif",
        "photos.zip/win.png",
        "photos.zip/c.jpg",
        "photos.zip/dot.png",
        "photos.zip/drive.tif",
    ]
    assert all(isinstance(r, AcceptedImage) for r in results)
    assert list(tmp_path.iterdir()) == []


def test_system_files_and_folders_in_a_zip_are_reported_not_silently_dropped() -> None:
    image = EDGE_BY_NAME["rgb.bmp"].content
    archive = make_zip(
        [
            ("batch/", b""),
            ("batch/cell.bmp", image),
            ("__MACOSX/batch/._cell.bmp", b"\x00\x05\x16\x07"),
            ("batch/.DS_Store", b"Bud1"),
        ]
    )

    results = run(("batch.zip", archive))

    assert [(r.name, type(r)) for r in results] == [
        ("batch.zip/cell.bmp", AcceptedImage),
        ("batch.zip/._cell.bmp", RejectedFile),
        ("batch.zip/.DS_Store", RejectedFile),
    ]
    for result in results[1:]:
        assert isinstance(result, RejectedFile)
        assert result.reason.lower().startswith("system file, ignored")


def test_zip_with_too_many_members_is_rejected_as_a_whole() -> None:
    images = [(case.name, case.content) for case in EDGE[:4]]
    limits = UploadLimits(max_zip_members=3)
    four = make_zip(images)
    # An end record that understates the count: the entries zipfile finds are counted too.
    end = four.rindex(b"PK\x05\x06")
    understated = four[: end + 8] + struct.pack("<HH", 3, 3) + four[end + 12 :]

    [whole] = run(("four.zip", four), limits=limits)
    [lying] = run(("lying.zip", understated), limits=limits)
    three = run(("three.zip", make_zip(images[:3])), limits=limits)

    for rejected in (whole, lying):
        assert isinstance(rejected, RejectedFile)
        assert "too many entries: 4; the limit is 3" in rejected.reason
    assert whole.name == "four.zip"
    assert [type(r) for r in three] == [AcceptedImage] * 3


def test_a_huge_declared_entry_count_is_refused_before_parsing_the_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the central directory was parsed")

    monkeypatch.setattr(zipfile, "ZipFile", no_parsing)

    [result] = run(("too_many_members.zip", BAD_BY_NAME["too_many_members.zip"]))

    assert isinstance(result, RejectedFile)
    assert "too many entries: 5,001; the limit is 5,000" in result.reason


def test_zip_total_size_is_counted_while_reading_and_later_members_are_reported() -> None:
    members = [(n, EDGE_BY_NAME[n].content) for n in ("rgb.bmp", "palette.bmp", "rgb.tif")]
    budget = len(members[0][1]) + len(members[1][1])
    archive = make_zip([*members, ("last.png", EDGE_BY_NAME["palette.png"].content)])

    results = run(("batch.zip", archive), limits=UploadLimits(max_zip_total_bytes=budget))

    assert [type(r) for r in results] == [AcceptedImage, AcceptedImage, RejectedFile, RejectedFile]
    for result in results[2:]:
        assert isinstance(result, RejectedFile)
        assert "unpacks to more than the limit" in result.reason


def test_zip_headers_that_understate_the_size_do_not_let_more_data_through() -> None:
    content = EDGE_BY_NAME["rgb.bmp"].content
    lying = patch_single_member_zip(make_zip([("cell.bmp", content)]), file_size=len(content) // 2)

    [result] = run(("lying.zip", lying))

    assert isinstance(result, RejectedFile)
    assert "corrupt zip member" in result.reason.lower()


def test_zip_compression_ratio_is_also_measured_while_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Switch off the early check on declared sizes: the bytes actually read must still stop it.
    monkeypatch.setattr(uploads, "_member_header_reason", lambda info, limits: None)
    bomb = BAD_BY_NAME["zip_bomb_ratio.zip"]

    [result] = run(("bomb.zip", bomb))

    assert isinstance(result, RejectedFile)
    assert "zip bomb" in result.reason


def test_a_small_highly_compressible_member_is_not_mistaken_for_a_bomb() -> None:
    blank = image_bytes(Image.new("RGB", (300, 300), (255, 255, 255)), "BMP")
    archive = make_zip([("blank.bmp", blank)])
    info = zipfile.ZipFile(io.BytesIO(archive)).infolist()[0]
    assert info.file_size / info.compress_size > 200

    [result] = run(("blank.zip", archive))

    assert isinstance(result, AcceptedImage)


# ---------------------------------------------------------------------------------------------
# Interface details


def test_upload_limits_refuse_nonsense_values() -> None:
    for bad in (
        {"max_file_bytes": 0},
        {"max_pixels": -1},
        {"min_side": 20, "max_side": 10},
        {"max_zip_ratio": 0.5},
        {"max_zip_members": 2.5},
    ):
        with pytest.raises(ValueError, match="UploadLimits"):
            UploadLimits(**bad)


def test_accepted_image_repr_does_not_dump_the_image_bytes() -> None:
    [result] = run(("cell.png", EDGE_BY_NAME["min_8x8.png"].content))
    assert "content" not in repr(result)
    assert len(repr(result)) < 300


def test_zip_bombs_declared_in_the_headers_are_refused_without_decompressing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decompression(*args: object, **kwargs: object) -> None:
        raise AssertionError("the member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_decompression)

    ratio, size = run(
        ("ratio.zip", BAD_BY_NAME["zip_bomb_ratio.zip"]), ("size.zip", BAD_BY_NAME["zip_bomb.zip"])
    )

    assert isinstance(ratio, RejectedFile)
    assert "zip bomb" in ratio.reason
    assert isinstance(size, RejectedFile)
    assert size.reason.startswith("File is too large")


def test_with_fit_each_accepted_image_also_carries_its_fitted_copy() -> None:
    good = EDGE_BY_NAME["exif_rotated_6.jpg"].content
    files = [("cell.jpg", io.BytesIO(good)), ("notes.jpg", io.BytesIO(b"plain text"))]
    accepted, rejected = inspect_uploads(files, fit=lambda image: image.resize((8, 6)))

    assert isinstance(rejected, RejectedFile)
    assert isinstance(accepted, AcceptedImage)
    assert accepted.model_input is not None
    with Image.open(io.BytesIO(accepted.model_input)) as fitted:
        assert (fitted.format, fitted.mode, fitted.size) == ("BMP", "RGB", (8, 6))
    [unfitted] = run(("cell.jpg", good))
    assert isinstance(unfitted, AcceptedImage)
    assert unfitted.model_input is None


@pytest.mark.parametrize("error", [KeyError("geometry"), TypeError("bad call"), IndexError("i")])
def test_a_bug_in_our_own_fitting_is_raised_not_reported_as_a_corrupt_image(
    error: Exception,
) -> None:
    good = EDGE_BY_NAME["exif_rotated_6.jpg"].content

    def broken_fit(image: Image.Image) -> Image.Image:
        raise error

    with pytest.raises(type(error)):
        list(inspect_uploads([("cell.jpg", io.BytesIO(good))], fit=broken_fit))


def test_a_bug_in_our_own_colour_conversion_is_raised_not_reported_as_a_corrupt_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_to_rgb(image: Image.Image) -> Image.Image:
        raise TypeError("a bug in _to_rgb")

    monkeypatch.setattr(uploads, "_to_rgb", broken_to_rgb)
    with pytest.raises(TypeError, match="a bug in _to_rgb"):
        run(("cell.png", image_bytes(Image.new("RGB", (32, 32), (200, 80, 120)), "PNG")))


def test_errors_from_the_decoder_itself_are_still_rejections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing_load(self: ImageFile.ImageFile) -> None:
        raise KeyError("decoder table")

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    [result] = run(("cell.png", image_bytes(Image.new("RGB", (32, 32), (200, 80, 120)), "PNG")))
    assert isinstance(result, RejectedFile)
    assert result.reason.startswith("Truncated or corrupt PNG image"), result.reason


# --- the upload's budget (issue 21) ------------------------------------------------------


def _png(width: int, height: int, shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def _zip_of(pngs: list[bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for number, data in enumerate(pngs):
            zf.writestr(f"cell-{number}.png", data)
    return out.getvalue()


def test_zip_members_count_against_the_uploads_image_limit() -> None:
    limits = UploadLimits(max_images=3)
    archive = _zip_of([_png(16, 16, shade) for shade in range(5)])
    loose = [("loose.png", io.BytesIO(_png(16, 16, 200)))]
    results = list(inspect_uploads([("cells.zip", io.BytesIO(archive)), *loose], limits=limits))
    accepted = [r for r in results if isinstance(r, AcceptedImage)]
    refused = [r for r in results if isinstance(r, RejectedFile)]
    assert len(accepted) == 3
    assert [r.name for r in refused] == [
        "cells.zip/cell-3.png",
        "cells.zip/cell-4.png",
        "loose.png",
    ]
    assert all("at most 3 images, ZIP members included" in r.reason for r in refused)


def test_the_decoded_pixels_of_one_upload_have_a_budget() -> None:
    limits = UploadLimits(max_upload_pixels=2 * 100 * 100)
    files = [(f"{n}.png", io.BytesIO(_png(100, 100, n))) for n in range(3)]
    results = list(inspect_uploads(files, limits=limits))
    assert [type(r).__name__ for r in results] == ["AcceptedImage", "AcceptedImage", "RejectedFile"]
    assert "exceed 20,000 decoded pixels" in results[2].reason  # type: ignore[union-attr]
