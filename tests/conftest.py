"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def ast_home(tmp_path, monkeypatch):
    """An empty checkpoint cache for this test (``$AST_AUDIO_HOME``)."""
    home = tmp_path / "ast-home"
    home.mkdir()
    monkeypatch.setenv("AST_AUDIO_HOME", str(home))
    monkeypatch.delenv("AST_AUDIO_OFFLINE", raising=False)
    return home
