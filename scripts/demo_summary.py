"""Three lines per run against its baselines: what `make demo` prints at its end.

    python scripts/demo_summary.py ml100k-text world-demo     # newest runs/<name>* with metrics.json
    python scripts/demo_summary.py runs/ml100k-text-3          # or run directories

Line 1 names the run and its data, line 2 gives the model's cold-test NDCG@10 / Recall@10 at its
best validation epoch, line 3 each baseline and the model's ratio to it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def newest_run(name: str, runs: Path = Path("runs")) -> Path:
    p = Path(name)
    if (p / "metrics.json").exists():
        return p
    found = [d for d in runs.glob(f"{name}*") if (d / "metrics.json").exists()
             and (d.name == name or d.name[len(name):].lstrip("-").isdigit())]
    if not found:
        raise SystemExit(f"demo_summary: no finished run named {name} under {runs}/ (no metrics.json)")
    return max(found, key=lambda d: (d / "metrics.json").stat().st_mtime)


def summary(run_dir: Path) -> list[str]:
    m = json.loads((run_dir / "metrics.json").read_text())
    cfg_lines = (run_dir / "config.yaml").read_text()
    synthetic = "source: world" in cfg_lines
    test = m["test"] or {}
    ndcg, recall = test.get("ndcg@10", float("nan")), test.get("recall@10", float("nan"))
    data = "SYNTHETIC world (known oracle)" if synthetic else "REAL MovieLens-100k ratings"
    lines = [f"{run_dir.name}: {data}, {m['split']['test_items']} cold test items, best epoch {m['best_epoch']}",
             f"  model   NDCG@10 {100 * ndcg:6.2f}  Recall@10 {100 * recall:6.2f}"]
    parts = []
    for name, b in (m.get("baselines") or {}).items():
        if "test" in b:
            v = b["test"]["ndcg@10"]
            parts.append(f"{name} {100 * v:.2f} (model {ndcg / v:.2f}x)" if v else f"{name} {100 * v:.2f}")
    lines.append("  vs      " + ("; ".join(parts) if parts else "no baselines"))
    return lines


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    print("\n".join(line for name in argv for line in summary(newest_run(name))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
