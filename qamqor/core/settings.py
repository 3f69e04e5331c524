"""One settings object for the whole application.

Values come, in this order of precedence, from keyword arguments, ``QAMQOR_*`` environment
variables, and a TOML file (``QAMQOR_CONFIG``, else ``<data dir>/qamqor.toml`` when it exists).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from qamqor.core.timezone import zone_named

DEFAULT_DATA_DIR = Path("qamqor-data")


#: What a known DICOM node may ask of Qamqor (C-ECHO is always allowed): send instances
#: (C-STORE), query (C-FIND), retrieve (C-MOVE and C-GET).
DicomPermission = Literal["store", "query", "retrieve"]
ALL_DICOM_PERMISSIONS: frozenset[DicomPermission] = frozenset({"store", "query", "retrieve"})


class RemoteAE(BaseModel):
    """A DICOM node Qamqor may talk to (C-MOVE destination, known sender)."""

    host: str = Field(min_length=1)
    """Where C-MOVE sends to; also, unless ``networks`` says otherwise, the only address it
    may call from (a name is resolved)."""
    port: int = Field(ge=1, le=65535)
    networks: list[str] | None = None
    """Addresses and networks it may call from (``10.0.0.5``, ``10.0.0.0/24``, ``fd00::/8``);
    unset: ``host``'s addresses. An empty list: it is only a C-MOVE destination."""
    permissions: set[DicomPermission] = set(ALL_DICOM_PERMISSIONS)
    """What it may ask for: ``store``, ``query``, ``retrieve`` (all three unless narrowed)."""

    @field_validator("networks")
    @classmethod
    def _valid_networks(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        networks = []
        for item in value:
            try:
                networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24)"
                ) from None
        return networks


class ScreeningProgram(BaseModel):
    """A cancer-screening programme: who is eligible, how often, and where it is done."""

    code: str = Field(pattern=r"^[a-z][a-z0-9_]{1,39}$")
    sex: Literal["male", "female", "any"] = "any"
    min_age: int = Field(ge=0, le=120)
    max_age: int = Field(ge=0, le=120)
    """Inclusive: eligible from the ``min_age`` birthday until the day before ``max_age + 1``."""
    interval_months: int = Field(ge=1, le=240)
    specialty: str
    """The specialty whose slots serve the programme (e.g. ``mammography``)."""

    @model_validator(mode="after")
    def _ages_in_order(self) -> ScreeningProgram:
        if self.min_age > self.max_age:
            raise ValueError("min_age must not exceed max_age")
        return self


#: Mammography for women aged 40-70 every two years (the national screening programme).
DEFAULT_SCREENING_PROGRAMS = [
    ScreeningProgram(
        code="mammography",
        sex="female",
        min_age=40,
        max_age=70,
        interval_months=24,
        specialty="mammography",
    )
]


def _toml_path() -> Path | None:
    explicit = os.environ.get("QAMQOR_CONFIG")
    if explicit:
        return Path(explicit)
    data_dir = Path(os.environ.get("QAMQOR_DATA_DIR", DEFAULT_DATA_DIR))
    candidate = data_dir / "qamqor.toml"
    return candidate if candidate.is_file() else None


class Settings(BaseSettings):
    """Qamqor settings. Every field can be set as ``QAMQOR_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="QAMQOR_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""
    """SQLAlchemy URL; empty means the embedded SQLite file ``<data dir>/qamqor.db``."""

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8042, ge=1, le=65535)
    cors_origins: list[str] = []
    """Origins allowed to call the APIs from a browser (e.g. an OHIF viewer)."""

    dicom_host: str = "127.0.0.1"
    """Where the DICOM port listens: this machine only by default, ``0.0.0.0`` for every
    interface."""
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    dicom_ae_title: str = "QAMQOR"
    remote_aes: dict[str, RemoteAE] = {}
    """Known DICOM nodes by AE title: C-MOVE destinations and allowed senders, each from its
    own address (or networks) only, with its permissions."""
    dicom_accept_unknown_aes: bool = False
    """Accept associations from AE titles not in ``remote_aes`` (off: only known nodes). A
    known AE title from another address than its own is refused all the same."""
    dicom_max_associations: int = Field(default=32, ge=1)
    """Associations open at once, all acceptor processes together; one more is rejected
    (transient, local limit exceeded). Connections beyond twice this are closed at once."""
    dicom_max_associations_per_peer: int = Field(default=8, ge=1)
    """Associations open at once from one IP address, rejected likewise beyond it."""
    dicom_tls_cert: Path | None = None
    """DICOM TLS: the node's certificate (PEM, may hold the chain). With ``dicom_tls_key``,
    the DICOM port speaks TLS only; unset, no TLS."""
    dicom_tls_key: Path | None = None
    """The certificate's private key (PEM, unencrypted)."""
    dicom_tls_ca: Path | None = None
    """CA certificates (PEM) that client certificates are checked against."""
    dicom_tls_require_client_cert: bool = False
    """Refuse TLS clients without a certificate signed by ``dicom_tls_ca``."""
    dicom_processes: int = Field(default=0, ge=0, le=64)
    """Processes accepting DICOM associations on the port; 0: one per CPU core (at most 8)."""
    dicom_fast_path: Literal["auto", "off"] = "auto"
    """``auto``: the DICOM node's fast path (``qamqor/pacs/dimse/fastpath.py``) with the
    pynetdicom release it was written for (3.0.4), pynetdicom's own handlers with any other;
    ``off``: pynetdicom's own always. PDUs are bounded and the limits hold on both."""
    study_stable_seconds: float = Field(default=3.0, gt=0)
    """A study with no new instance for this long is announced as stable (complete)."""
    stow_max_request_bytes: int = Field(default=2 << 30, ge=1)
    """A STOW-RS request larger than this is refused (413) before its body is read."""
    stow_max_part_bytes: int = Field(default=1 << 30, ge=1)
    """A STOW-RS part larger than this is refused (0xA700, out of resources) and not kept:
    its bytes are read past, the other parts are stored."""

    redis_url: str = ""
    """With a Redis URL, jobs go through Redis and any number of ``qamqor worker`` processes on
    other hosts run them; without one, jobs live in ``<data dir>/jobs.db`` (no server)."""
    job_workers: int = Field(default=2, ge=0)
    """Worker threads inside ``qamqor serve`` (0: leave jobs to ``qamqor worker``)."""
    ai_stale_seconds: float = Field(default=60.0, ge=1)
    """An AI analysis whose worker has not beaten its heartbeat for this long is re-queued (the
    worker died); heartbeats come every quarter of it."""
    ai_threads: int = Field(default=2, ge=1, le=64)
    """onnxruntime threads per analysis (CPU)."""

    secret_key: SecretStr = SecretStr("")
    """Signs session cookies. Empty in development: a random key kept in the data dir."""
    session_timeout_minutes: int = Field(default=30, ge=1)
    login_max_failures: int = Field(default=5, ge=1)
    """Wrong passwords for one username (pages and HTTP Basic) before sign-in is refused..."""
    login_lockout_minutes: int = Field(default=15, ge=1)
    """...for this long after the oldest of them; a successful sign-in starts the count anew."""
    reading_claim_minutes: int = Field(default=20, ge=1, le=24 * 60)
    """A radiologist's claim on a study (others see who reads it) lapses after this long
    without activity in the viewer."""
    render_cache_max_mb: int = Field(default=4096, ge=0)
    """Disk kept for rendered images (``<data dir>/cache/rendered``): a study opens at once
    the second time, and at arrival its images are decoded ahead. 0: no cache."""
    timezone: str = "Asia/Almaty"
    """The region's IANA time zone: times are shown in it where a facility names none."""

    screening_programs: list[ScreeningProgram] = DEFAULT_SCREENING_PROGRAMS
    """Cancer-screening programmes; mammography (women 40-70, every 2 years) by default."""

    sms_gateway_url: str = ""
    """Where one-time codes are sent: an HTTP endpoint that takes ``{"to": ..., "text": ...}``
    as JSON (bearer ``sms_gateway_token``). Empty: demo mode, the kiosk shows the code on its
    screen (for demonstrations only; never in production)."""
    sms_gateway_token: SecretStr = SecretStr("")
    otp_ttl_seconds: int = Field(default=300, ge=30, le=3600)
    otp_max_attempts: int = Field(default=3, ge=1, le=10)
    kiosk_idle_seconds: int = Field(default=60, ge=10, le=3600)
    """A kiosk screen left alone this long returns to the start; the resident's session ends."""

    shared_data_dir: Path = Path("../shared/data")
    """Real imaging data used by training and by the tests."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone_named(value)
        return value

    @field_validator("dicom_ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        value = value.strip()
        if not value or len(value) > 16 or "\\" in value:
            raise ValueError("an AE title has 1 to 16 characters and no backslash")
        return value

    @field_validator("remote_aes")
    @classmethod
    def _valid_remote_titles(cls, value: dict[str, RemoteAE]) -> dict[str, RemoteAE]:
        titles = {}
        for title, remote in value.items():
            stripped = title.strip()
            if not stripped or len(stripped) > 16 or "\\" in stripped:
                raise ValueError(
                    f"AE title {title!r}: an AE title has 1 to 16 characters and no backslash"
                )
            titles[stripped] = remote
        return titles

    @field_validator("dicom_tls_cert", "dicom_tls_key", "dicom_tls_ca", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise ValueError("DICOM TLS needs both QAMQOR_DICOM_TLS_CERT and QAMQOR_DICOM_TLS_KEY")
        if self.dicom_tls_ca is not None and self.dicom_tls_cert is None:
            raise ValueError("QAMQOR_DICOM_TLS_CA is set but DICOM TLS is off (no certificate)")
        if self.dicom_tls_require_client_cert and self.dicom_tls_ca is None:
            raise ValueError(
                "QAMQOR_DICOM_TLS_REQUIRE_CLIENT_CERT needs QAMQOR_DICOM_TLS_CA to check them"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> Settings:
        if self.environment == "production" and len(self.secret_key.get_secret_value()) < 32:
            raise ValueError("QAMQOR_SECRET_KEY must be set (32+ characters) in production")
        return self

    @property
    def sms_demo_mode(self) -> bool:
        """No SMS gateway configured: one-time codes are shown on the kiosk's screen."""
        return not self.sms_gateway_url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_path()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    # Derived paths -------------------------------------------------------------------------
    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def render_cache_dir(self) -> Path:
        return self.data_dir / "cache" / "rendered"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'qamqor.db').resolve()}"

    def session_secret(self) -> str:
        """The cookie-signing key: from settings, or a random one kept in the data dir."""
        configured = self.secret_key.get_secret_value()
        if configured:
            return configured
        key_file = self.data_dir / "secret_key"
        if not key_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        return key_file.read_text().strip()


@lru_cache(maxsize=1)
def get_settings(**overrides: Any) -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings``)."""
    return Settings(**overrides)
