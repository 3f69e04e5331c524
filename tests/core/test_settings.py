from __future__ import annotations

from pathlib import Path

import pytest

from qamqor.core.settings import Settings


def test_environment_variables_and_toml_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "qamqor.toml").write_text(
        'dicom_ae_title = "OBLAST_PACS"\nhttp_port = 9000\n'
        '[remote_aes.VIEWER]\nhost = "10.0.0.5"\nport = 104\n'
    )
    monkeypatch.setenv("QAMQOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QAMQOR_HTTP_PORT", "9100")  # the environment wins over the file
    settings = Settings()
    assert settings.dicom_ae_title == "OBLAST_PACS"
    assert settings.http_port == 9100
    assert settings.remote_aes["VIEWER"].port == 104
    assert settings.effective_database_url.endswith(f"{tmp_path.resolve()}/qamqor.db")


def test_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("QAMQOR_DATA_DIR", "QAMQOR_CONFIG", "QAMQOR_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.http_port, settings.dicom_port, settings.dicom_ae_title) == (
        8042,
        11112,
        "QAMQOR",
    )


def test_production_refuses_a_missing_secret() -> None:
    with pytest.raises(ValueError, match="QAMQOR_SECRET_KEY"):
        Settings(environment="production")


def test_bad_ae_title_is_refused() -> None:
    with pytest.raises(ValueError, match="AE title"):
        Settings(dicom_ae_title="A_TITLE_THAT_IS_FAR_TOO_LONG")


def test_development_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = settings.session_secret()
    assert len(first) >= 32
    assert Settings(data_dir=tmp_path).session_secret() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
