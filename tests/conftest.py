"""Fixtures shared by the test files.

Tests marked `cuda` state what gradlab does on a GPU and are skipped without one. Every other
test states what it does on the CPU and runs there on every machine: on a machine with a GPU,
`device=auto` resolves to the CPU in them and in the processes they start, so the suite means
the same thing everywhere.
"""

import os

import pytest
import torch

from gradlab.config import plain
from gradlab.launch import compose_all

GPU = torch.cuda.is_available()  # read before any test hides the GPU

# Under pytest-xdist (a worker per core), each worker and every process a test starts computes on one
# thread: a second intra-op thread would spin on the core that another process is using.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not GPU:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def cpu_unless_marked_cuda(request, monkeypatch):
    """Outside `cuda` tests, this process and the processes a test starts see no GPU."""
    if request.node.get_closest_marker("cuda") or not GPU:
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


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
