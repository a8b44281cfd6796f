"""The data path at MovieLens-25M size, stage by stage, against pyarrow's bare CSV read.

Writes a SYNTHETIC GroupLens directory of ML-25M's size (162,541 users, 62,423 movies,
25,000,095 ratings; the same columns and value ranges: half-star ratings 0.5-5.0, integer
timestamps, titles with a year, pipe-separated genres; no signal in it) once under --work, then
times in one process:

  bare      pyarrow.csv.read_csv of ratings.csv (the floor: parsing the file, no checks; the
            fastest of three reads, so a loaded machine makes the ratio worse, not better)
  read      mmrec's ml25m reader into the canonical tables (every row checked; skips reported)
  split     the cold-item split (implicit positives, users with too few ratings, items)
  pairs     the training (user, item) pairs
  order     the first epoch's order (EpochSampler)

and prints each stage's seconds, the whole path / bare read ratio and the peak RSS against the
in-memory ratings table (pyarrow's table size). Targets (issue 18): path <= 2x bare, peak RSS
<= 3x the table.

    python scripts/bench_data.py --work /tmp/ml25m-bench          # full size
    python scripts/bench_data.py --work /tmp/small --scale 0.1     # a tenth (quick iteration only)
    python scripts/bench_data.py --work /tmp/small --ratings 1000000 --users 8000 --movies 4000

The load average is printed with the figures: other jobs on the machine slow pyarrow's
two-threaded bare read most, so the ratio is only comparable between quiet runs.
"""
from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western"]


def peak_rss_mib() -> float:
    """The process's peak RSS since start or since the last reset_peak_rss()."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024.0


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, so the data path's peak is not the bench's
    own (writing the folder, the reference read)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def write_grouplens(root: Path, n_users: int, n_movies: int, n_ratings: int, seed: int = 0) -> None:
    """The SYNTHETIC directory, written in chunks (ratings.csv is ~650 MB at full size)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    years = rng.integers(1900, 2020, n_movies)
    genres = ["|".join(sorted(set(rng.choice(GENRES, rng.integers(1, 4)).tolist()))) for _ in range(n_movies)]
    movie_ids = np.arange(1, n_movies + 1)
    pacsv.write_csv(pa.table({"movieId": movie_ids, "title": [f"Movie {m} ({y})" for m, y in zip(movie_ids, years)],
                              "genres": genres}), root / "movies.csv")
    pacsv.write_csv(pa.table({"movieId": movie_ids, "imdbId": [f"{m:07d}" for m in movie_ids],
                              "tmdbId": movie_ids + 100000}), root / "links.csv")
    # Every user rates distinct movies: (user, movie) unique, and the rows in (userId, movieId)
    # order, as GroupLens lays out ratings.csv.
    per_user = np.full(n_users, n_ratings // n_users)
    per_user[: n_ratings - per_user.sum()] += 1
    chunk_users = max(1, n_users // 50)
    opts = pacsv.WriteOptions(include_header=True)
    with pacsv.CSVWriter(root / "ratings.csv", pa.schema([("userId", pa.int64()), ("movieId", pa.int64()),
                                                           ("rating", pa.float64()), ("timestamp", pa.int64())]),
                         write_options=opts) as w:
        for u0 in range(0, n_users, chunk_users):
            us = np.arange(u0, min(u0 + chunk_users, n_users))
            counts = per_user[us]
            users = np.repeat(us + 1, counts)
            # distinct movies per user: a random offset and stride walk over the catalogue
            offs = np.repeat(rng.integers(0, n_movies, len(us)), counts)
            k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            movies = (offs + k * 7919) % n_movies + 1
            movies = movies[np.lexsort((movies, users))]
            ratings = rng.integers(1, 11, len(users)) / 2.0
            ts = 789_652_009 + np.sort(rng.integers(0, 785_000_000, len(users)))
            w.write_table(pa.table({"userId": users, "movieId": movies, "rating": ratings, "timestamp": ts}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="folder for the SYNTHETIC GroupLens directory (reused)")
    ap.add_argument("--users", type=int, default=162_541)
    ap.add_argument("--movies", type=int, default=62_423)
    ap.add_argument("--ratings", type=int, default=25_000_095)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply users, movies and ratings (e.g. 0.1 for quick iteration; figures at 1.0)")
    args = ap.parse_args(argv)
    if args.scale != 1.0:
        args.users, args.movies, args.ratings = (max(1, int(round(v * args.scale)))
                                                 for v in (args.users, args.movies, args.ratings))
    root = Path(args.work) / f"ml25m-synthetic-v2-{args.users}-{args.movies}-{args.ratings}"
    if not (root / "ratings.csv").exists():
        t = time.perf_counter()
        write_grouplens(root, args.users, args.movies, args.ratings)
        print(f"wrote the SYNTHETIC GroupLens folder {root} in {time.perf_counter() - t:.1f} s", flush=True)
    import pyarrow as pa
    import pyarrow.csv as pacsv
    bare = float("inf")
    for _ in range(3):   # the fastest of three: the floor the ratio is measured against
        t = time.perf_counter()
        table = pacsv.read_csv(root / "ratings.csv")
        bare = min(bare, time.perf_counter() - t)
    table_mib = table.nbytes / 2 ** 20
    n_rows = table.num_rows
    del table
    gc.collect()
    pa.default_memory_pool().release_unused()   # the reference's own table is not ours to count

    from mmrec.config import load_config
    from mmrec.data.batches import EpochSampler
    from mmrec.data.readers import read_dataset
    from mmrec.data.split import make_split
    from mmrec.plugins import load_plugins
    load_plugins()   # a fixed start-up cost of every run (imports), not part of the data path
    reset = reset_peak_rss()
    base_rss = rss_mib()
    cfg = load_config("configs/ml25m_text.yaml", [f"data.path={root}"])
    times = {}
    t = time.perf_counter()
    ds = read_dataset(cfg["data"])
    times["read"] = time.perf_counter() - t
    t = time.perf_counter()
    split = make_split(ds, cfg["data"], cfg["split"])
    times["split"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs = split.train_pairs()
    times["pairs"] = time.perf_counter() - t
    t = time.perf_counter()
    sampler = EpochSampler(len(pairs), int(cfg["seed"]))
    sampler.set_epoch(0)
    order = sampler.order()
    times["order"] = time.perf_counter() - t
    total = sum(times.values())
    peak = peak_rss_mib()

    print(f"SYNTHETIC ML-25M-size data: {n_rows:,} ratings, {args.users:,} users, {args.movies:,} movies; "
          f"{len(ds.interactions):,} interactions kept, {len(pairs):,} training pairs, {len(order[0]):,} in the order")
    print(f"bare pyarrow read of ratings.csv: {bare:.2f} s; in-memory ratings table {table_mib:.0f} MiB")
    for k, v in times.items():
        print(f"  {k:6s} {v:7.2f} s")
    print(f"whole path {total:.2f} s = {total / bare:.2f}x the bare read (target <= 2x)")
    print(f"peak RSS {peak:.0f} MiB = {peak / table_mib:.2f}x the ratings table (target <= 3x); "
          f"{base_rss:.0f} MiB before reading (the imports: torch, pandas, pyarrow)"
          + ("" if reset else "; peak not reset: it includes the reference read"))
    try:
        with open("/proc/loadavg") as f:
            print(f"load average (1, 5, 15 min): {' '.join(f.read().split()[:3])}")
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
