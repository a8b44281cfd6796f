import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_configure(config):
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One data cache (processed tables, tokens, frame stores) shared by the whole session."""
    return str(tmp_path_factory.mktemp("mmrec_cache"))


@pytest.fixture(scope="session")
def tiny_overrides(cache_dir):
    return [f"data.cache_dir={cache_dir}"]


@pytest.fixture(scope="session")
def tiny_cfg(tiny_overrides):
    from mmrec.config import load_config
    return load_config("configs/tiny.yaml", tiny_overrides)


@pytest.fixture(scope="session")
def tiny_prepared(tiny_cfg):
    from mmrec.data.pipeline import prepare
    return prepare(tiny_cfg)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_overrides):
    """A finished tiny training run on real MovieLens-100k, shared by export/evaluate/CLI tests."""
    from mmrec.config import load_config
    from mmrec.training.trainer import train
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config("configs/tiny.yaml", tiny_overrides + [f"run_dir={run_dir}"])
    run_dir, metrics = train(cfg)
    return run_dir, metrics
