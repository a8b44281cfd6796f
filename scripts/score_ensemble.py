"""Score an ensemble of finished item-cold-start runs on their shared split: each user and item
vector is the concatenation of the runs' vectors over sqrt(M), so a user-item score is the mean of
the M runs' scores, and the ensemble is one vector per item, as export and serving take it.

    python scripts/score_ensemble.py RUN [RUN ...] [--parts val test]

Prints one JSON line per part: every run's NDCG@10 alone and the ensemble's metrics. The runs
must share a split (`mmrec.sweep.same_split`); each is scored at its best epoch, with the
evaluation its config names (the first run's ks and user chunk). Used for the issue-16 notes
(docs/notes/issue16-default.md, sixth round): an ensemble of model seeds is not a config of the
method, so this is a measurement, not a training mode.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmrec.evaluation.evaluator import DotScorer, RankingEvaluator
from mmrec.evaluation.ranking import encode_items, evaluate_ranking, user_vectors
from mmrec.models.base import load_run_data
from mmrec.sweep import same_split


def vectors(runs: list[str], part: str):
    """(eval config, split, candidates, [user vectors], [item vectors]) of each run on `part`."""
    us, vs, first = [], [], None
    for run in runs:
        cfg, prepared, model = load_run_data(run)
        split = prepared.split
        candidates = split.items_of(part)
        vs.append(encode_items(model, prepared, candidates, int(cfg["eval"]["item_batch_size"])))
        us.append(user_vectors(model, split.n_users))
        first = first or (cfg["eval"], split, candidates)
    return (*first, us, vs)


def concatenated(parts: list[torch.Tensor]) -> torch.Tensor:
    """[N, sum D] over sqrt(M): its dot products are the mean of the parts' dot products."""
    return torch.cat(parts, dim=1) / len(parts) ** 0.5


def score(runs: list[str], part: str) -> dict:
    eval_cfg, split, candidates, us, vs = vectors(runs, part)
    evaluator = RankingEvaluator(eval_cfg["ks"], eval_cfg["user_chunk"])

    def metrics(u, v):
        return evaluate_ranking(DotScorer(u, v), split.eval_users(part), candidates, split.positives[part],
                                evaluator, n_items=split.n_items).means()

    return {"part": part, "runs": [str(r) for r in runs],
            "single_ndcg@10": [metrics(u, v)["ndcg@10"] for u, v in zip(us, vs)],
            "ensemble": metrics(concatenated(us), concatenated(vs))}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--parts", nargs="+", default=["val", "test"])
    args = ap.parse_args(argv)
    same_split([Path(r) for r in args.runs])
    out = [score(args.runs, part) for part in args.parts]
    for line in out:
        print(json.dumps(line))
    return out


if __name__ == "__main__":
    main()
