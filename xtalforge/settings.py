"""Settings for xtalforge: one object, read from ``XTALFORGE_*`` environment variables.

Every environment variable the package reads is a field of :class:`XtalforgeSettings`, as jobflow
keeps its own in ``JobflowSettings``. Set ``XTALFORGE_STORE=mongodb://...`` to point campaigns at a
MongoDB server, ``XTALFORGE_HOME`` to move the embedded campaigns directory, and so on.

Settings are read when :func:`get_settings` is called, not at import, so a variable exported after
``import xtalforge`` (a worker's ``pre_run``, a test's ``monkeypatch.setenv``) takes effect.
Variables that belong to other packages (``PMG_VASP_PSP_DIR``, ``JOBFLOW_*``) stay theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_HOME", "ENV_PREFIX", "XtalforgeSettings", "get_settings"]

#: Prefix of every xtalforge environment variable.
ENV_PREFIX = "XTALFORGE_"
#: Embedded campaigns directory when ``XTALFORGE_HOME`` is not set.
DEFAULT_HOME = Path("xtalforge_campaigns")


class XtalforgeSettings(BaseSettings):
    """Settings for xtalforge, each field overridable by ``XTALFORGE_<FIELD>``.

    Examples
    --------
    >>> XtalforgeSettings(STORE="montydb:///tmp/store").STORE
    'montydb:///tmp/store'
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore", validate_default=True
    )

    STORE: str = Field(
        "",
        description=(
            "Campaign store setting used when a command is not given --store: 'embedded' (or "
            "empty) for a MontyStore under the campaign directory, a mongodb:// URI, a "
            "montydb:///path, or a path to a JobStore YAML/JSON file. Under jobflow-remote "
            "workers it is required, so that jobs can reach the campaign documents."
        ),
    )
    HOME: Path | None = Field(
        None,
        description=(
            "Directory of embedded campaigns (default ./xtalforge_campaigns for the CLI, the "
            "working directory for jobflow-remote workers)."
        ),
    )
    CACHE: Path = Field(
        Path.home() / ".cache" / "xtalforge",
        description="Local cache root; checkpoints are cached under <CACHE>/checkpoints.",
    )
    MP_START: Literal["fork", "spawn", "forkserver"] | None = Field(
        None,
        description=(
            "Start method of the process pool used for CPU metrics (AMD, SMACT); default fork "
            "where available, else spawn."
        ),
    )
    DEBUG: bool = Field(
        False, description="Show full tracebacks instead of one-line CLI errors."
    )
    CP2K_SHARE: Path = Field(
        Path("/usr/share/cp2k"),
        description=(
            "CP2K's own data directory (BASIS_MOLOPT, GTH_POTENTIALS); Debian's cp2k package "
            "installs it in /usr/share/cp2k."
        ),
    )
    MONGO_TIMEOUT_S: float = Field(
        5.0,
        gt=0,
        description=(
            "Seconds to wait for an unreachable MongoDB server before a one-line error "
            "(pymongo's serverSelectionTimeoutMS; a URI that sets that option wins)."
        ),
    )

    @field_validator("HOME", "MP_START", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if value == "" else value

    @field_validator("DEBUG", mode="before")
    @classmethod
    def _flag(cls, value):
        if isinstance(value, str):
            return value.strip().lower() not in ("", "0", "false", "no", "off")
        return value

    @field_validator("CACHE", "HOME", "CP2K_SHARE")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(value).expanduser()

    @property
    def campaigns_home(self) -> Path:
        """Embedded campaigns directory (``HOME`` or ./xtalforge_campaigns)."""
        return self.HOME if self.HOME is not None else DEFAULT_HOME


def get_settings(**overrides) -> XtalforgeSettings:
    """Return the settings read from the environment now, with ``overrides`` applied.

    Parameters
    ----------
    **overrides
        Field values that take precedence over the environment.

    Returns
    -------
    XtalforgeSettings
        A fresh settings object.
    """
    return XtalforgeSettings(**overrides)
