"""User cold-start data: time-ordered behaviour sequences, categorical user features, and a user
split (CMCLRec, SIGIR'24 Sec. 4.1), for the sequential heads `sasrec` and `cmclrec`.

Split (seeded by `split.seed`): users are shuffled; `user_split.cold_test` of them (15%) are
**cold test** users, `user_split.warm_test` (15%) **warm test** users; of the rest,
`user_split.val` (20%, the paper's 8:2) are validation users, half cold and half warm, and the
others are training users.

Every evaluated user (val or test, cold or warm) has the same targets: the last
`user_split.holdout` items of their time-ordered sequence.
- **warm** user: "no adjustments" (the paper): their earlier items are known. They are the input
  sequence at evaluation, they are also trained on (next-item prediction within them, like any
  known user), and they are excluded from the ranking.
- **cold** user: "interactions removed": nothing of theirs is ever trained on; at evaluation only
  their features are known, and nothing is excluded.
Ranking is full: every item of the catalogue is a candidate. `overall` is cold and warm together.

User features (one categorical code per field): age bucketed at 18/25/35/45/50/56 (the
MovieLens-1M buckets), gender, occupation, and the first `user_split.zip_prefix` characters of
the zip code (non-numeric zips, i.e. outside the US, are one value "other"). Code 0 is reserved
for a masked field (augmentation), code 1 for a missing value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec.data.split import CSR, _sorted_ids
from mmrec.data.tables import DataError, MultiModalDataset

# user_part codes
TRAIN, VAL_WARM, VAL_COLD, TEST_WARM, TEST_COLD = range(5)
PART_CODES = {("val", "warm"): VAL_WARM, ("val", "cold"): VAL_COLD,
              ("test", "warm"): TEST_WARM, ("test", "cold"): TEST_COLD}
AGE_EDGES = (18, 25, 35, 45, 50, 56)
MASK, MISSING = 0, 1
FEATURES = ("age", "gender", "occupation", "zip")


@dataclass
class UserSplit:
    user_ids: np.ndarray          # user index -> original id (str)
    item_ids: np.ndarray          # item index -> original id (str), the whole catalogue
    user_part: np.ndarray         # user index -> TRAIN | VAL_WARM | VAL_COLD | TEST_WARM | TEST_COLD
    seq: CSR                      # user index -> item indices in time order (NOT sorted by item)
    features: np.ndarray          # [n_users, n_fields] int64 codes (0 mask, 1 missing, 2.. values)
    feature_names: list[str]
    feature_sizes: list[int]      # vocabulary size per field (including the two reserved codes)
    holdout: int                  # targets: the last `holdout` items of every evaluated user
    stats: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def users_of(self, part: str, kind: str = "all") -> np.ndarray:
        """Evaluated users of `part` (val | test), kind warm | cold | all, in index order."""
        kinds = ("warm", "cold") if kind == "all" else (kind,)
        codes = [PART_CODES[(part, k)] for k in kinds]
        return np.flatnonzero(np.isin(self.user_part, codes))

    def is_cold(self, users: np.ndarray) -> np.ndarray:
        return np.isin(self.user_part[users], (VAL_COLD, TEST_COLD))

    def known_length(self, u: int) -> int:
        """How many of the user's items (from the start) are known: all for training users,
        all but the targets for warm val/test users, none for cold users."""
        n = int(self.seq.indptr[u + 1] - self.seq.indptr[u])
        p = self.user_part[u]
        if p == TRAIN:
            return n
        if p in (VAL_COLD, TEST_COLD):
            return 0
        return n - self.holdout

    def history(self, u: int) -> np.ndarray:
        return self.seq.row(u)[:self.known_length(u)]

    def train_users(self) -> np.ndarray:
        """Users whose (known) sequence is trained on: training users and warm val/test users."""
        return np.array([u for u in range(self.n_users) if self.known_length(u) >= 2], dtype=np.int64)

    def targets(self, users: np.ndarray) -> CSR:
        """CSR over all users: the held-out last items of the given users (empty rows elsewhere)."""
        rows, cols = [], []
        for u in users:
            t = self.seq.row(u)[-self.holdout:]
            rows.append(np.full(len(t), u))
            cols.append(t)
        return _csr(rows, cols, self.n_users)

    def known(self, users: np.ndarray) -> CSR:
        """CSR over all users: the known (input) items of the given users, excluded from ranking."""
        rows, cols = [], []
        for u in users:
            h = self.history(u)
            rows.append(np.full(len(h), u))
            cols.append(h)
        return _csr(rows, cols, self.n_users)

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            path, kind=np.array("user_split"), user_ids=self.user_ids.astype(str),
            item_ids=self.item_ids.astype(str), user_part=self.user_part,
            seq_indptr=self.seq.indptr, seq_indices=self.seq.indices, features=self.features,
            feature_names=np.array(self.feature_names), feature_sizes=np.array(self.feature_sizes),
            holdout=np.array(self.holdout), stats=np.array(json.dumps(self.stats)))

    @classmethod
    def load(cls, path: str | Path) -> "UserSplit":
        z = np.load(path, allow_pickle=False)
        if "kind" not in z or str(z["kind"]) != "user_split":
            raise DataError(f"{path}: not a user cold-start split (was the run made by another head?)")
        return cls(z["user_ids"], z["item_ids"], z["user_part"], CSR(z["seq_indptr"], z["seq_indices"]),
                   z["features"], [str(x) for x in z["feature_names"]],
                   [int(x) for x in z["feature_sizes"]], int(z["holdout"]), json.loads(str(z["stats"])))


def _csr(rows: list, cols: list, n_rows: int) -> CSR:
    r = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols).astype(np.int64) if cols else np.zeros(0, np.int64)
    return CSR.from_pairs(r, c, n_rows)


def time_ordered(inter: pd.DataFrame, user_key: str = "user_id") -> pd.DataFrame:
    """Interactions sorted by user (`user_key`), then timestamp; ties keep their order in the
    source file."""
    df = inter.reset_index(drop=True)
    df = df.assign(_row=np.arange(len(df)))
    return df.sort_values([user_key, "timestamp", "_row"], kind="stable")


def age_bucket(age: float) -> int:
    return int(np.searchsorted(AGE_EDGES, age, side="right"))


def encode_user_features(users: pd.DataFrame | None, user_ids: np.ndarray, names: list[str],
                         zip_prefix: int, where: str) -> tuple[np.ndarray, list[int], dict]:
    """[n_users, n_fields] codes for `user_ids`; DataError naming the table and field on bad input."""
    if users is None:
        raise DataError(f"{where}: the dataset has no users table; the user cold-start heads need "
                        f"user features ({', '.join(names)})")
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise DataError(f"user_split.features: unknown feature(s) {unknown} (known: {', '.join(FEATURES)})")
    missing = [n for n in names if n not in users.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing} (columns: {', '.join(map(str, users.columns))})")
    table = users.assign(user_id=users["user_id"].astype(str).str.strip())
    dup = table["user_id"].duplicated()
    if dup.any():
        raise DataError(f"{where}: user_id {table['user_id'][dup].iloc[0]!r} appears more than once")
    table = table.set_index("user_id").reindex(pd.Index(user_ids.astype(str)))
    report = {"users_without_features": int(table[names[0]].isna().sum()) if names else 0}
    codes, sizes = [], []
    for name in names:
        raw = table[name]
        text = raw.astype("string").str.strip()
        absent = raw.isna().to_numpy() | (text.fillna("") == "").to_numpy()
        if name == "age":
            nums = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            bad = ~absent & ~np.isfinite(nums)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(f"{where}: field 'age' of user {str(user_ids[i])!r} is {raw.iloc[i]!r}, not a number")
            values = np.array([str(age_bucket(a)) if np.isfinite(a) else "" for a in nums], dtype=object)
        elif name == "zip":
            head = text.fillna("").str[:zip_prefix].to_numpy(dtype=object)
            values = np.array([h if h.isdigit() else "other" for h in head], dtype=object)
        else:
            values = text.fillna("").str.lower().to_numpy(dtype=object)
        vocab = sorted({v for v, a in zip(values, absent) if not a})
        index = {v: j + 2 for j, v in enumerate(vocab)}
        codes.append(np.array([MISSING if a else index[v] for v, a in zip(values, absent)], dtype=np.int64))
        sizes.append(len(vocab) + 2)
        report[f"{name}_values"] = len(vocab)
    feats = np.stack(codes, axis=1) if codes else np.zeros((len(user_ids), 0), np.int64)
    return feats, sizes, report


def make_user_split(ds: MultiModalDataset, cfg: dict) -> UserSplit:
    """The user cold-start split of a dataset (see the module docstring)."""
    us, data_cfg = cfg["user_split"], cfg["data"]
    inter = ds.interactions
    stats: dict = {"interactions_in": int(len(inter))}
    if us["min_rating"] is not None:
        keep = inter["rating"] >= float(us["min_rating"])
        stats["interactions_dropped_below_min_rating"] = int((~keep).sum())
        inter = inter[keep]
    counts = inter.groupby("user_id").size()
    need = max(int(data_cfg["min_user_ratings"]), int(us["holdout"]) + 2)
    keep_users = counts.index[counts >= need]
    stats["users_in"] = int(len(counts))
    stats["users_dropped_few_interactions"] = int(len(counts) - len(keep_users))
    inter = inter[inter["user_id"].isin(keep_users)]
    if len(inter) == 0:
        raise DataError(f"no user has >= {need} interactions (data.min_user_ratings, user_split.holdout + 2)")
    user_ids = _sorted_ids(inter["user_id"].astype(str).to_numpy())
    item_ids = ds.items["item_id"].astype(str).to_numpy()
    inter = inter.assign(_user=pd.Index(user_ids).get_indexer(inter["user_id"].astype(str)))
    inter = time_ordered(inter, "_user")
    u = inter["_user"].to_numpy()
    i = pd.Index(item_ids).get_indexer(inter["item_id"].astype(str))
    if (i < 0).any():
        raise DataError(f"interactions: item {inter['item_id'].iloc[int(np.flatnonzero(i < 0)[0])]!r} "
                        f"is not in the items table")
    indptr = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.add.at(indptr, u + 1, 1)
    seq = CSR(np.cumsum(indptr), i.astype(np.int64))   # sorted by u: each row is contiguous

    n = len(user_ids)
    n_cold = int(round(n * float(us["cold_test"])))
    n_warm = int(round(n * float(us["warm_test"])))
    if n_cold + n_warm >= n:
        raise DataError(f"user_split: cold_test + warm_test leave no training users ({n} users)")
    rest = n - n_cold - n_warm
    n_val = int(round(rest * float(us["val"])))
    n_val_cold = n_val // 2
    order = np.random.default_rng(int(cfg["split"]["seed"])).permutation(n)
    part = np.full(n, TRAIN, dtype=np.int8)
    bounds = np.cumsum([0, n_cold, n_warm, n_val_cold, n_val - n_val_cold])
    for code, a, b in zip((TEST_COLD, TEST_WARM, VAL_COLD, VAL_WARM), bounds[:-1], bounds[1:]):
        part[order[a:b]] = code

    where = f"{ds.name} users table" + (f" ({ds.root})" if ds.root is not None else "")
    feats, sizes, frep = encode_user_features(ds.users, user_ids, list(us["features"]),
                                              int(us["zip_prefix"]), where)
    names = {TRAIN: "train", VAL_WARM: "val_warm", VAL_COLD: "val_cold",
             TEST_WARM: "test_warm", TEST_COLD: "test_cold"}
    stats.update({"users": n, "items": len(item_ids), "interactions": int(len(inter)),
                  **{f"{v}_users": int((part == k).sum()) for k, v in names.items()},
                  "holdout": int(us["holdout"]), "features": frep})
    return UserSplit(user_ids, item_ids, part, seq, feats, list(us["features"]), sizes,
                     int(us["holdout"]), stats)


@dataclass
class SequenceData:
    """What the sequential heads need: the dataset, its user split and a report (the trainer's
    `prepared`)."""
    dataset: MultiModalDataset
    split: UserSplit
    report: dict


def prepare_sequences(cfg: dict, split: UserSplit | None = None, accelerator=None) -> SequenceData:
    from contextlib import nullcontext

    from mmrec.data.pipeline import load_source
    first = accelerator.main_process_first() if accelerator is not None else nullcontext()
    with first:
        ds = load_source(cfg["data"])
    if split is None:
        split = make_user_split(ds, cfg)
    elif not np.array_equal(split.item_ids.astype(str), ds.items["item_id"].astype(str).to_numpy()):
        raise DataError("the saved user split does not match the dataset's items; was the data changed?")
    return SequenceData(ds, split, {"dataset": ds.summary_lines(), "split": split.stats})
