"""Which attributes of a SYNTHETIC rendered world does a video encoder see?

    # linear probes of a trained run's item vectors (mean over segments), one per attribute
    python scripts/probe_world.py probe runs/exp/world-seed0
    # the same encoder architecture trained *directly* on the attributes (cross-entropy), to
    # separate "cannot see it" from "the ratings did not teach it"
    python scripts/probe_world.py supervised --config configs/world.yaml --steps 400 \
        encoders.video.patch_size=4 encoders.video.tubelet=2

    # the ceiling of the training objective: the same loss and evaluation with the TRUE
    # one-hot attributes (oracle.npz item factors) as the item features, optionally only some
    python scripts/probe_world.py ceiling --config configs/world.yaml --keep colour texture direction

Items are split 1,000 / rest (seeded) for the probes; accuracies are on the held-out items, with
chance = 1 / number of values. A diagnostic, not part of the method (mmrec trains on ratings only).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def attribute_targets(prepared) -> dict[str, torch.Tensor]:
    items = prepared.dataset.items.iloc[prepared.item_rows].reset_index(drop=True)
    cols = [c for c in items.columns if c.startswith("attr_")]
    if not cols:
        raise SystemExit("the dataset has no attr_* columns (not a rendered world)")
    return {c[5:]: torch.from_numpy(items[c].astype("category").cat.codes.to_numpy().astype(np.int64))
            for c in cols}


def held_out(n: int, n_train: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_train = min(n_train, int(0.8 * n))
    return perm[:n_train], perm[n_train:]


def linear_probe(X: torch.Tensor, y: torch.Tensor, train, test, steps: int = 300) -> float:
    X = (X - X[train].mean(0)) / (X[train].std(0) + 1e-6)
    lin = torch.nn.Linear(X.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(lin(X[train]), y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((lin(X[test]).argmax(1) == y[test]).float().mean())


def cmd_probe(args) -> None:
    from mmrec.evaluation.ranking import encode_items
    from mmrec.models import load_run_data
    cfg, prepared, model = load_run_data(args.run_dir)
    split = prepared.split
    with torch.no_grad():
        V = encode_items(model, prepared, np.arange(split.n_items), int(cfg["eval"]["item_batch_size"]))
    X = V.mean(1) if V.dim() == 3 else V
    train, test = held_out(len(X))
    print(f"| attribute | probe accuracy | chance |  ({args.run_dir}, {len(test)} held-out items)")
    print("|---|---|---|")
    for name, y in attribute_targets(prepared).items():
        print(f"| {name} | {linear_probe(X, y, train, test):.2f} | {1 / (int(y.max()) + 1):.2f} |")


def cmd_supervised(args) -> None:
    from encoders import build_encoder
    from mmrec.config import load_config
    from mmrec.data.pipeline import prepare
    cfg = load_config(args.config, args.overrides)
    prepared = prepare(cfg)
    field = next(n for n, f in cfg["fields"].items() if f["modality"] == "video")
    torch.manual_seed(args.seed)
    enc = build_encoder(cfg["encoders"][cfg["fields"][field]["encoder"]], int(cfg["model"]["token_dim"]))
    ys = attribute_targets(prepared)
    heads = torch.nn.ModuleDict({n: torch.nn.Linear(int(cfg["model"]["token_dim"]), int(y.max()) + 1)
                                 for n, y in ys.items()})
    opt = torch.optim.Adam([*enc.parameters(), *heads.parameters()], args.lr)
    train, test = held_out(prepared.split.n_items, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            enc.eval()
            with torch.no_grad():   # one random clip per held-out item, like a training example
                z = enc(prepared.collate(test, "train", np.arange(len(test)) + 10**6)[field]).cls
            acc = {n: round(float((heads[n](z).argmax(1) == y[test]).float().mean()), 2) for n, y in ys.items()}
            print(f"step {step} ({time.time() - t0:.0f} s): held-out accuracy {acc}", flush=True)
            enc.train()
        if step == args.steps:
            break
        idx = rng.choice(train, args.batch_size, replace=False)
        z = enc(prepared.collate(idx, "train", rng.integers(0, 2**31, len(idx)))[field]).cls
        loss = sum(torch.nn.functional.cross_entropy(heads[n](z), y[idx]) for n, y in ys.items())
        opt.zero_grad()
        loss.backward()
        opt.step()


def cmd_ceiling(args) -> None:
    from mmrec.config import load_config
    from mmrec.data.pipeline import prepare
    from mmrec.synthetic.oracle import oracle_factors
    from mmrec.evaluation.evaluator import DotScorer, RankingEvaluator
    from mmrec.evaluation.ranking import evaluate_ranking
    from mmrec.losses import RatingRankingLoss
    cfg = load_config(args.config, [f"seed={args.seed}", f"split.seed={args.seed}", *args.overrides])
    prepared = prepare(cfg)
    _, feats = oracle_factors(prepared)
    z = np.load(prepared.dataset.root / "oracle.npz", allow_pickle=False)
    names = [str(n) for n in z["factor_names"]]           # "attribute=value" per column
    if args.keep:
        cols = [j for j, n in enumerate(names) if n.split("=")[0] in args.keep]
        feats = feats[:, cols]
    torch.manual_seed(args.seed)
    D, split = int(cfg["model"]["dim"]), prepared.split
    enc = torch.nn.Linear(feats.shape[1], D)
    users = torch.nn.Embedding(split.n_users, D)
    torch.nn.init.normal_(users.weight, std=float(cfg["model"]["user_init_std"]))
    opt = torch.optim.Adam([*enc.parameters(), *users.parameters()], float(cfg["train"]["lr"]))
    loss_fn = RatingRankingLoss(float(cfg["loss"]["temperature"]))
    pairs, B = split.train_pairs(), int(cfg["train"]["batch_size"])
    rng = np.random.default_rng(args.seed)
    for epoch in range(args.epochs):
        perm = rng.permutation(len(pairs))
        for s in range(0, len(perm) - B + 1, B):
            b = torch.from_numpy(pairs[perm[s:s + B]]).long()
            loss = loss_fn(users(b[:, 0]), enc(feats[b[:, 1]]), b[:, 0], b[:, 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            res = {}
            for part in ("val", "test"):
                c = split.items_of(part)
                r = evaluate_ranking(DotScorer(users.weight, enc(feats[torch.from_numpy(c)])),
                                     split.eval_users(part), c, split.positives[part],
                                     RankingEvaluator([10]), n_items=split.n_items)
                res[part] = round(100 * r.means()["ndcg@10"], 2)
        print(f"epoch {epoch + 1}: NDCG@10 (%) {res}  (features: {args.keep or 'all taste attributes'})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_probe)
    s = sub.add_parser("supervised")
    s.add_argument("--config", default="configs/world.yaml")
    s.add_argument("--steps", type=int, default=400)
    s.add_argument("--every", type=int, default=100)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=cmd_supervised)
    c = sub.add_parser("ceiling")
    c.add_argument("--config", default="configs/world.yaml")
    c.add_argument("--keep", nargs="*", help="attributes whose true one-hots are the features (default: all)")
    c.add_argument("--epochs", type=int, default=4)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=cmd_ceiling)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
