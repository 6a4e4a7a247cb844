"""The HTML report opened in a real browser: headless Chromium draws the plots (screenshot pixels checked).

`.ci/run` installs Debian's `chromium`; under CI a missing Chromium fails the test, locally it skips
with the install command (tests.conftest.require_tool). The page is opened from a file:// URL with networking of no use: it has no
external reference to fetch.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from rollout.report import html
from tests.conftest import require_tool
from tests.test_report import rollout_doc

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium-browser", "google-chrome", "google-chrome-stable")) if p), None)


@pytest.fixture(autouse=True)
def _chromium() -> None:
    global CHROMIUM
    if CHROMIUM is None:
        CHROMIUM = require_tool("chromium", "chromium")

STABLE, CANARY, LIMIT = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0xD6, 0x27, 0x28)


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, head = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    assert head is not None
    w, h, depth, ctype, _, _, interlace = head
    assert depth == 8 and ctype in (2, 6) and interlace == 0, head
    bpp = 3 if ctype == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(v for k, v in enumerate(line) if k % 4 != 3))
        prev = line
    return w, h, rows


def near(px: tuple[int, int, int], color: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(px, color))


def test_html_report_renders_its_plots_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(html.render(rollout_doc()))
    shot = tmp_path / "shot.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
                        "--window-size=1000,950", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", page.as_uri()],
                       check=False, capture_output=True, text=True, timeout=90)
    assert shot.is_file(), r.stderr[-2000:]
    w, h, rows = read_png(shot.read_bytes())
    assert (w, h) == (1000, 950)
    # each version's colour is drawn in each of the three charts: find the rows where plot lines are
    hits: dict[str, list[int]] = {"stable": [], "canary": [], "limit": []}
    for y, row in enumerate(rows):
        px = [tuple(row[i:i + 3]) for i in range(0, w * 3, 3)]
        for name, color in (("stable", STABLE), ("canary", CANARY), ("limit", LIMIT)):
            if sum(1 for p in px[80:] if near(p, color)) >= 3:  # right of the legend's swatches
                hits[name].append(y)
    bands = lambda ys: len([y for i, y in enumerate(ys) if i == 0 or y - ys[i - 1] > 60])
    assert bands(hits["stable"]) >= 3 and bands(hits["canary"]) >= 3, hits
    assert hits["limit"], "the gate limits (red) are drawn"
    blank = sum(1 for row in rows for i in range(0, w * 3, 3) if row[i:i + 3] == b"\xff\xff\xff")
    assert blank < 0.9 * w * h, "the page is not blank"
