"""MovieLens stand-in trailers (`data.standin_trailers: true`): a rendered trailer per item, drawn
from its genres and year, so video + text runs on real ratings. They are labelled as stand-ins
(`trailer_kind`) everywhere, never passed off as real trailers."""
from __future__ import annotations

from pathlib import Path

from mmrec.data.pipeline import register_dataset_hook
from mmrec.data.tables import DataError, MultiModalDataset
from mmrec.synthetic.render import STANDIN_NOTE, render_standin_trailers


@register_dataset_hook("standin_trailers")
def add_standin_trailers(ds: MultiModalDataset, data_cfg: dict) -> None:
    """Give every item a rendered STAND-IN trailer drawn from its genres and year (not a real
    trailer; `trailer_kind` says so), so video + text runs on real ratings (MovieLens-100k).
    Rendered once into the cache; a re-run renders only what is missing."""
    if "genres" not in ds.items.columns and "year" not in ds.items.columns:
        raise DataError("data.standin_trailers: the items have neither 'genres' nor 'year' to draw from")
    out = Path(data_cfg["cache_dir"]) / "standin_trailers" / ds.name
    paths = render_standin_trailers(ds.items, out, workers=2, progress=True)
    ds.items["trailer"] = [str(p.resolve()) for p in paths]
    ds.items["trailer_kind"] = STANDIN_NOTE


