"""Writes a small MovieLens-25M directory in exactly the GroupLens format (plus the optional
synopsis CSV and ml-youtube.csv), so the reader is tested on the real layout."""
from __future__ import annotations

from pathlib import Path

MOVIES = [
    # movieId, title, genres (GroupLens quotes titles that contain commas)
    (1, "Toy Story (1995)", "Adventure|Animation|Children|Comedy|Fantasy"),
    (2, "Jumanji (1995)", "Adventure|Children|Fantasy"),
    (3, '"Shawshank Redemption, The (1994)"', "Crime|Drama"),
    (4, "Heat (1995)", "Action|Crime|Thriller"),
    (5, "Untitled Project", "(no genres listed)"),
    (6, "Babylon 5 (1993-1998)", "Sci-Fi"),
]
LINKS = [(1, "0114709", "862"), (2, "0113497", "8844"), (3, "0111161", "278"),
         (4, "0113277", "949"), (5, "9999999", ""), (6, "0105946", "")]
SYNOPSES = [(1, "A cowboy doll is threatened by a new spaceman figure."),
            (3, "Two imprisoned men bond over a number of years.")]
YOUTUBE = [("K26_sDKnvMU", 1, "Toy Story"), ("3LPANjHlPxo", 2, "Jumanji"), ("2GfZl4kuVNI", 4, "Heat")]


def ratings_rows(n_users: int = 4, per_user: int = 5):
    rows = []
    t = 1_100_000_000
    for u in range(1, n_users + 1):
        for k in range(per_user):
            m = (u + k) % 6 + 1
            rows.append((u, m, [0.5, 3.5, 4.0, 5.0, 2.0][k % 5], t))
            t += 17
    return rows


def write_ml25m(root: Path, ratings=None, ratings_text: str | None = None, synopsis=True,
                youtube=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "movies.csv").write_text("movieId,title,genres\n" +
                                     "".join(f"{m},{t},{g}\n" for m, t, g in MOVIES))
    (root / "links.csv").write_text("movieId,imdbId,tmdbId\n" +
                                    "".join(f"{m},{i},{t}\n" for m, i, t in LINKS))
    if ratings_text is None:
        rows = ratings if ratings is not None else ratings_rows()
        ratings_text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in rows)
    (root / "ratings.csv").write_text(ratings_text)
    if synopsis:
        (root / "synopsis.csv").write_text("movieId,synopsis\n" + "".join(f'{m},"{s}"\n' for m, s in SYNOPSES))
    if youtube:
        (root / "ml-youtube.csv").write_text("youtubeId,movieId,title\n" +
                                             "".join(f"{y},{m},{t}\n" for y, m, t in YOUTUBE))
    return root
