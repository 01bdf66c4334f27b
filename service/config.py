"""The one settings object, read from the environment by the API, the workers and migrations."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The names a browser on this machine uses for a server on loopback.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str = Field(
        "sqlite:///./decouple.db", validation_alias="DECOUPLE_DATABASE_URL"
    )
    ray_address: str | None = Field(None, validation_alias="RAY_ADDRESS")
    api_url: str = Field("http://127.0.0.1:8000", validation_alias="DECOUPLE_API_URL")
    token: str | None = Field(None, validation_alias="DECOUPLE_TOKEN")
    auth: Literal["off", "required"] = Field("off", validation_alias="DECOUPLE_AUTH")
    max_trials: int = Field(20_000, gt=0, validation_alias="DECOUPLE_MAX_TRIALS")
    data_dir: Path = Field(Path("./data"), validation_alias="DECOUPLE_DATA_DIR")
    lease_seconds: float = Field(60.0, gt=0, validation_alias="DECOUPLE_LEASE_SECONDS")
    #: Trials a non-admin user may have queued or running at once, over all their studies.
    max_queued_trials: int = Field(100_000, gt=0, validation_alias="DECOUPLE_MAX_QUEUED_TRIALS")
    #: Trials x epochs one study may ask for (a 20,000-trial study of 100 epochs is 2,000,000).
    max_trial_epochs: int = Field(2_000_000, gt=0, validation_alias="DECOUPLE_MAX_TRIAL_EPOCHS")
    #: Host names the API answers to, comma-separated (``*``: any). Unset: the loopback names
    #: when auth is off (a browser tricked by DNS rebinding sends another name), any name when
    #: auth is required (a rebinding page has no token to send). See docs/security.md.
    allowed_hosts: str | None = Field(None, validation_alias="DECOUPLE_ALLOWED_HOSTS")
    #: Seconds a client has to send a whole request (headers and body) once its connection is
    #: open or its previous answer sent; slower ones get 408 and are disconnected.
    request_timeout: float = Field(20.0, gt=0, validation_alias="DECOUPLE_REQUEST_TIMEOUT")
    #: A file holding the first admin's token (the compose stack's `secrets` service writes it):
    #: `decouple migrate` stores it as the token of `admin`, once (service.tokens.ensure_token).
    admin_token_file: Path | None = Field(None, validation_alias="DECOUPLE_ADMIN_TOKEN_FILE")

    @property
    def trusted_hosts(self) -> list[str]:
        """:attr:`allowed_hosts` as a list, the default filled in."""
        if self.allowed_hosts is None:
            return list(LOOPBACK_HOSTS) if self.auth == "off" else ["*"]
        hosts = [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]
        return hosts or ["*"]

    @property
    def state_dir(self) -> Path:
        """Where Ray's temp and results folders live: under the project's data directory."""
        return self.data_dir.resolve() / "ray"


@lru_cache
def get_settings() -> Settings:
    return Settings()
