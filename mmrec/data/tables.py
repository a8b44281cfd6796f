"""The canonical processed dataset every reader produces and every model consumes.

A dataset directory holds Parquet tables (readable with `datasets.Dataset.from_parquet`, pandas
or pyarrow) and a JSON report:

- ``items.parquet``: one row per item. ``item_id`` (string) is required; content and metadata
  columns are free: ``title``, ``year``, ``genres`` (list of strings), ``synopsis``, ``trailer``
  (a video path), ``images`` (list of image paths), ``imdb_id``, ...
- ``interactions.parquet``: ``user_id`` (string), ``item_id`` (string), ``rating`` (float32),
  ``timestamp`` (int64, seconds).
- ``users.parquet`` (optional): ``user_id`` plus demographic columns.
- ``report.json``: where the data came from and what was read, kept and skipped, by reason, so
  that rows in = rows out + reported skips.

Ids are strings everywhere so that ids from any source keep their exact form.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.files import write_text_atomic

FORMAT_VERSION = 1
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


class DataError(ValueError):
    """Bad input data, with the file, line, item or field named in the message."""


@dataclass
class SkipLog:
    """Counts of rows dropped on purpose, by reason, with a few examples each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, n: int = 1, examples: list[str] | None = None) -> None:
        if n <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + int(n)
        ex = self.examples.setdefault(reason, [])
        for e in examples or []:
            if len(ex) >= self.max_examples:
                break
            ex.append(str(e))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}

    def lines(self) -> list[str]:
        out = []
        for reason, n in self.counts.items():
            ex = self.examples.get(reason) or []
            out.append(f"skipped {n} ({reason})" + (f", e.g. {'; '.join(ex[:3])}" if ex else ""))
        return out


@dataclass
class TableCount:
    """Rows in, rows out and skips for one input table; checked to add up."""

    source: str
    rows_in: int = 0
    rows_out: int = 0
    skips: SkipLog = field(default_factory=SkipLog)

    def check(self) -> None:
        if self.rows_in != self.rows_out + self.skips.total:
            raise AssertionError(
                f"{self.source}: {self.rows_in} rows in != {self.rows_out} out + "
                f"{self.skips.total} skipped {self.skips.counts}")

    def to_dict(self) -> dict:
        return {"source": self.source, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "skipped": self.skips.to_dict()}


@dataclass
class MultiModalDataset:
    name: str
    items: pd.DataFrame
    interactions: pd.DataFrame
    users: pd.DataFrame | None = None
    report: dict[str, TableCount] = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    root: Path | None = None   # the directory relative paths (trailers, images) are resolved from

    def __post_init__(self) -> None:
        self.items = self.items.reset_index(drop=True)
        self.interactions = self.interactions.reset_index(drop=True)
        validate_tables(self.items, self.interactions, self.users)

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.items.to_parquet(out / "items.parquet", index=False)
        self.interactions.to_parquet(out / "interactions.parquet", index=False)
        if self.users is not None:
            self.users.to_parquet(out / "users.parquet", index=False)
        meta = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "source": self.source,
            "root": str(self.root) if self.root else None,
            "counts": {"items": len(self.items), "interactions": len(self.interactions),
                       "users": None if self.users is None else len(self.users)},
            "tables": {k: v.to_dict() for k, v in self.report.items()},
        }
        write_text_atomic(out / "report.json", json.dumps(meta, indent=2))   # written last: marks a complete directory
        return out

    @classmethod
    def load(cls, path: str | Path) -> "MultiModalDataset":
        path = Path(path)
        report_file = path / "report.json"
        if not report_file.exists():
            raise DataError(f"{path}: not a processed mmrec dataset (no report.json)")
        meta = json.loads(report_file.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{report_file}: format_version {meta.get('format_version')} "
                            f"!= {FORMAT_VERSION}; re-run `mmrec preprocess`")
        users = pd.read_parquet(path / "users.parquet") if (path / "users.parquet").exists() else None
        report = {}
        for k, v in meta.get("tables", {}).items():
            tc = TableCount(v["source"], v["rows_in"], v["rows_out"])
            tc.skips.counts = dict(v["skipped"]["counts"])
            tc.skips.examples = dict(v["skipped"]["examples"])
            report[k] = tc
        root = meta.get("root")
        return cls(meta["name"], pd.read_parquet(path / "items.parquet"),
                   pd.read_parquet(path / "interactions.parquet"), users, report,
                   meta.get("source", {}), Path(root) if root else path)

    def summary_lines(self) -> list[str]:
        lines = [f"{self.name}: {len(self.items)} items, {len(self.interactions)} interactions, "
                 f"{self.interactions['user_id'].nunique()} users"]
        for key, tc in self.report.items():
            lines.append(f"  {tc.source}: {tc.rows_in} rows in, {tc.rows_out} kept")
            lines += [f"    {l}" for l in tc.skips.lines()]
        return lines


def validate_tables(items: pd.DataFrame, inter: pd.DataFrame, users: pd.DataFrame | None) -> None:
    """Structural checks every source must pass; readers catch row-level problems earlier."""
    if "item_id" not in items.columns:
        raise DataError(f"items table: missing column 'item_id' (columns: {list(items.columns)})")
    missing = [c for c in INTERACTION_COLUMNS if c not in inter.columns]
    if missing:
        raise DataError(f"interactions table: missing column(s) {missing} (columns: {list(inter.columns)})")
    dup = items["item_id"].duplicated()
    if dup.any():
        raise DataError(f"items table: duplicate item_id {items['item_id'][dup].iloc[0]!r}")
    unknown = ~inter["item_id"].isin(items["item_id"])
    if unknown.any():
        raise DataError(f"interactions table: item_id {inter['item_id'][unknown].iloc[0]!r} "
                        f"is not in the items table ({int(unknown.sum())} rows)")
    if users is not None and "user_id" not in users.columns:
        raise DataError("users table: missing column 'user_id'")


def normalise_interactions(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "user_id": df["user_id"].astype(str).to_numpy(),
        "item_id": df["item_id"].astype(str).to_numpy(),
        "rating": df["rating"].astype(np.float32).to_numpy(),
        "timestamp": df["timestamp"].astype(np.int64).to_numpy(),
    })
    return out
