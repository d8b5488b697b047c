"""Shared fixtures: a throwaway copy of this repository in which DVC stages really run."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"
sys.path.insert(0, str(Path(__file__).parent))


def _project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    # dvc.lock belongs to this checkout's own runs, not to a fresh clone
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file() and f != "dvc.lock"]


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-6000:]}")
    return result


def compose_params(repo: Path, overrides: list[str]) -> None:
    """Write params.yaml exactly as `dvc exp run -S` would compose it."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(repo / "params.yaml", str(repo / "conf"), None, "config", "", overrides)


@pytest.fixture
def make_repo(tmp_path, monkeypatch):
    """A git+DVC copy of the project whose remote `cifar10` serves `archive_dir`."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("DVC_ROOT", raising=False)

    def make(archive_dir: Path, overrides: list[str] = ()) -> Path:
        repo = tmp_path / "repo"
        for name in _project_files():
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
        # as on a fresh clone: data.dvc without the hashes a local `dvc repro` writes into it
        committed = run(["git", "show", "HEAD:data.dvc"], ROOT).stdout
        (repo / "data.dvc").write_text(committed)
        compose_params(repo, list(overrides))

        run(["git", "init", "-q"], repo)
        run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], repo)
        run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], repo)
        run(["dvc", "remote", "modify", "--local", "cifar10", "url", str(archive_dir)], repo)
        return repo

    return make

