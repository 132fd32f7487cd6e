"""A PNG reader independent of the writer (zlib and the PNG layout, not assets/metadata.py's
code), for the tests of the partition plot and of sync_status's chart."""

import re
import struct
import zlib

from assets.metadata import BAR_PX, GAP_PX, PLOT_HEIGHT_PX

DATA_URI = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def read_png(data: bytes) -> list[list[tuple[int, ...]]]:
    """Rows of RGBA pixels of an 8-bit RGBA, non-interlaced PNG whose rows use filter 0."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    idat = b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks[kind] = body
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, color, interlace) == (8, 6, 0)
    raw = zlib.decompress(idat)
    stride = 1 + 4 * width
    assert len(raw) == stride * height
    rows = []
    for y in range(height):
        line = raw[y * stride : (y + 1) * stride]
        assert line[0] == 0
        rows.append([tuple(line[1 + 4 * x : 5 + 4 * x]) for x in range(width)])
    return rows


def bar_heights(rows: list[list[tuple[int, ...]]], bars: int) -> list[int]:
    """The opaque pixels above the baseline in the middle column of each bar."""
    plot = PLOT_HEIGHT_PX - 3
    middle = (BAR_PX - GAP_PX) // 2
    return [sum(rows[y][n * BAR_PX + middle][3] == 255 for y in range(plot)) for n in range(bars)]
