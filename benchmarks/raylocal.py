"""One local Ray for the parts that run trials, started on first use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_started = False


def ensure(num_cpus: int = 2, num_gpus: int | None = None, warm: bool = True) -> None:
    """Start a local Ray unless one runs already. Trial processes must import `benchmarks`
    (its trial functions are pickled by reference): the repository goes on their PYTHONPATH.
    With `warm`, one empty Tune run follows, so that no measured run pays for Tune's first use
    in this process (its imports, the first worker) alone."""
    global _started
    import ray

    if ray.is_initialized():
        return
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), path) if p)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
             log_to_driver=False, configure_logging=True, logging_level="ERROR")
    _started = True
    if warm:
        _empty_tune_run()


def _nothing(config: dict[str, Any]) -> None:
    from ray import tune

    tune.report({"done": 1})


def _empty_tune_run() -> None:
    import contextlib
    import io
    import tempfile

    from ray import tune

    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        tune.Tuner(_nothing, run_config=tune.RunConfig(storage_path=folder, verbose=0)).fit()


def shutdown() -> None:
    global _started
    if _started:
        import ray

        ray.shutdown()
        _started = False
