"""The research test-bed, apart from the product: a synthetic rendered-trailer world with a known
oracle (`world`), the trailer renderer (`render`), MovieLens stand-in trailers (`standin`) and the
oracle baseline.

Nothing in the core imports this package. It is a plug-in (`mmrec.plugins`, declared as an entry
point in pyproject.toml) and registers itself through the same public registries a user's
plug-in would use: the `world` reader (`data.source: world`), the `oracle` baseline
(`eval.baselines`) and the `standin_trailers` dataset hook (`data.standin_trailers: true`).
"""
from mmrec.synthetic import oracle, standin, world  # noqa: F401  (each registers what it provides)
