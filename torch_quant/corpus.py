"""Text for the perplexity evaluation: Jane Austen's novels from the R package
janeaustenr (MIT licence, Julia Silge; the texts are public domain, from
Project Gutenberg), read from Debian's ``r-cran-janeaustenr`` without R.

The package stores its data as an R lazy-load database: ``Rdata.rdx`` is a
gzip-compressed serialized R list giving each object's (offset, length) in
``Rdata.rdb``, where each object is a 4-byte length followed by a
zlib-compressed serialized R object. The novels are character vectors, one
element per line of text. The reader below understands just the parts of R's
XDR serialization format (version 2 and 3) that these files use.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["AUSTEN_BOOKS", "austen_data_dir", "austen_text", "austen_search_path"]

AUSTEN_BOOKS = ("prideprejudice", "emma", "sensesensibility", "mansfieldpark", "persuasion",
                "northangerabbey")

_R_PACKAGE_DIR = "usr/lib/R/site-library/janeaustenr/data"


def austen_search_path() -> List[Path]:
    """Where the package's data directory is looked for, in order:
    ``$TORCH_QUANT_DATA_DIR``, the system R library (``apt install
    r-cran-janeaustenr``), and the cache that ``make eval`` fills
    (``${XDG_CACHE_HOME:-~/.cache}/torch_quant/janeaustenr``, the .deb unpacked)."""
    out = []
    if os.environ.get("TORCH_QUANT_DATA_DIR"):
        out.append(Path(os.environ["TORCH_QUANT_DATA_DIR"]))
    out.append(Path("/") / _R_PACKAGE_DIR)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    out.append(cache / "torch_quant" / "janeaustenr" / _R_PACKAGE_DIR)
    return out


def austen_data_dir() -> Optional[Path]:
    for d in austen_search_path():
        if (d / "Rdata.rdx").is_file() and (d / "Rdata.rdb").is_file():
            return d
    return None


class _Unserializer:
    """R's XDR serialization, the subset used by data files."""

    NIL, SYM, LIST, CHAR, LGL, INT, REAL, STR, VEC, EXPR = 254, 1, 2, 9, 10, 13, 14, 16, 19, 20
    REF, EMPTYENV, ATTRLIST = 255, 242, 17

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError("not an R XDR serialization")
        self.data, self.pos, self.refs = data, 2, []
        version = self._int()
        self._int()  # R version that wrote it
        self._int()  # minimal R version to read it
        if version == 3:
            n = self._int()  # then the native encoding's name
            self.pos += n
        elif version != 2:
            raise ValueError(f"unsupported R serialization version {version}")

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def read(self):
        flags = self._int()
        kind = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind in (self.NIL, self.EMPTYENV):
            return None
        if kind == self.REF:
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if kind == self.SYM:
            name = self.read()
            self.refs.append(name)
            return name
        if kind in (self.LIST, self.ATTRLIST):  # pairlist -> list of (tag, value)
            if has_attr:
                self.read()
            tag = self.read() if has_tag else None
            head = [(tag, self.read())]
            tail = self.read()
            return head + (tail or [])
        if kind == self.CHAR:
            n = self._int()
            if n == -1:
                return None  # NA_character_
            s = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
            self.pos += n
            return s
        if kind in (self.STR, self.VEC, self.EXPR):
            value = [self.read() for _ in range(self._int())]
        elif kind in (self.INT, self.LGL):
            n = self._int()
            value = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == self.REAL:
            n = self._int()
            value = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        else:
            raise ValueError(f"unsupported R object type {kind}")
        if has_attr:
            attrs = dict(self.read())
            if "names" in attrs and kind == self.VEC:
                return dict(zip(attrs["names"], value))
        return value


def _index(data_dir: Path) -> Dict[str, tuple]:
    index = _Unserializer(gzip.decompress((data_dir / "Rdata.rdx").read_bytes())).read()
    variables = index["variables"]
    return {name: tuple(pos) for name, pos in variables.items()}


def austen_text(book: str = "prideprejudice", data_dir: Optional[Path] = None) -> str:
    """The text of one novel (``AUSTEN_BOOKS``), lines joined with newlines."""
    data_dir = data_dir or austen_data_dir()
    if data_dir is None:
        raise FileNotFoundError(
            "Jane Austen's novels (Debian package r-cran-janeaustenr) were not found in "
            + ", ".join(map(str, austen_search_path()))
            + ". Run `make eval-data` (apt-get download + dpkg-deb -x into the cache), "
            "`sudo apt install r-cran-janeaustenr`, or pass --text FILE.")
    index = _index(data_dir)
    if book not in index:
        raise ValueError(f"no book {book!r} in janeaustenr; it has {', '.join(sorted(index))}")
    offset, length = index[book]
    with open(data_dir / "Rdata.rdb", "rb") as f:
        f.seek(offset)
        blob = f.read(length)
    lines = _Unserializer(zlib.decompress(blob[4:])).read()
    return "\n".join(line or "" for line in lines)
