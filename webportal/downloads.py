"""Content-Disposition for files we name from lab data (an accession number is free text).

RFC 6266: a quoted `filename=` limited to letters, digits, `-`, `_` and `.` (so a quote, a
semicolon, a path or a control character in the name can inject nothing and name no folder),
and `filename*=UTF-8''...` (RFC 5987 percent-encoding) carrying the readable name, without
control characters, separators of paths or leading dots.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

MAX_NAME = 150


def _readable(filename: str) -> str:
    text = unicodedata.normalize("NFC", filename)
    text = "".join(
        "_"
        if ch in '/\\"'
        or not ch.isprintable()
        or (unicodedata.category(ch).startswith("Z") and ch != " ")
        else ch
        for ch in text
    )
    return text.strip().lstrip(".")[:MAX_NAME] or "download"


def content_disposition(filename: str, *, attachment: bool = True) -> str:
    readable = _readable(filename)
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", readable).lstrip(".") or "download"
    kind = "attachment" if attachment else "inline"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(readable, safe='')}"
