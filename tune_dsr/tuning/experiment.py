"""The experiment folder a search writes, in one place: its file names, its plan and its storage.

An experiment lives at ``<storage_path>/<name>``, a local folder or a storage URI (``s3://...``,
anything pyarrow's filesystems open). Beside Ray Tune's own files (one folder per trial with
``params.json``, ``result.json``, ``progress.csv`` and checkpoints; ``experiment_state-*.json``) it
holds:

- ``search_plan.json``: the `SearchPlan`, everything needed to resume or reproduce the search;
- ``optuna_study.db``: the Optuna study (SQLite; for a URI experiment it stays on the driver,
  under ``~/tune_dsr_studies/<name>/``, since SQLite needs a local file);
- ``best_config.json``: the best trial as a complete training config (`tune_dsr.export`);
- ``confirm/``: the confirmation runs (``--confirm``), a Tune experiment of its own whose trials
  repeat the search's best configurations with new seeds.

Only the standard library is imported at module level: the CLIs use this before torch or Ray.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tune_dsr.errors import ConfigError

__all__ = [
    "BEST_FILE",
    "CONFIRM_DIR",
    "PLAN_FILE",
    "STUDY_FILE",
    "SUPPORTED_SCHEMES",
    "TRIAL_PREFIX",
    "SearchPlan",
    "exists",
    "filesystem",
    "is_uri",
    "join",
    "list_dir",
    "read_json",
    "read_text",
    "resolve_storage",
    "trial_folder",
    "write_json",
    "write_text",
]

PLAN_FILE = "search_plan.json"
TRIAL_PREFIX = "trial_"  # trial folders are trial_<trial id>
STUDY_FILE = "optuna_study.db"
BEST_FILE = "best_config.json"
CONFIRM_DIR = "confirm"  # the confirmation runs: a Tune experiment inside the search's folder
SUPPORTED_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "file://")


def trial_folder(trial_id: str) -> str:
    """The folder name of a trial in the experiment (Ray's default spells out every parameter)."""
    return f"{TRIAL_PREFIX}{trial_id}"


def is_uri(path: str) -> bool:
    """A storage URI (``s3://bucket/x``) rather than a local path."""
    return "://" in path


def resolve_storage(path: str) -> str:
    """A local folder made absolute (trials run in other working directories), or a checked URI."""
    if is_uri(path):
        if not path.startswith(SUPPORTED_SCHEMES):
            raise ConfigError(f"--storage-path {path}: unsupported URI scheme; use a folder or an "
                              "s3://, gs://, hdfs:// or abfs:// URI")
        return path
    return str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """`base`/`parts`, for local paths and URIs alike."""
    return "/".join([base.rstrip("/"), *parts])


def filesystem(path: str) -> tuple[Any, str]:
    """The pyarrow filesystem holding `path`, and the path inside it."""
    import pyarrow.fs

    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def read_text(path: str) -> str:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return bytes(f.read()).decode()


def write_text(path: str, text: str) -> None:
    """Write `text` at `path`, creating its folder."""
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as out:
        out.write(text.encode())


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_json(path: str, document: Any) -> None:
    write_text(path, json.dumps(document, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars from pandas
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def exists(path: str) -> bool:
    import pyarrow.fs

    fs, inner = filesystem(path)
    return bool(fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound)


def list_dir(path: str) -> list[tuple[str, bool]]:
    """(name, is_folder) of every entry of the folder `path`, sorted by name."""
    import pyarrow.fs

    fs, inner = filesystem(path)
    entries = fs.get_file_info(pyarrow.fs.FileSelector(inner))
    return sorted((e.base_name, e.type == pyarrow.fs.FileType.Directory) for e in entries)


@dataclass(frozen=True)
class SearchPlan:
    """Everything a search needs, resolved and checked; saved as ``search_plan.json``."""

    space: str  # a preset name, or the absolute path of the user's preset .py
    metric: str
    mode: str
    base: dict[str, Any]  # flat config: settings every trial shares
    pins: dict[str, Any]  # knobs held fixed instead of searched
    storage_path: str  # absolute folder or URI
    name: str
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    gpus: float
    gpus_per_trial: float
    cpus_per_trial: float
    max_concurrent: int
    time_budget: float | None
    seed: int
    max_failures: int
    checkpoint_every: int
    address: str | None = None
    # A trial ends when its objective has not beaten its own best for this many epochs (0: off;
    # plans written before patience existed).
    patience: int = 0
    # The top `confirm` configurations are trained again `confirm_runs` times each, with new
    # seeds, at the full budget (under CONFIRM_DIR); export takes the best mean.
    confirm: int = 0
    confirm_runs: int = 2
    # label -> the searched values of each anchor, run before TPE proposes anything
    anchors: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # room for later keys, unread today

    @property
    def experiment_path(self) -> str:
        return join(self.storage_path, self.name)

    @property
    def study_path(self) -> Path:
        """The Optuna study's SQLite file: in the experiment folder when it is local."""
        if is_uri(self.storage_path):
            return Path.home() / "tune_dsr_studies" / self.name / STUDY_FILE
        return Path(self.experiment_path) / STUDY_FILE

    def save(self) -> None:
        write_json(join(self.experiment_path, PLAN_FILE), asdict(self))

    @classmethod
    def load(cls, experiment_path: str) -> SearchPlan:
        """The plan of an existing experiment; ConfigError if the folder holds no search."""
        path = join(experiment_path, PLAN_FILE)
        if not exists(path):
            raise ConfigError(f"{experiment_path} holds no tune_dsr search ({PLAN_FILE} "
                              "missing); check --storage-path and --name")
        raw = read_json(path)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def find(cls, experiment_path: str) -> SearchPlan | None:
        """The plan if the experiment has one (an experiment from plain Ray Tune may not)."""
        try:
            return cls.load(experiment_path)
        except ConfigError:
            return None
