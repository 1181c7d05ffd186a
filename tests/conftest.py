"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one thread, and a busy machine cannot stall them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ast_home(tmp_path, monkeypatch):
    """An empty checkpoint cache for this test (``$AST_AUDIO_HOME``)."""
    home = tmp_path / "ast-home"
    home.mkdir()
    monkeypatch.setenv("AST_AUDIO_HOME", str(home))
    monkeypatch.delenv("AST_AUDIO_OFFLINE", raising=False)
    return home
