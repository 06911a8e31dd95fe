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
import types
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from tune_dsr.errors import ConfigError
from tune_dsr.files import atomic_write
from tune_dsr.tuning.options import DEFAULT_CONFIRM_RUNS

__all__ = [
    "BEST_FILE",
    "CONFIRM_DIR",
    "DAMAGE",
    "PLAN_FILE",
    "STUDY_FILE",
    "SUPPORTED_SCHEMES",
    "TRIAL_PREFIX",
    "DamagedFileError",
    "SearchPlan",
    "decode_text",
    "exists",
    "filesystem",
    "is_uri",
    "join",
    "parse_json",
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
# Why a file of an experiment is not what its writer wrote, in every message that finds one.
DAMAGE = "a crash while writing it, or a hand edit"


class DamagedFileError(ConfigError):
    """A file of an experiment that cannot be read as what it should be: its message names the
    file and what is wrong with it; `path` is the file (a local path or URI). Readers that can do
    without the file (one trial of many) log it and go on; the others add the fix and refuse."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.path))


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


def decode_text(data: bytes, source: str) -> str:
    """`data` (the bytes of the file `source`) as UTF-8 text; DamagedFileError if it is not."""
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise DamagedFileError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                               f"{DAMAGE}", source) from None


def parse_json(text: str | bytes, source: str, expect: type | None = None,
               line: int | None = None) -> Any:
    """The JSON document `text` read from `source` (a file, or its line `line`): the one place
    that turns a damaged document into a message naming the file and what is wrong with it.

    `expect` (dict or list) is the JSON type the document must have. DamagedFileError otherwise.
    """
    where = source if line is None else f"{source} line {line}"
    if isinstance(text, bytes):
        text = decode_text(text, source)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        at = (f"column {exc.colno}" if line is not None
              else f"line {exc.lineno}, column {exc.colno}")
        empty = "" if text.strip() else ", it is empty"
        # "Unterminated string starting at" + " at line 1": one "at".
        raise DamagedFileError(f"{where} is not valid JSON ({exc.msg.removesuffix(' at')} at "
                               f"{at}{empty}): "
                               f"{DAMAGE}", source) from None
    if expect is not None and not isinstance(document, expect):
        raise DamagedFileError(f"{where} holds {_json_kind(document)} where {_kind_name(expect)} "
                               f"belongs: {DAMAGE}", source)
    return document


def read_text(path: str) -> str:
    """The text of the file `path` (local or URI); DamagedFileError if it is not UTF-8."""
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return decode_text(bytes(f.read()), path)


def read_json(path: str, expect: type | None = None) -> Any:
    """The JSON document in the file `path` (see `parse_json`)."""
    return parse_json(read_text(path), path, expect)


def write_text(path: str, text: str) -> None:
    """Write `text` at `path`, creating its folder; all or nothing.

    A local file is written beside its target under a temporary name, then renamed over it: a
    crash leaves the old file or the new one, never half of one, and no temporary file stays
    behind. A URI is written through pyarrow's output stream (object stores write whole objects).
    """
    if is_uri(path):
        fs, inner = filesystem(path)
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as out:
            out.write(text.encode())
        return
    atomic_write(path, lambda out: out.write(text.encode("utf-8")))


def write_json(path: str, document: Any) -> None:
    """`document` as indented JSON at `path` (see `write_text`)."""
    write_text(path, json.dumps(document, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars from pandas
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def exists(path: str) -> bool:
    import pyarrow.fs

    fs, inner = filesystem(path)
    return bool(fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound)


# ----------------------------------------------------------------------------- JSON types

def _json_kind(value: Any) -> str:
    """What a parsed JSON value is, in the words of a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a string"
    return "a JSON list" if isinstance(value, list) else "a JSON object"


_KIND_NAMES = {dict: ("a JSON object", "JSON objects"), list: ("a JSON list", "JSON lists"),
               str: ("a string", "strings"), int: ("a whole number", "whole numbers"),
               float: ("a number", "numbers"), bool: ("true or false", "true or false"),
               type(None): ("null", "nulls")}


def _kind_name(hint: Any, plural: bool = False) -> str:
    """A type annotation of a plan field in the words of a message ("a JSON object of ...")."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_kind_name(arg, plural) for arg in args)
    names = _KIND_NAMES.get(origin or hint)
    if names is None:
        return "anything" if hint is Any else str(hint)
    name = names[plural]
    if origin in (dict, list) and args and args[-1] is not Any:
        name += f" of {_kind_name(args[-1], plural=True)}"
    return name


def _matches(value: Any, hint: Any) -> bool:
    """Whether a parsed JSON value fits a plan field's annotation (an int is a float too)."""
    if hint is Any:
        return True
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    if origin is dict:
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    return isinstance(value, origin or hint)


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
    confirm_runs: int = DEFAULT_CONFIRM_RUNS
    # label -> the searched values of each anchor, run before TPE proposes anything
    anchors: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Two or three objectives searched together (their Pareto front); `metric` is the first.
    # Empty: one objective, `metric`.
    objectives: list[str] = field(default_factory=list)

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
        """The plan of an existing experiment; ConfigError if the folder holds no search, or a
        plan that is damaged: not JSON, not an object, fields missing or of the wrong type (each
        named). Keys this version does not know (a newer tune_dsr's) are left out."""
        path = join(experiment_path, PLAN_FILE)
        if not exists(path):
            raise ConfigError(f"{experiment_path} holds no tune_dsr search ({PLAN_FILE} "
                              "missing); check --storage-path and --name")
        fix = (f"restore {PLAN_FILE} (undo the edit, or copy it back from a backup); without a "
               "plan the trials can still be analysed as a plain Ray Tune experiment by moving "
               "it aside and giving a metric (export --metric)")
        try:
            raw = read_json(path, expect=dict)
        except DamagedFileError as exc:
            raise ConfigError(f"{exc}; the search cannot be read or resumed without its plan: "
                              f"{fix}") from None
        hints = get_type_hints(cls)
        missing = [f.name for f in fields(cls) if f.name not in raw
                   and f.default is MISSING and f.default_factory is MISSING]
        wrong = [f"{f.name} is {_json_kind(raw[f.name])}, not {_kind_name(hints[f.name])}"
                 for f in fields(cls) if f.name in raw and not _matches(raw[f.name], hints[f.name])]
        if missing or wrong:
            problems = ([f"missing {', '.join(missing)}"] if missing else []) + wrong
            raise ConfigError(f"{path} is not a complete search plan ({'; '.join(problems)}): "
                              f"{DAMAGE}, or a plan from another tune_dsr version; {fix}")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    @classmethod
    def find(cls, experiment_path: str) -> SearchPlan | None:
        """The plan if the experiment has one (an experiment from plain Ray Tune may not); a
        plan that is there but damaged is refused as `load` refuses it, not taken for none."""
        if not exists(join(experiment_path, PLAN_FILE)):
            return None
        return cls.load(experiment_path)
