"""Serving exported items: a FAISS inner-product index with its id map (docs/api.md, "Serving").

    index = mmrec.ItemIndex.build(vectors, ids, "hnsw")   # vectors [N, D] or [N, S, D]
    hits = index.search(user_vectors, k=10, exclude=[["12", "40"], []])   # hits.ids, hits.scores
    index.save("export/index"); index = mmrec.ItemIndex.load("export")   # an export or its index/

Scores are inner products u . v, as training and evaluation score. With video the items are
[N, S, D]: every segment vector goes into the index (row r of the index is item r // S), and an
item's score is the best of its segments, max_s u . v_s (KDD'24 Eq. 4): the search fetches
enough neighbours to keep k distinct items after de-duplication (and after each user's excluded
items), keeping each item's first, i.e. highest, hit.

Index types (`index_type`), all faiss with METRIC_INNER_PRODUCT; every parameter can be given:

  flat   exact (IndexFlatIP): the reference; N*S*D*4 bytes; every query reads every vector.
  ivf    IndexIVFFlat: k-means cells, a query scans `nprobe` of `nlist` cells. nlist defaults to
         4*sqrt(vectors) (faiss' guideline: 4..16*sqrt(N)), at most vectors/39 so that each cell
         has the 39 training points faiss asks for; trained on at most 40*nlist vectors (a seeded
         sample: k-means cost grows with points x cells) for 10 iterations. nprobe defaults to
         min(nlist, 32): on clustered vectors recall@10 ~0.95 at 1M items
         (docs/results/serving.md); raise it for recall, lower it for speed.
  hnsw   IndexHNSWFlat: a graph, no training; M=32 links (faiss' recommended 16..64; more is
         better recall, more memory: ~M*8 bytes a vector on top of the vectors), efConstruction
         40, efSearch 64 (raised to the number fetched when that is larger: faiss needs
         efSearch >= k). Build time grows with N*log N: the slowest to build.
  ivfpq  IndexIVFPQ: ivf's cells with product-quantised codes, `pq_m` bytes a vector (8 bits
         per sub-quantizer) instead of 4*D: for catalogues whose vectors do not fit in memory.
         pq_m defaults to D/8 (8 dimensions a sub-quantizer: 32x smaller than float32; faiss'
         k-means over 2- or 4-dimensional sub-spaces takes minutes on 2 cores). Scores are
         PQ estimates of u . v, and recall is lower than ivf's at the same nprobe. Its codebooks
         are trained for 10 k-means iterations on at most 64 points a code (faiss' defaults: 25
         on 256, ~6x the time).

Approximate indexes built once keep their training when items are appended (`add`): cells and
codebooks learnt on the first catalogue; rebuild from scratch when the catalogue has drifted.

A saved index is a folder written atomically (`preprocessing.files.write_dir_atomic`: a
temporary sibling renamed into place) holding `index.faiss` (faiss.write_index), `ids.txt` (the
item ids, one a line, in row order) and `index.json` (type, parameters, shapes); a missing,
truncated or inconsistent file is a one-line `CorruptFileError` naming it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmrec.data.tables import DataError
from preprocessing.files import CorruptFileError, write_dir_atomic

INDEX_DIR = "index"                       # inside an export folder
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.txt", "index.json"
INDEX_FORMAT, INDEX_VERSION = "mmrec-item-index", 1
INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq")
_OWNED = {INDEX_FILE, IDS_FILE, META_FILE}
MAX_THREADS = 2   # faiss' OpenMP threads (this project's machines are shared; override with set_threads)


def set_threads(n: int) -> None:
    """faiss' OpenMP thread count (process-wide)."""
    import faiss
    faiss.omp_set_num_threads(int(n))


def default_params(index_type: str, n_vectors: int, dim: int) -> dict:
    """The parameters used when none are given (module docstring: why these)."""
    if index_type not in INDEX_TYPES:
        raise DataError(f"--index-type: unknown index type {index_type!r} (one of {', '.join(INDEX_TYPES)})")
    if index_type == "flat":
        return {}
    if index_type == "hnsw":
        return {"m": 32, "ef_construction": 40, "ef_search": 64}
    nlist = int(max(1, min(round(4 * math.sqrt(max(n_vectors, 1))), n_vectors // 39)))
    params = {"nlist": nlist, "nprobe": min(nlist, 32), "train_size": min(n_vectors, 40 * nlist),
              "niter": 10, "seed": 0}
    if index_type == "ivfpq":   # the codebooks want 39 points per code: 8 bits from 9,984 vectors on
        params["pq_m"] = max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)
        params["pq_bits"] = int(min(8, max(1, math.floor(math.log2(max(n_vectors, 78) / 39)))))
        params["train_size"] = min(n_vectors, max(40 * nlist, 40 * 2 ** params["pq_bits"]))
    return params


@dataclass
class SearchResult:
    """Per user (row) the best k items: `ids` object [U, k] (None past a user's last hit),
    `scores` float32 [U, k] (-inf there), `rows` int64 [U, k] item rows of the index (-1 there)."""
    ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray

    def to_frame(self, user_ids) -> "pd.DataFrame":  # noqa: F821 - pandas imported lazily
        """`user_id, rank, item_id, score` (the layout of export's topk.parquet)."""
        import pandas as pd
        user_ids = np.asarray(user_ids).astype(str)
        u, r = np.nonzero(self.rows >= 0)
        return pd.DataFrame({"user_id": user_ids[u], "rank": (r + 1).astype(np.int64),
                             "item_id": self.ids[u, r].astype(str), "score": self.scores[u, r].astype(np.float64)})


class ItemIndex:
    """A faiss inner-product index over item vectors and its id map (module docstring)."""

    def __init__(self, index, ids, segments: int, index_type: str, params: dict, dim: int):
        self.index, self.index_type, self.params = index, index_type, dict(params)
        self.ids = np.asarray(ids, dtype=object)
        self.segments, self.dim = int(segments), int(dim)
        self._rows = None

    # ------------------------------------------------------------------------- building
    @classmethod
    def build(cls, vectors, ids, index_type: str = "flat", **params) -> "ItemIndex":
        """An index of `vectors` ([N, D], or [N, S, D]: every segment goes in) for the items `ids`
        (N, in row order). `params` override `default_params` (nlist, nprobe, train_size, niter,
        seed, m, ef_construction, ef_search, pq_m, pq_bits)."""
        V, S = _as_rows(vectors)
        ids = np.asarray(ids, dtype=object)
        if len(ids) * S != len(V):
            raise DataError(f"ItemIndex.build: {len(ids)} ids for {len(V) // max(S, 1)} items")
        unknown = set(params) - set(default_params(index_type, len(V), V.shape[1])) - {"seed"}
        if unknown:
            raise DataError(f"ItemIndex.build: unknown parameter(s) {sorted(unknown)} for index type "
                            f"{index_type!r}")
        p = {**default_params(index_type, len(V), V.shape[1]), **params}
        self = cls(_empty_index(index_type, V.shape[1], p), ids[:0], S, index_type, p, V.shape[1])
        self._train(V)
        self._add_rows(V)
        self.ids = ids
        return self

    def empty_like(self) -> "ItemIndex":
        """The same index type and parameters, trained as this one is, with no items."""
        import faiss
        index = faiss.clone_index(self.index)
        index.reset()
        return ItemIndex(index, self.ids[:0], self.segments, self.index_type, self.params, self.dim)

    def _train(self, V: np.ndarray) -> None:
        if self.index.is_trained:
            return
        n = min(len(V), int(self.params["train_size"]))
        sample = V if n == len(V) else V[np.sort(np.random.default_rng(self.params.get("seed", 0))
                                               .choice(len(V), n, replace=False))]
        self.index.train(np.ascontiguousarray(sample))

    def _add_rows(self, V: np.ndarray, chunk: int = 1 << 18) -> None:
        for s in range(0, len(V), chunk):   # in chunks: no full float copy of a large catalogue
            self.index.add(np.ascontiguousarray(V[s:s + chunk], dtype=np.float32))
        self._rows = None

    def add(self, vectors, ids) -> "ItemIndex":
        """Append items (after the existing ones): the id map grows, a trained index keeps its
        cells / codebooks. Ids already in the index are refused (the caller replaces instead)."""
        V, S = _as_rows(vectors)
        ids = np.asarray(ids, dtype=object)
        if S != self.segments or V.shape[1] != self.dim:
            raise DataError(f"ItemIndex.add: vectors of shape {tuple(np.shape(vectors))[1:]}, the index holds "
                            f"{(self.segments, self.dim) if self.segments > 1 else (self.dim,)}")
        if len(ids) * S != len(V):
            raise DataError(f"ItemIndex.add: {len(ids)} ids for {len(V) // S} items")
        clash = np.isin(ids.astype(str), self.ids.astype(str))
        if clash.any():
            raise DataError(f"ItemIndex.add: {int(clash.sum())} id(s) already in the index: "
                            f"{[str(i) for i in ids[clash][:5]]}")
        self._train(V)
        self._add_rows(V)
        self.ids = np.concatenate([self.ids, ids])
        return self

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def nbytes(self) -> int:
        """Bytes of the index's arrays (vectors or codes, ids of the inverted lists, the graph),
        read from faiss' own structures, not a serialised copy."""
        return index_nbytes(self.index)

    # ------------------------------------------------------------------------- searching
    def search(self, user_vectors, k: int, exclude=None, **params) -> SearchResult:
        """Each user's k best items by u . v (video: max over segments), best first. `exclude`:
        per user (row of `user_vectors`), item ids never to return (e.g. what the user already
        saw; ids not in the index are ignored). The index is asked for enough neighbours that k
        distinct, non-excluded items remain ((k + excluded) * S; exact for `flat`), more when an
        approximate index comes back short. `params`: nprobe (ivf, ivfpq) / ef_search (hnsw)
        for this call."""
        Q = np.ascontiguousarray(np.asarray(user_vectors, dtype=np.float32))
        if Q.ndim == 1:
            Q = Q[None]
        if Q.ndim != 2 or Q.shape[1] != self.dim:
            raise DataError(f"ItemIndex.search: user vectors of shape {Q.shape}; the index is of "
                            f"dimension {self.dim}")
        k = int(k)
        if k < 1:
            raise DataError(f"--top-k: must be at least 1 (got {k})")
        n_items, S = len(self.ids), self.segments
        excl = self._exclusions(exclude, len(Q))
        e = int(np.bincount(excl // max(n_items, 1), minlength=1).max()) if len(excl) else 0
        fetch = min(self.ntotal, (k + e) * S)
        out_rows = np.full((len(Q), k), -1, np.int64)
        out_scores = np.full((len(Q), k), -np.inf, np.float32)
        todo = np.arange(len(Q))
        while len(todo) and fetch > 0:
            D, L = self.index.search(Q[todo], fetch, params=self._search_params(fetch, params))
            rows, scores = _dedupe(L, D, S, k, excl, todo, n_items)
            out_rows[todo], out_scores[todo] = rows, scores
            full = (rows >= 0).sum(1) == np.minimum(k, n_items - _count(excl, todo, n_items))
            # short: ask for more, unless the index returned all it had at these parameters
            more = ~full & (L >= 0).all(1)
            if fetch >= self.ntotal or not more.any():
                break
            todo, fetch = todo[more], min(self.ntotal, fetch * 4)
        ids = np.full(out_rows.shape, None, dtype=object)
        hit = out_rows >= 0
        ids[hit] = self.ids[out_rows[hit]]
        return SearchResult(ids, out_scores, out_rows)

    def _exclusions(self, exclude, n_users: int) -> np.ndarray:
        """user * n_items + item row of every excluded (user, item) pair in the index, sorted."""
        if exclude is None:
            return np.zeros(0, np.int64)
        if len(exclude) != n_users:
            raise DataError(f"ItemIndex.search: exclude has {len(exclude)} rows for {n_users} users")
        if self._rows is None:
            import pandas as pd
            self._rows = pd.Index(self.ids.astype(str))
        codes = []
        for u, items in enumerate(exclude):
            if items is None or len(items) == 0:
                continue
            r = self._rows.get_indexer(np.asarray(items).astype(str))
            codes.append(u * len(self.ids) + np.unique(r[r >= 0]))
        return np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64)

    def _search_params(self, fetch: int, given: dict):
        import faiss
        unknown = set(given) - {"nprobe", "ef_search"}
        if unknown:
            raise DataError(f"ItemIndex.search: unknown parameter(s) {sorted(unknown)}")
        if self.index_type in ("ivf", "ivfpq"):
            return faiss.SearchParametersIVF(nprobe=int(given.get("nprobe", self.params["nprobe"])))
        if self.index_type == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(int(given.get("ef_search", self.params["ef_search"])),
                                                           fetch))
        return None

    # ------------------------------------------------------------------------- files
    def save(self, folder: str | Path) -> Path:
        """The index folder (index.faiss, ids.txt, index.json), written atomically."""
        import faiss

        def write(tmp: Path) -> None:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            (tmp / IDS_FILE).write_text("".join(f"{i}\n" for i in self.ids))
            (tmp / META_FILE).write_text(json.dumps(self.meta(), indent=1) + "\n")
        return write_dir_atomic(folder, write, owned=_OWNED)

    def meta(self) -> dict:
        return {"format": INDEX_FORMAT, "format_version": INDEX_VERSION, "library": "faiss",
                "index_type": self.index_type, "metric": "inner_product", "params": self.params,
                "dim": self.dim, "segments": self.segments, "items": len(self.ids), "vectors": self.ntotal,
                "index_file": INDEX_FILE, "ids_file": IDS_FILE,
                "score": "u . v" if self.segments == 1 else "max_s u . v_s (segment hits de-duplicated by item)"}

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False) -> "ItemIndex":
        """An index folder, an export folder holding one (`index/`) or a run whose export does
        (`RUN/export/index`). `mmap`: map index.faiss instead of reading it (flat, ivf)."""
        import faiss
        folder = find_index(path)
        meta_file, index_file, ids_file = folder / META_FILE, folder / INDEX_FILE, folder / IDS_FILE
        try:
            meta = json.loads(meta_file.read_text())
            if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
                raise ValueError(f"not an mmrec item index (format {meta.get('format') if isinstance(meta, dict) else None!r})")
            if meta.get("format_version") != INDEX_VERSION:
                raise ValueError(f"format_version {meta.get('format_version')}, this mmrec reads {INDEX_VERSION}")
            for key in ("index_type", "params", "dim", "segments", "items", "vectors"):
                if key not in meta:
                    raise ValueError(f"missing key {key!r}")
        except (OSError, ValueError) as e:
            raise CorruptFileError(f"{meta_file}: unreadable item index metadata ({_one_line(e)})",
                                   filename=meta_file) from None
        if not index_file.is_file():
            raise CorruptFileError(f"{index_file}: missing (the faiss index of {folder})", filename=index_file)
        try:
            index = faiss.read_index(str(index_file), faiss.IO_FLAG_MMAP if mmap else 0)
        except RuntimeError as e:
            raise CorruptFileError(f"{index_file}: not a readable faiss index, truncated or corrupt "
                                   f"({_one_line(e)[:160]})", filename=index_file) from None
        if not ids_file.is_file():
            raise CorruptFileError(f"{ids_file}: missing (the id map of {index_file})", filename=ids_file)
        ids = np.array(ids_file.read_text().splitlines(), dtype=object)
        if len(ids) != meta["items"] or index.ntotal != meta["vectors"] or index.d != meta["dim"] \
                or index.ntotal != len(ids) * int(meta["segments"]):
            raise CorruptFileError(f"{folder}: index.faiss ({index.ntotal} vectors of dimension {index.d}), "
                                   f"ids.txt ({len(ids)} ids) and index.json ({meta['items']} items x "
                                   f"{meta['segments']} segments of dimension {meta['dim']}) do not agree",
                                   filename=folder)
        return cls(index, ids, meta["segments"], meta["index_type"], meta["params"], meta["dim"])


def find_index(path: str | Path) -> Path:
    """The index folder of an index folder, an export folder or a run directory (its export)."""
    path = Path(path)
    for folder in (path, path / INDEX_DIR, path / "export" / INDEX_DIR):
        if (folder / META_FILE).is_file():
            return folder
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such export folder, run directory or item index")
    raise FileNotFoundError(f"{path}: no item index ({INDEX_DIR}/{META_FILE}) here, in {INDEX_DIR}/ or "
                            f"in export/{INDEX_DIR}/; build one with `mmrec export RUN --items ITEMS --index faiss`")


def index_nbytes(index) -> int:
    """The arrays of a faiss index (see ItemIndex.nbytes)."""
    import faiss
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        lists = ivf.invlists
        n = sum(lists.list_size(i) for i in range(ivf.nlist))
        return int(n * (lists.code_size + 8) + index_nbytes(ivf.quantizer)
                   + (ivf.pq.M * ivf.pq.ksub * ivf.pq.dsub * 4 if hasattr(ivf, "pq") else 0))
    if hasattr(index, "hnsw"):
        h = index.hnsw
        graph = (h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4)
        return int(graph + index_nbytes(index.storage))
    return int(index.ntotal * getattr(index, "code_size", index.d * 4))


# ------------------------------------------------------------------------------ helpers
def _as_rows(vectors) -> tuple[np.ndarray, int]:
    V = np.asarray(vectors)
    if V.ndim == 2:
        return V.astype(np.float32, copy=False), 1
    if V.ndim == 3:
        return V.reshape(-1, V.shape[2]).astype(np.float32, copy=False), int(V.shape[1])
    raise DataError(f"item vectors must be [N, D] or [N, S, D], got shape {V.shape}")


def _empty_index(index_type: str, d: int, p: dict):
    import faiss
    ip = faiss.METRIC_INNER_PRODUCT
    if index_type == "flat":
        return faiss.IndexFlatIP(d)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(p["m"]), ip)
        index.hnsw.efConstruction, index.hnsw.efSearch = int(p["ef_construction"]), int(p["ef_search"])
        return index
    quantizer = faiss.IndexFlatIP(d)
    if index_type == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, int(p["nlist"]), ip)
    else:
        if d % int(p["pq_m"]):
            raise DataError(f"ivfpq: pq_m {p['pq_m']} does not divide the dimension {d}")
        index = faiss.IndexIVFPQ(quantizer, d, int(p["nlist"]), int(p["pq_m"]), int(p["pq_bits"]), ip)
    index.cp.niter, index.cp.seed = int(p["niter"]), int(p.get("seed", 0))
    if index_type == "ivfpq":   # codebooks: 10 iterations on <= 64 points a code (faiss: 25 on 256, ~10x slower)
        index.pq.cp.niter, index.pq.cp.seed, index.pq.cp.max_points_per_centroid = int(p["niter"]), int(p.get("seed", 0)), 64
    index.nprobe = int(p["nprobe"])
    return index


def _count(excl: np.ndarray, users: np.ndarray, n_items: int) -> np.ndarray:
    """How many items each of `users` has excluded."""
    if not len(excl):
        return np.zeros(len(users), np.int64)
    return np.bincount(excl // n_items, minlength=int(users.max()) + 1)[users]


def _dedupe(L: np.ndarray, D: np.ndarray, S: int, k: int, excl: np.ndarray, users: np.ndarray,
            n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """From faiss' vector hits (labels L, scores D; best first) the first k distinct items not
    excluded, each with its first (best) segment's score: Eq. 4's max over the fetched segments."""
    items = np.where(L >= 0, L // S, -1)
    if len(excl):
        codes = users[:, None] * n_items + np.maximum(items, 0)
        items = np.where(np.isin(codes, excl) & (items >= 0), -1, items)
    order = np.argsort(items, axis=1, kind="stable")          # equal items: in score order
    si = np.take_along_axis(items, order, 1)
    first = np.ones_like(si, dtype=bool)
    first[:, 1:] = si[:, 1:] != si[:, :-1]
    keep = np.empty_like(first)
    np.put_along_axis(keep, order, first, 1)
    keep &= items >= 0
    pick = np.argsort(~keep, axis=1, kind="stable")[:, :k]    # kept hits, in score order
    ok = np.take_along_axis(keep, pick, 1)
    rows = np.where(ok, np.take_along_axis(items, pick, 1), -1)
    scores = np.where(ok, np.take_along_axis(D, pick, 1), -np.inf).astype(np.float32)
    if rows.shape[1] < k:   # fewer hits fetched than k
        pad = k - rows.shape[1]
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return rows, scores


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ------------------------------------------------------------------------------ query
def query(source: str | Path, users: list[str], k: int, exclude_seen: bool = False, **params):
    """`mmrec query RUN_OR_EXPORT --users ... --top-k K`: each user's top-k items of the index
    as a DataFrame `user_id, rank, item_id, score` (topk.parquet's layout). The user vectors are
    the export's user_embeddings.npy (what `mmrec.load_user_vectors(RUN)` gives, saved with the
    index by the same model), else the run's. `exclude_seen`: leave out each user's known items,
    the run's training interactions (split.npz's training positives)."""
    from mmrec.runs import is_run_dir
    folder = find_index(source)
    export_dir = folder.parent if folder.name == INDEX_DIR else folder
    report_file = export_dir / "export_report.json"
    run = Path(source) if is_run_dir(source) else (
        Path(json.loads(report_file.read_text())["run"]) if report_file.is_file() else None)
    index = ItemIndex.load(folder)
    if (export_dir / "user_embeddings.npy").is_file() and (export_dir / "user_ids.txt").is_file():
        U = np.load(export_dir / "user_embeddings.npy")
        user_ids = np.array((export_dir / "user_ids.txt").read_text().splitlines())
    elif run is not None:
        from mmrec.tower import load_user_vectors
        e = load_user_vectors(run)
        U, user_ids = e.vectors, e.ids.astype(str)
    else:
        raise FileNotFoundError(f"{export_dir}: no user_embeddings.npy and no run to read the users from")
    import pandas as pd
    at = pd.Index(user_ids).get_indexer([str(u) for u in users])
    missing = [u for u, p in zip(users, at) if p < 0]
    if missing:
        raise DataError(f"--users: unknown user id(s) {missing[:5]} (not in the run's users)")
    exclude = None
    if exclude_seen:
        if run is None or not (run / "split.npz").is_file():
            raise FileNotFoundError(f"--exclude-seen: no run with split.npz for {source} (its training "
                                    f"interactions say what each user has seen)")
        from mmrec.data.split import Split
        split = Split.load(run / "split.npz")
        rows = pd.Index(split.user_ids.astype(str)).get_indexer([str(u) for u in users])
        train = split.positives["train"]
        exclude = [split.item_ids[train.row(int(r))].astype(str) if r >= 0 else [] for r in rows]
    return index.search(U[at], k, exclude=exclude, **params).to_frame([str(u) for u in users])
