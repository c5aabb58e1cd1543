# -*- test-case-name: tests.test_cli -*-
"""
Reading Debian archive indexes (C{Sources}, C{Packages}; plain, .gz or .xz)
into C{(source, [binaries])} pairs for the store.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from typing import BinaryIO, Callable, Iterator

from trackermail.errors import TrackerError

_SOURCE_FIELD = re.compile(r"^([^\s(]+)")


class IndexError_(TrackerError):
    """The file is not a readable Debian index."""


def open_index(path: str) -> BinaryIO:
    """Open plain, gzip, xz or bzip2 files, recognised by their magic bytes."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise IndexError_(f"{path}: {e.strerror}")
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def read_index(stream: BinaryIO, progress: Callable[[int], None] | None = None
               ) -> Iterator[tuple[str, list[str]]]:
    """
    Yield C{(source, binaries)} per paragraph. A C{Sources} paragraph has
    C{Package} (the source) and C{Binary}; a C{Packages} paragraph has
    C{Package} (a binary) and maybe C{Source: name (version)}.
    Only the fields we need are looked at: 60,000 paragraphs take well under
    a second to scan.
    """
    package = source = None
    binaries: list[str] = []
    field = None
    count = 0
    for raw in stream:
        count += 1
        if progress is not None and count % 20000 == 0:
            progress(stream.tell() if hasattr(stream, "tell") else 0)
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line.strip():
            if package:
                yield _entry(package, source, binaries)
            package = source = None
            binaries = []
            field = None
            continue
        if line[0] in " \t":
            if field == "binary":
                binaries.extend(b.strip() for b in line.split(",") if b.strip())
            continue
        name, _, value = line.partition(":")
        name = name.lower()
        value = value.strip()
        field = name
        if name == "package":
            package = value
        elif name == "source":
            match = _SOURCE_FIELD.match(value)
            source = match.group(1) if match else None
        elif name == "binary":
            binaries.extend(b.strip() for b in value.split(",") if b.strip())
    if package:
        yield _entry(package, source, binaries)


def _entry(package: str, source: str | None, binaries: list[str]):
    if binaries:  # a Sources paragraph
        return package, binaries
    # a Packages paragraph: the binary belongs to Source, or to itself
    return (source or package), [package]
