#!/usr/bin/env python3
"""Replay "rbd diff v1" files onto a raw image file: the stock side of the file-restore case.

Why it exists: Ceph ships no tool that applies an rbd diff to a file (`rbd import-diff` writes
into an image), so the benchmark's baseline for restoring a chain to a file is `cp
--sparse=always` of the full backup's raw file, then this script, which does what such a tool
would: each `w` record written with `pwrite` in pieces of at most 4 MiB, each `z` record
punched as a hole, `s` sets the size; `f` and `t` are skipped. No checksum is checked.

Usage: `python3 bench/rbd_diff_replay.py FILE DIFF...`
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
from typing import BinaryIO

PIECE = 4 << 20
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range of the file (it reads as zeros)."""
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def read_exact(stream: BinaryIO, count: int) -> bytes:
    """`count` bytes of the stream, or an error."""
    data = stream.read(count)
    if len(data) != count:
        raise ValueError(f"truncated diff: wanted {count} bytes, got {len(data)}")
    return data


def replay(fd: int, path: str) -> None:
    """Apply one diff file to the open file `fd`."""
    with open(path, "rb") as stream:
        if read_exact(stream, 12) != b"rbd diff v1\n":
            raise ValueError(f"{path}: not an rbd diff v1")
        while True:
            tag = read_exact(stream, 1)
            if tag in (b"f", b"t"):
                (length,) = struct.unpack("<I", read_exact(stream, 4))
                read_exact(stream, length)
            elif tag == b"s":
                (size,) = struct.unpack("<Q", read_exact(stream, 8))
                os.ftruncate(fd, size)
            elif tag == b"w":
                offset, length = struct.unpack("<QQ", read_exact(stream, 16))
                while length > 0:
                    piece = read_exact(stream, min(length, PIECE))
                    os.pwrite(fd, piece, offset)
                    offset += len(piece)
                    length -= len(piece)
            elif tag == b"z":
                offset, length = struct.unpack("<QQ", read_exact(stream, 16))
                punch_hole(fd, offset, length)
            elif tag == b"e":
                return
            else:
                raise ValueError(f"{path}: unknown record {tag!r}")


def main(argv: list[str]) -> int:
    """Replay every diff onto the file, in order."""
    if len(argv) < 2:
        sys.exit(__doc__)
    fd = os.open(argv[0], os.O_WRONLY)
    try:
        for path in argv[1:]:
            replay(fd, path)
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
