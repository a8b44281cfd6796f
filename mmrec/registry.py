"""Name -> object registries (timm-style): config strings name encoders, fusions, readers,
content builders, heads and baselines. One class for all of them, defined in the lowest layer
(`encoders.registry`, which imports no torch)."""
from encoders.registry import Registry  # noqa: F401
