"""In-memory corpus of bad and edge-case upload files (no binaries are committed).

``bad_file_corpus()`` lists files that must be rejected (every result they yield is a
``RejectedFile``) under the default ``UploadLimits``; ``edge_case_corpus()`` lists unusual but
valid images that must be accepted, with the dimensions expected after EXIF orientation.
Both are built once per process (well under a couple of seconds) and returned as fresh lists.

The helpers (``make_zip``, ``make_png`` ...) are public so tests can build one-off cases.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zipfile
import zlib
from collections.abc import Iterable
from typing import NamedTuple

import pytest
from PIL import Image, ImageCms

__all__ = [
    "CORPUS_WARNINGS",
    "EXPECTED_REASON",
    "EdgeCase",
    "bad_file_corpus",
    "edge_case_corpus",
    "image_bytes",
    "make_zip",
    "patch_single_member_zip",
    "raw_png",
]


class EdgeCase(NamedTuple):
    name: str
    content: bytes
    description: str
    width: int  # expected after EXIF orientation
    height: int
    source_format: str


# The marks of a test module that uploads the corpus (`pytestmark = CORPUS_WARNINGS`): Pillow
# warns about some corpus files (bombs, corrupt EXIF); that noise is expected there, and
# test_uploads' test_bad_files_are_rejected_not_raised_when_warnings_are_errors covers strict hosts.
CORPUS_WARNINGS = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning"),
]


# What each rejection must say (lower-cased substring), one entry per corpus kind.
EXPECTED_REASON: dict[str, str] = {
    "empty.jpg": "empty file",
    "notes.jpg": "not an image: the file's content is text, not jpeg/png/tiff/bmp",
    "page.png": "content is an html web page",
    "drawing.svg": "content is an svg drawing",
    "data.png": "content is an xml document",
    "utf16.jpg": "content is text (utf-16)",
    "run.png": "content is a script",
    "report.jpg": "content is a pdf document",
    "figure.jpg": "postscript",
    "program.png": "elf executable",
    "setup.bmp": "windows program",
    "noise.tif": "not a recognised image format",
    "polyglot_html.jpg": "content is an html web page",
    "report.jpg.docx.jpg": "office document",
    "images.tar.gz.png": "gzip-compressed file",
    "batch.7z": "7-zip archive",
    "still.gif": "gif image; only jpeg, png, tiff or bmp images are accepted",
    "animated.gif": "multi-frame images are not supported",
    "gifar.gif": "content is a gif image",
    "photo.webp": "content is a webp image",
    "animated.webp": "multi-frame images are not supported",
    "iphone.jpg": "heic",
    "scan.dcm": "dicom",
    "slide.jp2": "jpeg 2000",
    "layers.psd": "photoshop",
    "animated.png": "multi-frame images are not supported: this png file contains more",
    "pages.tif": "multi-frame images are not supported: this tiff file contains more than one",
    "truncated.jpg": "truncated or corrupt jpeg image",
    "jpeg_garbage.jpg": "truncated or corrupt jpeg image",
    "jpeg_soi_only.jpg": "truncated or corrupt jpeg image",
    "png_bad_crc.png": "truncated or corrupt png image",
    "png_truncated.png": "truncated or corrupt png image",
    "png_signature_only.png": "truncated or corrupt png image",
    "png_text_bomb.png": "truncated or corrupt png image",
    "tiff_broken_ifd.tif": "truncated or corrupt tiff image",
    "tiff_strip_past_end.tif": "truncated or corrupt tiff image",
    "tiff_header_only.tif": "truncated or corrupt tiff image",
    "bmp_truncated.bmp": "truncated or corrupt bmp image",
    "bomb_20000.png": "too large to process safely",
    "bomb_header.jpg": "too large to process safely",
    "bomb_header.bmp": "too large to process safely",
    "pillow_limit.png": "too large: 10,000 x 10,000 pixels (100,000,000 pixels)",
    "too_many_pixels.png": "too large: 8,000 x 7,000 pixels (56,000,000 pixels)",
    "too_long_side.png": "too large: 12,000 x 10 pixels",
    "tiny_1x1.png": "too small to be a cell image: 1 x 1 pixels",
    "thin_4x100.jpg": "too small to be a cell image: 4 x 100 pixels",
    "oversized.jpg": "file is too large",
    "zip_bomb.zip": "file is too large",
    "zip_bomb_ratio.zip": "zip bomb",
    "zip_bomb_lying.zip": "corrupt zip member",
    "nested.zip": "nested archive",
    "tarball.zip": "nested archive",
    "text_in.zip": "not an image: the file's content is text",
    "encrypted.zip": "encrypted zip member",
    "corrupt.zip": "corrupt zip archive",
    "truncated.zip": "corrupt zip archive",
    "bad_crc.zip": "corrupt zip member",
    "deflate64.zip": "unsupported compression method",
    "too_many_members.zip": "too many entries: 5,001",
    "empty.zip": "empty zip archive",
    "system_files.zip": "system file, ignored",
}


# ---------------------------------------------------------------------------------------------
# Builders


def _pattern(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    """A small deterministic image whose bytes differ for every seed (no accidental duplicates)."""
    width, height = size
    rng = random.Random(seed)
    img = Image.frombytes("RGB", size, rng.randbytes(width * height * 3))
    return img if mode == "RGB" else img.convert(mode)


def image_bytes(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def raw_png(
    width: int,
    height: int,
    *,
    bit_depth: int = 1,
    colour_type: int = 0,
    rows: Iterable[bytes] | None = None,
    extra_chunks: Iterable[bytes] = (),
) -> bytes:
    """A hand-written PNG; without ``rows`` every pixel is 0, streamed so huge sizes stay cheap."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    line = b"\x00" * (1 + (width * channels * bit_depth + 7) // 8)
    compressor = zlib.compressobj(9)
    parts: list[bytes] = []
    if rows is None:
        per_block = max(1, (1 << 20) // len(line))
        full, rest = divmod(height, per_block)
        block = line * per_block
        parts.extend(compressor.compress(block) for _ in range(full))
        parts.append(compressor.compress(line * rest))
    else:
        parts.extend(compressor.compress(b"\x00" + row) for row in rows)
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + b"".join(extra_chunks)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def make_zip(
    members: Iterable[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data, compression)
    return buf.getvalue()


def _zip_of_zeros(name: str, size: int) -> bytes:
    """A one-member archive of ``size`` zero bytes, written in chunks (memory stays small)."""
    buf = io.BytesIO()
    zeros = b"\x00" * (1 << 20)
    with (
        zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open(name, "w") as member,
    ):
        for _ in range(size // len(zeros)):
            member.write(zeros)
        member.write(zeros[: size % len(zeros)])
    return buf.getvalue()


def patch_single_member_zip(
    data: bytes,
    *,
    flag_bits: int | None = None,
    method: int | None = None,
    compress_size: int | None = None,
    file_size: int | None = None,
) -> bytes:
    """Rewrite header fields of a one-member archive in both the local and central headers."""
    out = bytearray(data)
    central = data.rindex(b"PK\x01\x02")
    assert data.startswith(b"PK\x03\x04")
    assert data.count(b"PK\x01\x02") == 1
    for offset, value, fmt in (
        ((6, 8), flag_bits, "<H"),
        ((8, 10), method, "<H"),
        ((18, 20), compress_size, "<I"),
        ((22, 24), file_size, "<I"),
    ):
        if value is not None:
            struct.pack_into(fmt, out, offset[0], value)
            struct.pack_into(fmt, out, central + offset[1], value)
    return bytes(out)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF header is patched to claim other dimensions."""
    data = bytearray(image_bytes(_pattern((16, 16), 901), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _bmp_header(width: int, height: int, bits: int = 24) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def _tiff_with(patch: str) -> bytes:
    data = bytearray(image_bytes(_pattern((32, 32), 902), "TIFF"))
    ifd = struct.unpack_from("<I", data, 4)[0]
    if patch == "ifd_past_end":
        struct.pack_into("<I", data, 4, len(data) + 10_000)
    elif patch == "strip_past_end":
        count = struct.unpack_from("<H", data, ifd)[0]
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, typ = struct.unpack_from("<HH", data, entry)
            if tag == 273:  # StripOffsets
                assert typ == 4
                struct.pack_into("<I", data, entry + 8, len(data) + 50_000)
                break
        else:  # pragma: no cover - Pillow always writes StripOffsets
            raise AssertionError("no StripOffsets tag")
    return bytes(data)


def _exif_jpeg(orientation: int, size: tuple[int, int], seed: int) -> bytes:
    img = _pattern(size, seed)
    # Left half red, right half blue: after rotation the halves become top/bottom.
    width, height = size
    img.paste((220, 20, 20), (0, 0, width // 2, height))
    img.paste((20, 20, 220), (width // 2, 0, width, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return image_bytes(img, "JPEG", exif=exif.tobytes(), quality=95)


def _frames(count: int, seed: int, mode: str = "RGB") -> list[Image.Image]:
    return [_pattern((16, 16), seed + i, mode) for i in range(count)]


def _metadata_heavy_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "Patient: Jane Doe, DOB 1970-01-01"  # ImageDescription
    exif[0x013B] = "Dr. Private Person"  # Artist
    exif[0x0112] = 1
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return image_bytes(
        _pattern((48, 32), 903), "JPEG", exif=exif.tobytes(), icc_profile=icc, comment=b"Jane Doe"
    )


# ---------------------------------------------------------------------------------------------
# Corpora


@functools.cache
def _bad() -> tuple[tuple[str, bytes, str], ...]:
    jpeg = image_bytes(_pattern((64, 64), 1), "JPEG", quality=90)
    png = image_bytes(_pattern((32, 32), 2), "PNG")
    gif = image_bytes(_pattern((32, 32), 3, "P"), "GIF")
    rng = random.Random(1234)
    frames = _frames(3, 10)
    still_png = image_bytes(_pattern((16, 16), 4), "PNG")

    png_bad_crc = bytearray(png)
    png_bad_crc[29] ^= 0xFF  # IHDR's CRC
    text_bomb = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * (8 << 20), 9))
    deflated_text = make_zip([("notes.txt", b"hello " * 200)])
    stored_text = make_zip([("notes.txt", b"plain text " * 50)], zipfile.ZIP_STORED)
    bad_crc_zip = bytearray(stored_text)
    bad_crc_zip[bad_crc_zip.index(b"plain text") + 3] ^= 0x20
    ratio_bomb = _zip_of_zeros("cells.bmp", 20 << 20)

    corpus: list[tuple[str, bytes, str]] = [
        # Not images at all.
        ("empty.jpg", b"", "zero-byte file"),
        ("notes.jpg", b"Patient smear notes\nWBC count pending.\n", "plain text named .jpg"),
        ("page.png", b"<!DOCTYPE html><html><body>hi</body></html>", "HTML named .png"),
        (
            "drawing.svg",
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg">'
            b"<script>alert(1)</script></svg>",
            "SVG with a script",
        ),
        ("data.png", b'<?xml version="1.0"?><cells><cell/></cells>', "XML named .png"),
        ("utf16.jpg", "smear notes".encode("utf-16"), "UTF-16 text named .jpg"),
        ("run.png", b"#!/bin/sh\nrm -rf /\n", "shell script named .png"),
        ("report.jpg", b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF\n", "PDF header named .jpg"),
        ("figure.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "EPS (Ghostscript)"),
        ("program.png", b"\x7fELF\x02\x01\x01\x00" + bytes(56), "ELF executable"),
        ("setup.bmp", b"MZ\x90\x00\x03\x00\x00\x00" + bytes(120), "Windows EXE named .bmp"),
        ("noise.tif", rng.randbytes(4096), "random bytes named .tif"),
        ("polyglot_html.jpg", b"<html><script>x()</script>" + jpeg, "HTML page then a JPEG"),
        (
            "report.jpg.docx.jpg",
            make_zip([("[Content_Types].xml", b"<Types/>"), ("word/document.xml", b"<w/>")]),
            "Word document named .jpg",
        ),
        ("images.tar.gz.png", b"\x1f\x8b\x08\x00" + bytes(20), "gzip archive named .png"),
        ("batch.7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(24), "7-Zip archive"),
        # Image formats that are not on the allow-list.
        ("still.gif", gif, "single-frame GIF"),
        (
            "animated.gif",
            image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]),
            "animated GIF",
        ),
        ("gifar.gif", gif + make_zip([("a.class", b"\xca\xfe\xba\xbe")]), "GIF+JAR polyglot"),
        ("photo.webp", image_bytes(_pattern((32, 32), 5), "WEBP"), "WebP"),
        (
            "animated.webp",
            image_bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
            "animated WebP",
        ),
        ("iphone.jpg", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC named .jpg"),
        ("scan.dcm", bytes(128) + b"DICM" + bytes(64), "DICOM"),
        ("slide.jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(32), "JPEG 2000"),
        ("layers.psd", b"8BPS\x00\x01" + bytes(40), "Photoshop PSD"),
        # Multi-frame variants of accepted formats.
        (
            "animated.png",
            image_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:]),
            "APNG (animated PNG)",
        ),
        (
            "pages.tif",
            image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
            "multi-page TIFF",
        ),
        # Broken accepted formats.
        ("truncated.jpg", jpeg[: len(jpeg) * 6 // 10], "JPEG cut at 60%"),
        ("jpeg_garbage.jpg", b"\xff\xd8\xff\xe0" + rng.randbytes(2000), "JPEG magic then garbage"),
        ("jpeg_soi_only.jpg", b"\xff\xd8\xff", "only the JPEG start marker"),
        ("png_bad_crc.png", bytes(png_bad_crc), "PNG whose IHDR CRC is wrong"),
        ("png_truncated.png", png[: len(png) // 2], "PNG cut in half"),
        ("png_signature_only.png", png[:8], "only the PNG signature"),
        ("png_text_bomb.png", raw_png(16, 16, extra_chunks=[text_bomb]), "8 MB zTXt chunk"),
        ("tiff_broken_ifd.tif", _tiff_with("ifd_past_end"), "TIFF whose IFD is past the end"),
        ("tiff_strip_past_end.tif", _tiff_with("strip_past_end"), "TIFF strip past the end"),
        ("tiff_header_only.tif", b"II*\x00\x08\x00\x00\x00", "TIFF header, no IFD"),
        ("bmp_truncated.bmp", image_bytes(_pattern((64, 64), 6), "BMP")[:3000], "BMP cut short"),
        # Size limits.
        ("bomb_20000.png", raw_png(20_000, 20_000), "20000x20000 1-bit PNG of a few KB"),
        ("bomb_header.jpg", _jpeg_claiming(20_000, 20_000), "JPEG header claiming 20000x20000"),
        ("bomb_header.bmp", _bmp_header(30_000, 30_000), "BMP header claiming 30000x30000"),
        ("pillow_limit.png", raw_png(10_000, 10_000), "100 MP: over Pillow's warning limit"),
        ("too_many_pixels.png", raw_png(8_000, 7_000), "56 MP: over max_pixels"),
        ("too_long_side.png", raw_png(12_000, 10), "12000 px side, few pixels"),
        ("tiny_1x1.png", image_bytes(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "1x1 image"),
        ("thin_4x100.jpg", image_bytes(_pattern((4, 100), 7), "JPEG"), "4 px wide"),
        (
            "oversized.jpg",
            jpeg + bytes(25 * 1024 * 1024 + 1 - len(jpeg)),
            "valid JPEG padded past 25 MB",
        ),
        # ZIP archives.
        ("zip_bomb.zip", _zip_of_zeros("cells.bmp", 50 << 20), "50 MB of zeros in one member"),
        ("zip_bomb_ratio.zip", ratio_bomb, "20 MB of zeros: under the size limit, 1000:1"),
        (
            "zip_bomb_lying.zip",
            patch_single_member_zip(ratio_bomb, file_size=1000),
            "20 MB of zeros whose headers claim 1000 bytes",
        ),
        ("nested.zip", make_zip([("inner.zip", make_zip([("c.png", still_png)]))]), "zip in zip"),
        ("tarball.zip", make_zip([("more.tar.gz", b"\x1f\x8b\x08\x00" + bytes(40))]), "gz in zip"),
        ("text_in.zip", deflated_text, "a text file in a zip"),
        (
            "encrypted.zip",
            patch_single_member_zip(
                make_zip([("secret.png", still_png)], zipfile.ZIP_STORED), flag_bits=0x1
            ),
            "member with the encryption flag",
        ),
        ("corrupt.zip", b"PK\x03\x04" + rng.randbytes(500), "zip signature then garbage"),
        ("truncated.zip", make_zip([("c.png", png)])[:200], "zip without central directory"),
        ("bad_crc.zip", bytes(bad_crc_zip), "stored member whose CRC does not match"),
        (
            "deflate64.zip",
            patch_single_member_zip(deflated_text, method=9),
            "member compressed with Deflate64",
        ),
        (
            "too_many_members.zip",
            make_zip(((f"f{i:04d}.png", b"") for i in range(5_001)), zipfile.ZIP_STORED),
            "5001 entries (limit 5000)",
        ),
        ("empty.zip", make_zip([]), "archive with no entries"),
        (
            "system_files.zip",
            make_zip(
                [
                    ("__MACOSX/._cell.png", b"\x00\x05\x16\x07"),
                    ("__MACOSX/", b""),
                    ("batch/.DS_Store", b"\x00\x00\x00\x01Bud1"),
                    ("batch/Thumbs.db", b"\xd0\xcf\x11\xe0"),
                ]
            ),
            "only macOS/Windows metadata",
        ),
    ]
    return tuple(corpus)


def bad_file_corpus() -> list[tuple[str, bytes, str]]:
    """(name, content, what is wrong) for files that must be rejected under default limits."""
    return list(_bad())


@functools.cache
def _edge() -> tuple[EdgeCase, ...]:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgba = _pattern((30, 20), 30, "RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((30, 20)))
    la = _pattern((20, 30), 31, "LA")
    palette_trns = _pattern((24, 24), 32, "P")
    mpo = io.BytesIO()
    _pattern((40, 30), 33).save(mpo, "MPO", save_all=True, append_images=[_pattern((20, 15), 34)])
    gray16 = Image.linear_gradient("L").resize((32, 16)).convert("I").point(lambda v: v * 256)
    rgb16_rows = [
        b"".join(struct.pack(">HHH", x * 2000, y * 4000, 40000) for x in range(32))
        for y in range(16)
    ]
    jpeg = image_bytes(_pattern((36, 28), 35), "JPEG")

    cases: list[tuple[str, bytes, str, tuple[int, int], str]] = [
        (
            "png_named.jpg",
            image_bytes(_pattern((64, 48), 40), "PNG"),
            "PNG named .jpg",
            (64, 48),
            "PNG",
        ),
        (
            "jpeg_named.png",
            image_bytes(_pattern((48, 64), 41), "JPEG"),
            "JPEG named .png",
            (48, 64),
            "JPEG",
        ),
        (
            "smear_0001",
            image_bytes(_pattern((50, 40), 42), "BMP"),
            "BMP with no extension",
            (50, 40),
            "BMP",
        ),
        (
            "UPPER.JPEG",
            image_bytes(_pattern((40, 50), 43), "JPEG"),
            "upper-case extension",
            (40, 50),
            "JPEG",
        ),
        (
            "exif_rotated_6.jpg",
            _exif_jpeg(6, (40, 24), 44),
            "EXIF orientation 6 (90° CW)",
            (24, 40),
            "JPEG",
        ),
        (
            "exif_rotated_8.jpg",
            _exif_jpeg(8, (30, 20), 45),
            "EXIF orientation 8 (90° CCW)",
            (20, 30),
            "JPEG",
        ),
        (
            "exif_rotated_3.jpg",
            _exif_jpeg(3, (30, 20), 46),
            "EXIF orientation 3 (180°)",
            (30, 20),
            "JPEG",
        ),
        (
            "cmyk.jpg",
            image_bytes(_pattern((32, 32), 47, "CMYK"), "JPEG"),
            "CMYK JPEG",
            (32, 32),
            "JPEG",
        ),
        (
            "gray.jpg",
            image_bytes(_pattern((32, 32), 48, "L"), "JPEG"),
            "grayscale JPEG",
            (32, 32),
            "JPEG",
        ),
        (
            "progressive.jpg",
            image_bytes(_pattern((64, 40), 49), "JPEG", progressive=True),
            "progressive JPEG",
            (64, 40),
            "JPEG",
        ),
        (
            "metadata.jpg",
            _metadata_heavy_jpeg(),
            "EXIF with a patient name, ICC, comment",
            (48, 32),
            "JPEG",
        ),
        (
            "phone.mpo.jpg",
            mpo.getvalue(),
            "MPO: phone JPEG with a second picture",
            (40, 30),
            "JPEG",
        ),
        (
            "jpeg_then_zip.jpg",
            jpeg + make_zip([("payload.txt", b"PAYLOAD-MARKER")], zipfile.ZIP_STORED),
            "JPEG+ZIP polyglot",
            (36, 28),
            "JPEG",
        ),
        (
            "gray16.png",
            image_bytes(gray16.convert("I;16"), "PNG"),
            "16-bit grayscale PNG",
            (32, 16),
            "PNG",
        ),
        (
            "rgb16.png",
            raw_png(32, 16, bit_depth=16, colour_type=2, rows=rgb16_rows),
            "48-bit RGB PNG",
            (32, 16),
            "PNG",
        ),
        (
            "palette.png",
            image_bytes(_pattern((24, 24), 50, "P"), "PNG"),
            "palette PNG",
            (24, 24),
            "PNG",
        ),
        (
            "palette_trns.png",
            image_bytes(palette_trns, "PNG", transparency=0),
            "palette PNG with tRNS",
            (24, 24),
            "PNG",
        ),
        ("rgba.png", image_bytes(rgba, "PNG"), "RGBA PNG with an alpha gradient", (30, 20), "PNG"),
        ("la.png", image_bytes(la, "PNG"), "grayscale+alpha PNG", (20, 30), "PNG"),
        (
            "bilevel.png",
            image_bytes(_pattern((33, 17), 51, "1"), "PNG"),
            "1-bit PNG",
            (33, 17),
            "PNG",
        ),
        (
            "text_chunks.png",
            image_bytes(_pattern((20, 20), 52), "PNG", pnginfo=_pnginfo()),
            "tEXt/iTXt chunks",
            (20, 20),
            "PNG",
        ),
        (
            "icc.png",
            image_bytes(_pattern((20, 21), 53), "PNG", icc_profile=icc),
            "PNG with an ICC profile",
            (20, 21),
            "PNG",
        ),
        (
            "min_8x8.png",
            image_bytes(_pattern((8, 8), 54), "PNG"),
            "exactly the minimum size",
            (8, 8),
            "PNG",
        ),
        (
            "max_side.png",
            raw_png(10_000, 8, bit_depth=8, colour_type=2),
            "exactly the maximum side",
            (10_000, 8),
            "PNG",
        ),
        ("rgb.bmp", image_bytes(_pattern((41, 23), 55), "BMP"), "24-bit BMP", (41, 23), "BMP"),
        (
            "palette.bmp",
            image_bytes(_pattern((40, 20), 56, "P"), "BMP"),
            "8-bit palette BMP",
            (40, 20),
            "BMP",
        ),
        (
            "bilevel.bmp",
            image_bytes(_pattern((40, 20), 57, "1"), "BMP"),
            "1-bit BMP",
            (40, 20),
            "BMP",
        ),
        (
            "rgb.tif",
            image_bytes(_pattern((30, 30), 58), "TIFF"),
            "uncompressed TIFF",
            (30, 30),
            "TIFF",
        ),
        (
            "lzw.tif",
            image_bytes(_pattern((30, 31), 59), "TIFF", compression="tiff_lzw"),
            "LZW TIFF",
            (30, 31),
            "TIFF",
        ),
        (
            "cmyk.tif",
            image_bytes(_pattern((30, 32), 60, "CMYK"), "TIFF"),
            "CMYK TIFF",
            (30, 32),
            "TIFF",
        ),
        (
            "gray16.tif",
            image_bytes(gray16.convert("I;16"), "TIFF"),
            "16-bit grayscale TIFF",
            (32, 16),
            "TIFF",
        ),
        (
            "float.tif",
            image_bytes(gray16.convert("F").point(lambda v: v / 65535), "TIFF"),
            "32-bit float TIFF",
            (32, 16),
            "TIFF",
        ),
        (
            "group4.tif",
            image_bytes(_pattern((64, 32), 61, "1"), "TIFF", compression="group4"),
            "1-bit CCITT G4 TIFF",
            (64, 32),
            "TIFF",
        ),
        ("rgba.tif", image_bytes(rgba, "TIFF"), "RGBA TIFF", (30, 20), "TIFF"),
    ]
    return tuple(EdgeCase(n, c, d, w, h, f) for n, c, d, (w, h), f in cases)


def _pnginfo() -> object:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<script>alert('x')</script>")
    info.add_itxt("Author", "Jane Doe", zip=True)
    return info


def edge_case_corpus() -> list[EdgeCase]:
    """Unusual but valid images that must be accepted (expected size is after EXIF rotation)."""
    return list(_edge())
