"""mmrec's shipped configuration files, as package data.

The YAML here is data, not code: `configs/base.yaml` (the sections every run has), the run
configs (`ml100k.yaml`, ...), `grids/`, `accelerate/`, and `defaults/` (the defaults of each
head, modality, encoder type and of the synthetic world; see `mmrec/config.py`).

Why a package: the design card fixes `configs/` at the top level of the repository, next to
`mmrec/` and `encoders/`, and a package is the way setuptools ships such a folder in a wheel
(pyproject.toml lists it in `[tool.setuptools.packages.find]` and its YAML in
`[tool.setuptools.package-data]`). `mmrec.config` finds the folder through this module
(`Path(configs.__file__).parent`), so a non-editable install reads the same files as a
checkout. Nothing is imported here.
"""
