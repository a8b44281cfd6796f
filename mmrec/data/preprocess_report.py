"""The report `mmrec preprocess --out DIR` writes to DIR/preprocess_report.json: every item of the
source accounted for, and every trailer or still that could not be used named.

    items in = items with every field + items with some fields absent + items dropped

Items with some fields absent are broken down by field and reason ("empty text", "no trailer
listed", "missing", "empty", "corrupt", "truncated", "too short", "no video stream", ...);
dropped items (no content field at all: left out of training and evaluation, still in
items.parquet) are listed by id. `failures` has one record per trailer or still that failed:
item id, field, source id (e.g. the youtubeId of ml-youtube.csv, where the source names one),
path, reason and detail. The counts are checked to add up (a mismatch is a bug and raises).

The report holds no timings, cache paths or "already done" counts, so an interrupted and
resumed preprocess writes the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import json

import numpy as np

REPORT_FILE = "preprocess_report.json"
FORMAT_VERSION = 1
MAX_EXAMPLES = 10
ABSENT = "absent"   # reason of a provider that does not say why an item lacks its field


def _reasons(content) -> list[str | None]:
    reasons = content.absent_reasons
    if reasons is None:
        reasons = [None if p else ABSENT for p in content.present]
    if len(reasons) != len(content.present) or \
            any((r is None) != bool(p) for r, p in zip(reasons, content.present)):
        raise AssertionError(f"field {content.name}: absent reasons disagree with presence")
    return list(reasons)


def preprocess_report(prepared, fields_cfg: dict) -> dict:
    """The report of a `PreparedData` (mmrec.data.pipeline.prepare) built with the config's
    `fields` (`fields_cfg`)."""
    ds, content = prepared.dataset, prepared.content
    ids = ds.items["item_id"].astype(str).tolist()
    n = len(ids)
    reasons = {name: _reasons(c) for name, c in content.items()}
    present = np.stack([np.asarray([r is None for r in rs], dtype=bool) for rs in reasons.values()],
                       axis=1) if reasons else np.zeros((n, 0), dtype=bool)
    complete, some = present.all(axis=1), present.any(axis=1)
    partial, dropped = some & ~complete, ~some

    fields, by_field = {}, {}
    for j, (name, rs) in enumerate(reasons.items()):
        absent: dict[str, int] = {}
        partial_absent: dict[str, list[str]] = {}
        for i, r in enumerate(rs):
            if r is None:
                continue
            absent[r] = absent.get(r, 0) + 1
            if partial[i]:
                partial_absent.setdefault(r, []).append(ids[i])
        fields[name] = {"modality": fields_cfg[name]["modality"], "present": int(present[:, j].sum()),
                        "absent": dict(sorted(absent.items()))}
        if fields[name]["present"] + sum(absent.values()) != n:
            raise AssertionError(f"field {name}: {fields[name]} does not add up to {n} items")
        if partial_absent:
            by_field[name] = {r: {"count": len(v), "examples": v[:MAX_EXAMPLES]}
                              for r, v in sorted(partial_absent.items())}
    dropped_ids = [ids[i] for i in np.flatnonzero(dropped)]
    failures = [dict(f) for c in content.values() for f in c.failures]
    report = {
        "format_version": FORMAT_VERSION,
        "dataset": ds.name,
        "items": {"in": n, "with_every_field": int(complete.sum()),
                  "with_some_fields_absent": int(partial.sum()), "dropped_no_content": len(dropped_ids)},
        "fields": fields,
        "some_fields_absent": by_field,
        "dropped_no_content": dropped_ids,
        "failures": failures,
    }
    check(report)
    return report


def check(report: dict) -> None:
    """Raise AssertionError unless the report's counts add up."""
    it = report["items"]
    if it["in"] != it["with_every_field"] + it["with_some_fields_absent"] + it["dropped_no_content"]:
        raise AssertionError(f"preprocess report: items do not add up: {it}")
    if len(report["dropped_no_content"]) != it["dropped_no_content"]:
        raise AssertionError("preprocess report: dropped ids and count differ")
    for name, f in report["fields"].items():
        if f["present"] + sum(f["absent"].values()) != it["in"]:
            raise AssertionError(f"preprocess report: field {name} does not add up: {f}")
        per_reason = {r: v["count"] for r, v in report["some_fields_absent"].get(name, {}).items()}
        if any(per_reason.get(r, 0) > c for r, c in f["absent"].items()) or \
                set(per_reason) - set(f["absent"]):
            raise AssertionError(f"preprocess report: field {name}: partial items exceed the absent ones")
        failed = [x for x in report["failures"] if x["field"] == name]
        if f["modality"] == "video":   # one failure record per item whose trailer failed
            from mmrec.data.visual import NO_TRAILER
            n_failed = sum(c for r, c in f["absent"].items() if r != NO_TRAILER)
            if len(failed) != n_failed:
                raise AssertionError(f"preprocess report: field {name}: {len(failed)} failure "
                                     f"records for {n_failed} items whose trailer failed")


def report_text(report: dict) -> str:
    return json.dumps(report, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def summary_lines(report: dict, max_failures: int = 10) -> list[str]:
    """A short human-readable summary (printed by `mmrec preprocess`)."""
    it = report["items"]
    lines = [f"items: {it['in']} in = {it['with_every_field']} with every field + "
             f"{it['with_some_fields_absent']} with some fields absent + "
             f"{it['dropped_no_content']} dropped (no content)"]
    for name, f in report["fields"].items():
        absent = ", ".join(f"{c} {r}" for r, c in f["absent"].items()) or "none"
        lines.append(f"  {name} ({f['modality']}): {f['present']} present; absent: {absent}")
    if report["dropped_no_content"]:
        ids = report["dropped_no_content"]
        lines.append(f"  dropped (no content): {', '.join(ids[:MAX_EXAMPLES])}"
                     + (f" and {len(ids) - MAX_EXAMPLES} more" if len(ids) > MAX_EXAMPLES else ""))
    failures = report["failures"]
    if failures:
        lines.append(f"  {len(failures)} content file(s) failed:")
        for f in failures[:max_failures]:
            source = f" (source id {f['source_id']})" if f.get("source_id") else ""
            lines.append(f"    item {f['item_id']}{source}, {f['field']}: {f['reason']}: {f['path']}")
        if len(failures) > max_failures:
            lines.append(f"    ... {len(failures) - max_failures} more in {REPORT_FILE}")
    return lines


def write_preprocess_output(prepared, out, report: dict):
    """The canonical dataset plus the report into `out`, atomically (see
    MultiModalDataset.save_atomic): a killed preprocess leaves `out` as it was, and a re-run
    writes the same bytes as an uninterrupted run."""
    return prepared.dataset.save_atomic(out, {REPORT_FILE: report_text(report)})
