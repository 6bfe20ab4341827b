"""Fixtures shared by the test files that compose real configs."""

import pytest

from gradlab.config import plain
from gradlab.launch import compose_all


@pytest.fixture
def compose(tmp_path):
    """A resolved run config from command-line overrides, recording under tmp_path, silent."""

    def compose(*overrides):
        return plain(compose_all([["progress=none", f"results_root={tmp_path}", *overrides]])[0])

    return compose
