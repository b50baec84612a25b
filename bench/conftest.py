"""pytest-benchmark benchmarks live in ``bench/test_*.py``. They are collected only when
a path inside ``bench/`` is named on the command line (``pytest bench/``), so neither
``pytest tests/`` nor a bare ``pytest`` from the repo root runs them."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _named_explicitly(config):
    for arg in config.args:
        path = Path(str(arg).split("::")[0]).resolve()
        if path == _HERE or _HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if (collection_path.name.startswith("test_") and collection_path.suffix == ".py"
            and not _named_explicitly(config)):
        return True
    return None
