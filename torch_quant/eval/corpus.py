"""Text for the perplexity evaluation: Jane Austen's novels from the R package
janeaustenr (MIT licence, Julia Silge; the texts are public domain, from
Project Gutenberg), read from Debian's ``r-cran-janeaustenr`` without R.

The package stores its data as an R lazy-load database: ``Rdata.rdx`` is a
gzip-compressed serialized R list giving each object's (offset, length) in
``Rdata.rdb``, where each object is a 4-byte length followed by a
zlib-compressed serialized R object. The novels are character vectors, one
element per line of text. The framing (gzip, offsets, zlib) is ours; the
serialized objects are parsed by the ``rdata`` package.
"""

from __future__ import annotations

import gzip
import os
import warnings
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


def _unserialize(data: bytes, what: str):
    """An R serialized object as Python (lists, dicts, numpy arrays), by the
    ``rdata`` package (PyPI), which reads R's serialization formats."""
    import rdata

    with warnings.catch_warnings():
        # these are bare serialized objects: rdata says it "assumed RDS"
        warnings.simplefilter("ignore")
        try:
            return rdata.conversion.convert(rdata.parser.parse_data(data))
        except Exception as e:  # rdata's own errors for a file that is not R data
            raise ValueError(f"janeaustenr: {what} is not an R serialized object: "
                             f"{type(e).__name__}: {e}") from None


def _index(data_dir: Path) -> Dict[str, tuple]:
    """Each object's (offset, length) in Rdata.rdb, from the gzipped Rdata.rdx."""
    index = _unserialize(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()), "Rdata.rdx")
    return {str(name): tuple(int(v) for v in pos) for name, pos in index["variables"].items()}


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
    lines = _unserialize(zlib.decompress(blob[4:]), f"{book} in Rdata.rdb")
    return "\n".join(line if isinstance(line, str) else "" for line in lines)  # NA: ""
