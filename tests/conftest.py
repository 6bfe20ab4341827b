"""Fixtures shared by the test files."""

import os

import pytest

from gradlab.config import plain
from gradlab.launch import compose_all


@pytest.fixture(autouse=True)
def no_wandb_credentials(tmp_path_factory, monkeypatch):
    """Every test sees a machine without W&B credentials (so W&B stays offline) and leaks no
    W&B variables (an in-process run sets WANDB_SERVICE, which subprocesses would inherit)."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    for var in [v for v in os.environ if v.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(var, raising=False)
    yield
    for var in [v for v in os.environ if v.startswith("WANDB_")]:
        del os.environ[var]


@pytest.fixture
def compose(tmp_path):
    """A resolved run config from command-line overrides, recording under tmp_path, silent."""

    def compose(*overrides):
        return plain(compose_all([["progress=none", f"results_root={tmp_path}", *overrides]])[0])

    return compose
