"""Text output: a section's table and notes, and the goals block."""

from __future__ import annotations

from typing import Optional, Sequence

from .timing import Goal, Row, SectionResult

# Columns read from Row.extra: column heading -> (extra key, format).
EXTRA_COLUMNS = {
    "TOP/s": ("tops", ".1f"),
    "GOP/s": ("gops", ".1f"),
    "asym/sym": ("asym_over_sym", ".2f"),
    "rel err": ("rel_err", ".1e"),
    "/ours sym": ("over_ours_sym", ".2f"),
    "/ours asym": ("over_ours_asym", ".2f"),
    "tok/s": ("tokens_per_s", ".1f"),
    "vs qdyn": ("vs_quantize_dynamic", ".2f"),
    "vs torchao": ("vs_torchao", ".2f"),
    "best": ("best", ".2f"),
    "unit": ("unit", "s"),
    "runs": ("runs", "s"),
}


def fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def cell(row: Row, col: str) -> str:
    if col == "median us":
        return fmt(None if row.median is None else row.median * 1e6, ".1f")
    if col == "IQR us":
        return fmt(None if row.iqr is None else row.iqr * 1e6, ".1f")
    if col == "median ms":
        return fmt(None if row.median is None else row.median * 1e3, ".2f")
    if col == "IQR ms":
        return fmt(None if row.iqr is None else row.iqr * 1e3, ".2f")
    if col in ("GB/s", "W GB/s"):
        return fmt(row.gbps, ".2f")
    if col == "n":
        return str(len(row.times)) if row.times else "-"
    if col in ("vs fp32", "ratio"):
        return fmt(row.ratio, ".2f")
    if col == "BW/copy":
        return fmt(row.bw_fraction, ".2f")
    if col == "vs":
        return row.baseline or "-"
    key, spec = EXTRA_COLUMNS.get(col, (col, ".2f"))
    v = row.extra.get(key)
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return " ".join(fmt(x, ".3g") for x in v)
    return format(v, spec)


LEFT_ALIGNED = ("vs", "unit", "runs")


def format_section(res: SectionResult) -> str:
    header = ("op",) + tuple(res.columns)
    body = [(r.label,) + tuple(cell(r, c) for c in res.columns) for r in res.rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            # text columns (first, "vs", ...) left-aligned, numbers right-aligned
            parts.append(c.ljust(w) if i == 0 or header[i] in LEFT_ALIGNED else c.rjust(w))
        return "  ".join(parts).rstrip()

    if not res.rows:  # a section that measured nothing (e.g. cuda without a GPU)
        return "\n".join([f"== {res.name}: {res.title}"] + [f"   note: {n}" for n in res.notes])
    out = [f"== {res.name}: {res.title}", f"   {res.ratio_meaning}"]
    out += [line(header), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    out += [f"   note: {n}" for n in res.notes]
    return "\n".join(out)


def format_goals(goals: Sequence[Goal]) -> str:
    out = ["== goals"]
    if not goals:
        return "\n".join(out + ["   (no section with goals was run)"])
    w = max(len(g.name) for g in goals)
    for g in goals:
        iqr = "" if g.q1 is None else f"  (per-rep IQR {g.q1:.2f}-{g.q3:.2f})"
        out.append(
            f"{'PASS' if g.passed else 'FAIL'}  {g.name.ljust(w)}  "
            f"{g.value:6.2f} {g.op} {g.threshold:.2f}{iqr}"
        )
    return "\n".join(out)
