"""The token file Ray 2.60 writes for a local head is readable by everyone;
`pipeline.cluster.connect` makes it private to its user."""

from __future__ import annotations

import stat

from pipeline import cluster


def test_the_token_file_is_made_private(tmp_path, monkeypatch):
    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)
    monkeypatch.setattr(cluster, "RAY_TOKEN_FILE", token)
    cluster._make_token_private()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_a_missing_token_file_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "RAY_TOKEN_FILE", tmp_path / "none")
    cluster._make_token_private()
    assert not (tmp_path / "none").exists()
