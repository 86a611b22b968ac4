"""The project home: one folder that holds every tool's state, so nothing lands in ~ or on the net."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The real data: $RQSID_SHARED_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("RQSID_SHARED_DATA")
    return Path(env) if env else repo_root().parent / "shared" / "data"


@dataclass(frozen=True)
class ProjectHome:
    root: Path

    @classmethod
    def default(cls) -> ProjectHome:
        return cls(Path(os.environ.get("RQSID_HOME") or Path.cwd() / ".rqsid").resolve())

    @property
    def prefect(self) -> Path:
        return self.root / "prefect"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def indexes(self) -> Path:
        return self.root / "indexes"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def ensure(self) -> ProjectHome:
        for p in (self.root, self.prefect, self.mlflow_artifacts, self.data, self.indexes, self.cache):
            p.mkdir(parents=True, exist_ok=True)
        return self

    def environment(self) -> dict[str, str]:
        """Variables that keep Prefect, MLflow, GX and Hugging Face inside the home and offline."""
        return {
            "RQSID_HOME": str(self.root),
            "PREFECT_HOME": str(self.prefect),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_DISABLE_TELEMETRY": "true",  # the string "true"; "1" is ignored
            "DO_NOT_TRACK": "1",
            "GX_ANALYTICS_ENABLED": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(self.cache / "huggingface"),
            "DASK_LOGGING__DISTRIBUTED": "warning",
            "TOKENIZERS_PARALLELISM": "false",
        }

    def activate(self, override: bool = False) -> ProjectHome:
        """Create the folders and export the environment (existing values win unless override)."""
        self.ensure()
        for key, value in self.environment().items():
            if override or key not in os.environ:
                os.environ[key] = value
        return self
