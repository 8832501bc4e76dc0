"""Validation of uploaded blood-smear images (and ZIP archives of them).

Pure Python + Pillow + stdlib, no Django: the portal's services feed it ``(name, stream)`` pairs
and store each :class:`AcceptedImage` as it arrives; every :class:`RejectedFile` carries a reason
a lab technologist can act on.  Nothing here raises for bad input.

Security model (see DESIGN.md, "Security and bad input"):

* The allow-list is decided by content (magic bytes, then Pillow's own detection restricted to the
  sniffed plugin), never by the file name or the Content-Type.  Only JPEG, PNG, TIFF and BMP
  decoders are ever run on accepted formats, so e.g. PostScript never reaches Ghostscript.
* At most ``max_file_bytes + 1`` bytes of any file or ZIP member are read.
* Dimensions are checked from the header before any pixel data is decoded.  Pillow's
  decompression-bomb protection stays on (Image.MAX_IMAGE_PIXELS is never changed): its error is
  a rejection, and whatever it only warns about is rejected too, because the pixel limit applied
  here never exceeds Pillow's.  Warning filters are deliberately not touched (they are
  process-global, and uploads are handled in threads); if the host escalates warnings to errors,
  they are caught and become rejections.
* Everything accepted is fully decoded (so truncated files are caught) and re-encoded as a
  metadata-free RGB PNG with EXIF orientation applied: the stored bytes never are the uploaded
  bytes, which neutralises polyglots and payloads hidden in metadata or after the image.
* ZIP archives are read in memory only; member paths are used for nothing but a display name;
  uncompressed sizes and compression ratios are counted while reading, never taken from headers.
* With ``threads`` (the portal's UPLOAD_THREADS), decoding runs in a pool while later files are
  read, a bounded window ahead; every verdict (budget, duplicate, reason) is still decided in
  upload order, so the results are the serial ones, in the same order.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import lzma
import struct
import unicodedata
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Final, cast

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_LIMITS",
    "AcceptedImage",
    "Fit",
    "RejectedFile",
    "UploadLimits",
    "UploadResult",
    "inspect_uploads",
]

# Turns an accepted image into the model's input geometry (ml.transforms.eval_geometry).
Fit = Callable[[Image.Image], Image.Image]

ACCEPTED_FORMATS: Final = ("JPEG", "PNG", "TIFF", "BMP")


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int = 25 * 1024 * 1024
    # 25 Mpx: a 6000 x 4000 microscope camera frame fits; one decoded copy is 75 MB. Pillow's
    # own decompression-bomb limit also stays on.
    max_pixels: int = 25_000_000
    min_side: int = 8  # smaller than this is not a cell image
    max_side: int = 10_000
    max_zip_members: int = 5_000
    max_zip_total_bytes: int = 1024 * 1024 * 1024
    max_zip_ratio: float = 200.0  # uncompressed/compressed per member: bombs
    # Per upload, files and ZIP members together (a ZIP of 5,000 counts 5,000), and the pixels
    # of every image decoded: what one request may make the server decode and store.
    max_images: int = 2_000
    max_upload_pixels: int = 500_000_000

    def __post_init__(self) -> None:
        for name in (
            "max_file_bytes",
            "max_pixels",
            "min_side",
            "max_side",
            "max_zip_members",
            "max_zip_total_bytes",
            "max_images",
            "max_upload_pixels",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UploadLimits.{name} must be a positive integer, got {value!r}")
        if self.min_side > self.max_side:
            raise ValueError("UploadLimits.min_side must not exceed max_side")
        if not self.max_zip_ratio >= 1.0:
            raise ValueError("UploadLimits.max_zip_ratio must be at least 1")


DEFAULT_LIMITS: Final = UploadLimits()


@dataclass(frozen=True)
class AcceptedImage:
    name: str  # the upload's base name, or "archive.zip/member.jpg" for ZIP members
    content: bytes = field(repr=False)  # re-encoded PNG, RGB, EXIF orientation applied, no metadata
    sha256: str  # of the ORIGINAL bytes as uploaded
    width: int
    height: int
    source_format: str  # "JPEG", "PNG", "TIFF" or "BMP"
    # The image already fitted to the model's input, when inspect_uploads was given `fit`: an
    # uncompressed BMP (FITTED_COPY_FORMAT), which the worker reads 10x faster than a PNG.
    model_input: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RejectedFile:
    name: str
    reason: str  # a sentence a lab technologist understands


UploadResult = AcceptedImage | RejectedFile

# ---------------------------------------------------------------------------------------------
# Constants

_CHUNK: Final = 1024 * 1024
# A member that decompresses to less than this is never called a bomb, whatever its ratio: a
# blank BMP compresses far better than 200:1 and is harmless at this size.
_RATIO_GRACE_BYTES: Final = 1024 * 1024
_MAX_NAME_CHARS: Final = 200
_ACCEPTED_LIST: Final = "JPEG/PNG/TIFF/BMP"
_ACCEPTED_WORDS: Final = "JPEG, PNG, TIFF or BMP"
_IMAGE_EXTENSIONS: Final = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".bmp", ".dib"}
)
_SYSTEM_DIRS: Final = frozenset({"__macosx"})
_SYSTEM_FILES: Final = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini"})
_BMP_HEADER_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

# Errors Pillow raises on malformed input.  Only Pillow calls are wrapped with these, so a bug in
# this module still surfaces as an exception.  The warnings are there for hosts that turn
# warnings into errors: Pillow warns about corrupt data (UserWarning) and about images over
# Image.MAX_IMAGE_PIXELS (DecompressionBombWarning, which _check_header rejects in any case).
_DECODE_ERRORS: Final = (
    Image.DecompressionBombWarning,
    UserWarning,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)
# Errors zipfile (and its decompressors) raise on malformed archives.
_ZIP_ERRORS: Final = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    OSError,
    EOFError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,
    IndexError,
    KeyError,
)

# Non-accepted content we can name: (offset, magic, description, kind).
_KIND_IMAGE: Final = "image"
_KIND_ARCHIVE: Final = "archive"
_KIND_OTHER: Final = "other"
_SIGNATURES: Final[tuple[tuple[int, bytes, str, str], ...]] = (
    (0, b"GIF87a", "a GIF image", _KIND_IMAGE),
    (0, b"GIF89a", "a GIF image", _KIND_IMAGE),
    (0, b"8BPS", "a Photoshop (PSD) document", _KIND_IMAGE),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 image", _KIND_IMAGE),
    (0, b"\xff\x4f\xff\x51", "a JPEG 2000 image", _KIND_IMAGE),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "a JPEG XL image", _KIND_IMAGE),
    (0, b"\xff\x0a", "a JPEG XL image", _KIND_IMAGE),
    (0, b"qoif", "a QOI image", _KIND_IMAGE),
    (128, b"DICM", "a DICOM medical image", _KIND_IMAGE),
    (0, b"%PDF", "a PDF document", _KIND_OTHER),
    (0, b"%!PS", "a PostScript/EPS file", _KIND_OTHER),
    (0, b"\xc5\xd0\xd3\xc6", "a PostScript/EPS file", _KIND_OTHER),
    (0, b"\x7fELF", "a Linux program (ELF executable)", _KIND_OTHER),
    (0, b"MZ", "a Windows program (EXE/DLL)", _KIND_OTHER),
    (0, b"\xcf\xfa\xed\xfe", "a macOS program", _KIND_OTHER),
    (0, b"\xca\xfe\xba\xbe", "a program or Java class file", _KIND_OTHER),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-style Microsoft Office document", _KIND_OTHER),
    (0, b"{\\rtf", "a rich-text (RTF) document", _KIND_OTHER),
    (0, b"\x1f\x8b", "a gzip-compressed file", _KIND_ARCHIVE),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", _KIND_ARCHIVE),
    (0, b"Rar!\x1a\x07", "a RAR archive", _KIND_ARCHIVE),
    (0, b"\xfd7zXZ\x00", "an XZ-compressed file", _KIND_ARCHIVE),
    (0, b"\x28\xb5\x2f\xfd", "a Zstandard-compressed file", _KIND_ARCHIVE),
    (0, b"BZh91AY&SY", "a bzip2-compressed file", _KIND_ARCHIVE),
    (257, b"ustar", "a TAR archive", _KIND_ARCHIVE),
)
_FTYP_BRANDS: Final[tuple[tuple[frozenset[bytes], str, str], ...]] = (
    (
        frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}),
        "a HEIC/HEIF photo (the iPhone format)",
        _KIND_IMAGE,
    ),
    (frozenset({b"avif", b"avis"}), "an AVIF image", _KIND_IMAGE),
)


# ---------------------------------------------------------------------------------------------
# Public entry point


def inspect_uploads(
    files: Iterable[tuple[str, IO[bytes]]],
    *,
    limits: UploadLimits = DEFAULT_LIMITS,
    fit: Fit | None = None,
    threads: int = 1,
) -> Generator[UploadResult, None, None]:
    """Yield one result per uploaded file, or per member of an uploaded ZIP archive, in order.

    Files are read one at a time and results are yielded as soon as they are known, so a caller
    that stores each result before asking for the next keeps memory bounded by one file.
    ``files`` may be any iterable of ``(name, binary stream)``, e.g. Django ``UploadedFile``s; the
    name is used only for display.  A later file whose original bytes equal an accepted earlier
    one in the same call is rejected as a duplicate.  With ``fit``, each accepted image also
    carries ``model_input``, the fitted copy, made from the pixels already decoded.

    With ``threads`` above 1, images are decoded, re-encoded and fitted in that many threads
    (Pillow and zlib release the GIL) while the files after them are read, at most
    ``2 * threads`` files and READ_AHEAD_BYTES ahead of the one yielded; the results, their
    order and every reason are the serial ones (the budget, duplicates and each verdict are
    still decided file by file, in order).  An image over THREADED_MAX_PIXELS is decoded alone,
    in the caller's thread, when its turn comes.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    budget = _Budget(limits)
    verdicts = _Verdicts(limits, fit, budget)
    items = _read_items(files, limits, budget)
    if threads == 1:
        for item in items:
            yield verdicts.verdict(item)
        return
    yield from _inspect_in_threads(items, verdicts, threads)


# Images up to this many pixels are decoded in the pool's threads: with 8 threads, 8 decoded
# copies of 6 MB and their re-encoded PNGs. A larger one (up to UploadLimits.max_pixels, 75 MB
# decoded at 25 Mpx) waits for its turn and is decoded in the caller's thread, one at a time,
# so threads do not multiply the memory a large image takes (bench.upload_memory --threads).
THREADED_MAX_PIXELS: Final = 2_000_000
# Bytes of uploaded files (or ZIP members) read ahead of the one being yielded; the file being
# read past this is the last one read until the oldest is out (25 MB files: three at a time).
READ_AHEAD_BYTES: Final = 64 * 1024 * 1024


@dataclass(eq=False)
class _Item:
    """One file or ZIP member as read, in upload order, waiting for its turn to be judged."""

    name: str
    # The upload's image and pixel budget is checked first, at the item's turn (files and ZIP
    # members; not whole-archive rejections).
    budgeted: bool
    rejected: str | None = None  # a reason known from reading alone
    data: bytes | None = field(default=None, repr=False)  # None: refused before reading
    in_archive: bool = False
    decoding: Future[_Decoded | str | None] | None = None
    # _Verdicts.screen's answer, when it was asked ahead of the item's turn (threads).
    screened: tuple[str, str] | str | None = None


# What _decode gives for an accepted image: (png, width, height, fitted copy).
_Decoded = tuple[bytes, int, int, bytes | None]


class _Verdicts:
    """Turns items into results in upload order: the state one upload's verdicts share."""

    def __init__(self, limits: UploadLimits, fit: Fit | None, budget: _Budget) -> None:
        self.limits = limits
        self.fit = fit
        self.budget = budget
        self.seen: dict[str, str] = {}  # sha256 of the uploaded bytes -> first accepted name

    def screen(self, item: _Item) -> tuple[str, str] | str:
        """(format, sha256) of an image worth decoding, or why the item is rejected; cheap."""
        if item.rejected is not None:
            return item.rejected
        data = item.data
        assert data is not None  # an item refused before reading never gets this far
        if not data:
            return "Empty file: it contains no data."
        if _is_zip(data):
            if item.in_archive:
                return _nested_reason("a ZIP archive")
            raise AssertionError("ZIP uploads are handled by _read_zip")  # pragma: no cover
        fmt = _sniff_accepted(data)
        if fmt is None:
            return _not_accepted_reason(item.name, data, in_archive=item.in_archive)
        return fmt, hashlib.sha256(data).hexdigest()

    def verdict(self, item: _Item) -> UploadResult:
        """The item's result, decided at its turn (every earlier item has had its verdict)."""
        name = item.name
        if item.budgeted and (reason := self.budget.refuse()) is not None:
            return RejectedFile(name, reason)
        if item.data is None and item.rejected is None:  # pragma: no cover - budgets only grow
            raise AssertionError(f"{name} was refused before reading but not at its turn")
        screened = item.screened if item.screened is not None else self.screen(item)
        if isinstance(screened, str):
            return RejectedFile(name, screened)
        fmt, digest = screened
        first = self.seen.get(digest)
        if first is not None:
            return RejectedFile(
                name, f"Duplicate of {first} in this upload; only the first copy is kept."
            )
        decoded = None if item.decoding is None else item.decoding.result()
        if decoded is None:  # not decoded ahead (serial, too large, or a copy of an earlier one)
            assert item.data is not None
            decoded = _decode(item.data, fmt, self.limits, self.fit)
            assert decoded is not None  # without max_pixels every image is decoded
        if isinstance(decoded, str):
            return RejectedFile(name, decoded)
        content, width, height, model_input = decoded
        self.seen[digest] = name
        return self.budget.spend(
            AcceptedImage(
                name=name,
                content=content,
                sha256=digest,
                width=width,
                height=height,
                source_format=fmt,
                model_input=model_input,
            )
        )


def _inspect_in_threads(
    items: Iterator[_Item], verdicts: _Verdicts, threads: int
) -> Iterator[UploadResult]:
    """Decode items ahead in a pool of `threads`; judge and yield them in upload order."""
    window: deque[_Item] = deque()
    ahead_bytes = 0
    # Digests already being decoded: a later copy waits for the first one's verdict (a
    # duplicate, or decoded at its turn if the first was rejected), never decoded twice at once.
    decoding: set[str] = set()
    limits, fit = verdicts.limits, verdicts.fit
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="upload-decode")
    try:
        for item in items:
            screened = item.screened = verdicts.screen(item) if item.data is not None else None
            if isinstance(screened, tuple) and screened[1] not in decoding:
                decoding.add(screened[1])
                item.decoding = pool.submit(
                    _decode, item.data or b"", screened[0], limits, fit,
                    max_pixels=THREADED_MAX_PIXELS,
                )  # fmt: skip
            window.append(item)
            ahead_bytes += len(item.data or b"")
            while window and (len(window) > 2 * threads or ahead_bytes > READ_AHEAD_BYTES):
                oldest = window.popleft()
                ahead_bytes -= len(oldest.data or b"")
                yield verdicts.verdict(oldest)
        while window:
            yield verdicts.verdict(window.popleft())
    finally:
        # A caller that stops early (or an error) leaves nothing running behind it.
        pool.shutdown(wait=True, cancel_futures=True)


class _Budget:
    """What one upload may still decode: images (files and ZIP members) and pixels."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.images = 0
        self.pixels = 0

    def refuse(self) -> str | None:
        """Why the next image is not even read, once the upload's count is spent."""
        if self.images >= self.limits.max_images:
            return (
                f"Not read: one upload holds at most {self.limits.max_images:,} images, ZIP "
                "members included. Please upload the rest as another batch."
            )
        if self.pixels >= self.limits.max_upload_pixels:
            return self.pixels_reason()
        return None

    def pixels_reason(self) -> str:
        return (
            f"Not stored: the upload's images together exceed {self.limits.max_upload_pixels:,} "
            "decoded pixels. Please upload the rest as another batch."
        )

    def spend(self, result: UploadResult) -> UploadResult:
        if isinstance(result, RejectedFile):
            return result
        self.images += 1
        pixels = result.width * result.height
        if self.pixels + pixels > self.limits.max_upload_pixels:
            self.pixels = self.limits.max_upload_pixels  # spent: the rest is not even decoded
            return RejectedFile(result.name, self.pixels_reason())
        self.pixels += pixels
        return result


# ---------------------------------------------------------------------------------------------
# Names


def _base_name(raw: str) -> str:
    """Reduce an uploaded name or a ZIP member path to a safe, printable base name."""
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    base = parts[-1] if parts else ""
    # Drop control and format characters (newlines, NULs, right-to-left overrides...).
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    if len(base) > _MAX_NAME_CHARS:
        _stem, dot, ext = base.rpartition(".")
        keep = ext if dot and len(ext) <= 10 else ""
        base = base[: _MAX_NAME_CHARS - len(keep) - 2] + "…" + ("." + keep if keep else "")
    return base or "unnamed file"


def _is_system_file(member_path: str) -> bool:
    parts = [p for p in member_path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return any(p.startswith(".") or p.lower() in _SYSTEM_DIRS for p in parts) or bool(
        parts and parts[-1].lower() in _SYSTEM_FILES
    )


def _extension(name: str) -> str:
    _, dot, ext = name.rpartition(".")
    return f".{ext.lower()}" if dot and ext and len(ext) <= 10 else ""


# ---------------------------------------------------------------------------------------------
# Reading


def _format_bytes(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n:,} bytes"
    return f"{n / (1024 * 1024):.1f} MB"


def _too_large_reason(limit: int) -> str:
    return (
        f"File is too large: it is bigger than the limit of {_format_bytes(limit)}. "
        "Please upload a smaller image."
    )


def _read_capped(stream: IO[bytes], limit: int) -> bytes | str:
    """Read at most ``limit + 1`` bytes (enough to know the file is over the limit), or a reason."""
    buf = bytearray()
    try:
        while len(buf) <= limit:
            chunk = stream.read(min(_CHUNK, limit + 1 - len(buf)))
            if not chunk:
                break
            buf += chunk
    except OSError as exc:
        return f"The file could not be read from the upload ({_detail(exc)})."
    if len(buf) > limit:
        return _too_large_reason(limit)
    return bytes(buf)


def _detail(exc: BaseException) -> str:
    """A short, printable rendering of an exception message for a reason sentence."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = "".join(ch for ch in text if ch.isprintable())
    if len(text) > 160:
        text = text[:157] + "..."
    return text.rstrip(".")


# ---------------------------------------------------------------------------------------------
# Content sniffing


def _is_zip(data: bytes) -> bool:
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


def _sniff_accepted(data: bytes) -> str | None:
    """The accepted format the content claims to be, from its magic bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if (
        data.startswith(b"BM")
        and len(data) >= 18
        and struct.unpack_from("<I", data, 14)[0] in _BMP_HEADER_SIZES
    ):
        return "BMP"
    return None


def _describe_other(data: bytes) -> tuple[str, str]:
    """(description, kind) of content that is not an accepted image format."""
    for offset, magic, description, kind in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return description, kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image", _KIND_IMAGE
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        for brands, description, kind in _FTYP_BRANDS:
            if brand in brands:
                return description, kind
        return "a video or other media file (MP4/MOV family)", _KIND_OTHER
    text = _describe_text(data)
    if text is not None:
        return text, _KIND_OTHER
    return "", _KIND_OTHER


def _describe_text(data: bytes) -> str | None:
    head = data[:4096]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "text (UTF-16)"
    # Markup is named even when binary data follows it (HTML/SVG polyglots).
    markup = head[:2048].decode("latin-1").lstrip("\ufeff\xef\xbb\xbf \t\r\n").lower()
    if markup.startswith("<"):
        if "<svg" in markup:
            return "an SVG drawing"
        if markup.startswith(("<!doctype html", "<html")) or "<html" in markup:
            return "an HTML web page"
        if markup.startswith("<?xml"):
            return "an XML document"
    if b"\x00" in head:
        return None
    text = head.decode("utf-8", errors="replace")
    bad = sum(1 for ch in text if ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\f\b\x1b"))
    if bad > max(2, len(text) // 20):
        return None
    if text.lstrip("\ufeff \t\r\n").startswith("#!"):
        return "a script (text)"
    return "text"


def _not_accepted_reason(name: str, data: bytes, *, in_archive: bool) -> str:
    description, kind = _describe_other(data)
    ext = _extension(name)
    despite = f", even though its name ends in {ext}" if ext in _IMAGE_EXTENSIONS else ""
    if kind == _KIND_IMAGE:
        animated = _is_animated(data, description)
        if animated:
            return (
                f"Unsupported image format: the file's content is an animated "
                f"{description.removeprefix('a ').removesuffix(' image')}{despite}; multi-frame "
                f"images are not supported, and only {_ACCEPTED_WORDS} images are accepted."
            )
        return (
            f"Unsupported image format: the file's content is {description}{despite}; "
            f"only {_ACCEPTED_WORDS} images are accepted."
        )
    if kind == _KIND_ARCHIVE:
        if in_archive:
            return _nested_reason(description)
        return (
            f"Not an image: the file's content is {description}{despite}; only ZIP archives of "
            f"{_ACCEPTED_WORDS} images can be unpacked."
        )
    if not description:
        return (
            f"Not an image: the file's content is not a recognised image format{despite} "
            f"(expected {_ACCEPTED_WORDS})."
        )
    return f"Not an image: the file's content is {description}, not {_ACCEPTED_LIST}{despite}."


def _is_animated(data: bytes, description: str) -> bool:
    """Whether a GIF or WebP (formats we reject anyway) is animated, for a clearer reason."""
    pillow_format = {"a GIF image": "GIF", "a WebP image": "WEBP"}.get(description)
    if pillow_format is None:
        return False
    try:
        with Image.open(io.BytesIO(data), formats=[pillow_format]) as img:
            return bool(getattr(img, "is_animated", False))
    except (Image.DecompressionBombError, *_DECODE_ERRORS):
        return False


def _nested_reason(description: str) -> str:
    return (
        f"Nested archive: this ZIP member is itself {description}; archives inside archives are "
        "not unpacked. Please upload it separately."
    )


# ---------------------------------------------------------------------------------------------
# Images


def _read_items(
    files: Iterable[tuple[str, IO[bytes]]], limits: UploadLimits, budget: _Budget
) -> Iterator[_Item]:
    """Read the files in order: one item per file or ZIP member, with what reading tells.

    The budget is looked at as it stands when a file is read, to skip reading what is refused
    already; the verdict asks it again at the item's turn (budgets only grow).
    """
    for raw_name, stream in files:
        name = _base_name(raw_name)
        data = _read_capped(stream, limits.max_file_bytes)
        if isinstance(data, str):
            yield _Item(name, budgeted=False, rejected=data)
        elif _is_zip(data):
            yield from _read_zip(name, data, limits, budget)
        elif budget.refuse() is not None:
            yield _Item(name, budgeted=True)
        else:
            yield _Item(name, budgeted=True, data=data)


def _decode(
    data: bytes, fmt: str, limits: UploadLimits, fit: Fit | None, *, max_pixels: int = 0
) -> _Decoded | str | None:
    """Decode, normalise and re-encode; (png, width, height, fitted copy) or a rejection reason.

    With `max_pixels`, an image whose header passes but has more pixels is left undecoded
    (None): the pool's threads pass large images back to be decoded one at a time.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A programming/configuration error elsewhere: truncated files would pass silently.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False for uploads")
    # Only Pillow's decoding (open, header, load) is guarded: an exception from our own code
    # below (conversion, fitting, encoding) is a bug to surface, not a corrupt file to report.
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, *_DECODE_ERRORS) as exc:
        return _decode_failure(exc, fmt)
    with img:
        try:
            reason = _check_header(img, fmt, limits)
            if reason is not None:
                return reason
            if max_pixels and img.width * img.height > max_pixels:
                return None
            img.load()
        except (Image.DecompressionBombError, *_DECODE_ERRORS) as exc:
            return _decode_failure(exc, fmt)
        image: Image.Image = img
        # Memory: one decoded copy of the pixels at a time. The EXIF rotation is done in place
        # (the old pixels are freed as the new ones arrive) and an RGB image is not copied.
        # Unreadable EXIF: keep the pixels as stored rather than reject the smear.
        with contextlib.suppress(*_DECODE_ERRORS):
            ImageOps.exif_transpose(image, in_place=True)
        try:
            rgb = _to_rgb(image)
        except ValueError as exc:
            return (
                f"Unsupported colour format: this {fmt} image uses the {image.mode} "
                f"colour mode, which cannot be converted to RGB ({_detail(exc)})."
            )
        del image
        rgb.info = {}
        out = io.BytesIO()
        # Level 1, not the default 6: validating PBC cells went from 16 to 42 images/s on
        # two cores for files about 20% larger; upload speed is what a lab waits on.
        rgb.save(out, format="PNG", compress_level=1, icc_profile=None, exif=b"")
        fitted = None if fit is None else _fitted_copy(fit(rgb))
        return out.getvalue(), rgb.width, rgb.height, fitted


def _decode_failure(exc: BaseException, fmt: str) -> str:
    """The rejection reason for an error Pillow raised while opening or decoding."""
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return (
            "Image is too large to process safely: its header declares more pixels than "
            f"the decompression-bomb limit allows ({_detail(exc)})."
        )
    if isinstance(exc, UnidentifiedImageError):
        return (
            f"Truncated or corrupt {fmt} image: the file starts like a {fmt} image, but its "
            "header is damaged and it cannot be read."
        )
    return (
        f"Truncated or corrupt {fmt} image: the image data ends early or is damaged "
        f"({_detail(exc)})."
    )


# The worker's copy of each image fitted to the model. Uncompressed: next to the ONNX Runtime
# engine's 6-7 ms forward pass per cell, decoding and converting a 192 px PNG copy took 1.5 ms
# and the BMP of the same pixels 0.6 ms (`decode_costs_ms_per_image`, bench/README.md); it is
# twice the PNG's size (110 KB at 192 px), lossless, and costs nothing to write.
FITTED_COPY_FORMAT = "BMP"
FITTED_COPY_SUFFIX = "bmp"


def _fitted_copy(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format=FITTED_COPY_FORMAT)
    return out.getvalue()


def _check_header(img: ImageFile.ImageFile, fmt: str, limits: UploadLimits) -> str | None:
    """Checks that need only the header: format, dimensions, frame count."""
    detected = "JPEG" if img.format == "MPO" else img.format
    if detected != fmt:  # pragma: no cover - formats=[fmt] makes this impossible
        return f"Not an image: Pillow detected {img.format}, not {_ACCEPTED_LIST}."
    width, height = img.size
    if width > limits.max_side or height > limits.max_side:
        return (
            f"Image is too large: {width:,} x {height:,} pixels; the limit is "
            f"{limits.max_side:,} pixels on each side."
        )
    pixels = width * height
    # Never above Pillow's limit: this is what turns its DecompressionBombWarning (images between
    # MAX_IMAGE_PIXELS and twice that, which Image.open lets through) into a rejection.
    bomb_limit = Image.MAX_IMAGE_PIXELS
    pixel_limit = limits.max_pixels if bomb_limit is None else min(limits.max_pixels, bomb_limit)
    if pixels > pixel_limit:
        return (
            f"Image is too large: {width:,} x {height:,} pixels ({pixels:,} pixels); the limit is "
            f"{pixel_limit:,} pixels."
        )
    if width < limits.min_side or height < limits.min_side:
        return (
            f"Image is too small to be a cell image: {width} x {height} pixels; each side must "
            f"be at least {limits.min_side} pixels."
        )
    # MPO is how Pillow reads phone JPEGs carrying extra pictures (depth maps, HDR gain maps);
    # the primary picture is an ordinary JPEG, so only that one is kept.
    # is_animated only looks at the next frame's pointer; n_frames would walk a TIFF's whole IFD
    # chain, which a crafted file can make very long.
    if img.format != "MPO" and getattr(img, "is_animated", False):
        return (
            f"Multi-frame images are not supported: this {fmt} file contains more than one "
            "frame or page. Please upload each one as a separate image."
        )
    img.seek(0)
    return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    mode = image.mode
    if mode.startswith("I;16"):
        image = image.convert("I")
        mode = "I"
    if mode in ("I", "F"):
        image = _scale_to_8bit(image).convert("L")
        image.info.pop("transparency", None)  # a 16-bit key colour means nothing at 8 bits
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if mode == "RGB" else image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """Map a 32-bit integer or float image onto 0..255 without clipping its real range."""
    low, high = cast("tuple[float, float]", image.getextrema())  # (min, max) for I and F
    if low >= 0 and high <= 1 and image.mode == "F":
        scale, offset = 255.0, 0.0
    elif low >= 0 and high <= 255:
        return image
    elif low >= 0 and high <= 65535:
        scale, offset = 1 / 256, 0.0
    else:
        scale = 255.0 / (high - low)
        offset = -low * scale
    return image.point(lambda value: value * scale + offset)


# ---------------------------------------------------------------------------------------------
# ZIP archives


class _CountingReader(io.BytesIO):
    """In-memory archive that counts the compressed bytes zipfile actually reads."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.consumed = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.consumed += len(chunk)
        return chunk


def _read_zip(name: str, data: bytes, limits: UploadLimits, budget: _Budget) -> Iterator[_Item]:
    """One item per member (read, not yet judged), or one for the whole archive."""
    declared = _declared_entry_count(data)
    if declared is not None and declared > limits.max_zip_members:
        # Refused before zipfile builds an object per entry (hundreds of MB for a 25 MB archive).
        yield _Item(name, budgeted=False, rejected=_too_many_reason(declared, limits))
        return
    archive = _CountingReader(data)
    try:
        zf = zipfile.ZipFile(archive)
    except _ZIP_ERRORS as exc:
        reason = f"Corrupt ZIP archive: it cannot be opened ({_detail(exc)}). No files were read."
        yield _Item(name, budgeted=False, rejected=reason)
        return
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_zip_members:
            yield _Item(name, budgeted=False, rejected=_too_many_reason(len(infos), limits))
            return
        members = [info for info in infos if not info.is_dir()]
        if not members:
            yield _Item(name, budgeted=False, rejected="Empty ZIP archive: it contains no files.")
            return
        paths = {info.filename for info in members}
        if "[Content_Types].xml" in paths or "mimetype" in paths:
            reason = (
                "Not an image archive: the file's content is an office document (Word, Excel, "
                f"PowerPoint or OpenDocument), not a ZIP of {_ACCEPTED_WORDS} images."
            )
            yield _Item(name, budgeted=False, rejected=reason)
            return
        total = 0
        for info in members:
            member_name = f"{name}/{_base_name(info.filename)}"
            # Every member is checked against the upload's budget first, at its turn.
            if budget.refuse() is not None:
                yield _Item(member_name, budgeted=True)
                continue
            if total > limits.max_zip_total_bytes:
                yield _Item(member_name, budgeted=True, rejected=_total_reason(limits))
                continue
            header_reason = _member_header_reason(info, limits)
            if header_reason is not None:
                yield _Item(member_name, budgeted=True, rejected=header_reason)
                continue
            payload, total = _read_member(zf, archive, info, limits, total)
            if isinstance(payload, str):
                yield _Item(member_name, budgeted=True, rejected=payload)
            else:
                yield _Item(member_name, budgeted=True, data=payload, in_archive=True)
                del payload


def _declared_entry_count(data: bytes) -> int | None:
    """The entry count the end-of-central-directory record declares (ZIP64 too), if readable.

    Only ever used to refuse early; the entries zipfile actually finds are counted again.
    """
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    if end < 0 or end + 22 > len(data):
        return None
    (count,) = struct.unpack_from("<H", data, end + 10)
    locator = end - 20
    if count == 0xFFFF and locator >= 0 and data[locator : locator + 4] == b"PK\x06\x07":
        (record,) = struct.unpack_from("<Q", data, locator + 8)
        if record + 40 <= len(data) and data[record : record + 4] == b"PK\x06\x06":
            (count,) = struct.unpack_from("<Q", data, record + 32)
    return int(count)


def _too_many_reason(count: int, limits: UploadLimits) -> str:
    return (
        f"The ZIP archive has too many entries: {count:,}; the limit is "
        f"{limits.max_zip_members:,}. No files were read; please split it."
    )


def _total_reason(limits: UploadLimits) -> str:
    return (
        "Not extracted: the ZIP archive unpacks to more than the limit of "
        f"{_format_bytes(limits.max_zip_total_bytes)} in total. Please split it."
    )


def _bomb_reason(limits: UploadLimits) -> str:
    return (
        "Not extracted: this ZIP member is compressed more than "
        f"{limits.max_zip_ratio:g} to 1, which is how zip bombs work."
    )


def _member_header_reason(info: zipfile.ZipInfo, limits: UploadLimits) -> str | None:
    """Early rejections from the member's header (never used to accept anything)."""
    if _is_system_file(info.filename):
        return "System file, ignored: it is folder metadata (macOS/Windows), not an image."
    if info.flag_bits & 0x41:
        return (
            "Encrypted ZIP member: password-protected files cannot be read. "
            "Please zip it again without a password."
        )
    if info.file_size > limits.max_file_bytes:
        return _too_large_reason(limits.max_file_bytes)
    if info.file_size > _RATIO_GRACE_BYTES and info.file_size > limits.max_zip_ratio * max(
        info.compress_size, 1
    ):
        return _bomb_reason(limits)
    return None


def _read_member(
    zf: zipfile.ZipFile,
    archive: _CountingReader,
    info: zipfile.ZipInfo,
    limits: UploadLimits,
    total: int,
) -> tuple[bytes | str, int]:
    """Read one member, counting what is actually decompressed; returns (bytes or reason, total)."""
    buf = bytearray()
    try:
        with zf.open(info) as stream:
            archive.consumed = 0
            while True:
                budget = min(
                    _CHUNK,
                    limits.max_file_bytes + 1 - len(buf),
                    limits.max_zip_total_bytes + 1 - total,
                )
                chunk = stream.read(budget)
                if not chunk:
                    break
                buf += chunk
                total += len(chunk)
                if len(buf) > limits.max_file_bytes:
                    return _too_large_reason(limits.max_file_bytes), total
                if total > limits.max_zip_total_bytes:
                    return _total_reason(limits), total
                if len(buf) > _RATIO_GRACE_BYTES and len(buf) > limits.max_zip_ratio * max(
                    archive.consumed, 1
                ):
                    return _bomb_reason(limits), total
    except NotImplementedError:
        return (
            "Cannot unpack: this ZIP member uses an unsupported compression method. "
            "Please re-create the archive with standard (Deflate) compression."
        ), total
    except _ZIP_ERRORS as exc:
        return f"Corrupt ZIP member: it cannot be unpacked ({_detail(exc)}).", total
    return bytes(buf), total
