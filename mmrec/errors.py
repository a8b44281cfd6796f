"""The error a user's config raises: shared by config resolution (mmrec/config.py) and the checks
of a resolved config (mmrec/config_checks.py), which must not import each other."""


class ConfigError(ValueError):
    """A config problem, worded for the person who wrote the config."""
