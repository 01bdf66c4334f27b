"""The one settings object, read from the environment by the API, the workers and migrations."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # A file holding the first admin's token (the compose stack's `secrets` service writes it):
    # `decouple migrate` stores it as the token of `admin`, once (service.tokens.ensure_token).
    admin_token_file: Path | None = Field(None, validation_alias="DECOUPLE_ADMIN_TOKEN_FILE")

    @property
    def state_dir(self) -> Path:
        """Where Ray's temp and results folders live: under the project's data directory."""
        return self.data_dir.resolve() / "ray"


@lru_cache
def get_settings() -> Settings:
    return Settings()
