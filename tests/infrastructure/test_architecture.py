"""The folders are the architecture: imports point inward only (import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import logging
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def loggers_stay_enabled() -> Iterator[None]:
    """import-linter's CLI configures logging with dictConfig, which disables every logger that exists (the service's
    `sagebatch` logger among them) for the rest of the process: a later test in the same worker would see no logs."""
    enabled = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger) and not lg.disabled]
    yield
    for lg in enabled:
        lg.disabled = False


@pytest.fixture
def importable_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "shared"))
    monkeypatch.chdir(ROOT)


def test_every_import_points_inward(importable_package: None) -> None:
    # Given the contracts in pyproject.toml (layers, a pure domain, use cases without the AWS SDK, no tooling in Lambda)
    # When import-linter checks the package
    exit_code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    # Then every contract is kept
    assert exit_code == 0


def test_an_import_against_the_direction_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a copy of the project's layer contract over a tiny package whose domain imports an adapter
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = [layer.replace("sagebatch", "mini") for layer in config["contracts"][0]["layers"]]
    package = tmp_path / "mini"
    for folder in ("domain", "adapters", "usecases", "ports", "tooling", "lambdas", "endpoint", "fakes"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    for module in ("__init__", "settings", "observability"):
        (package / f"{module}.py").write_text("")
    (package / "adapters" / "store.py").write_text("VALUE = 1\n")
    (package / "domain" / "model.py").write_text("from mini.adapters.store import VALUE\n")
    quoted = ", ".join(f'"{layer}"' for layer in layers)
    (tmp_path / "setup.toml").write_text(
        f'[tool.importlinter]\nroot_package = "mini"\n\n[[tool.importlinter.contracts]]\nname = "layers"\n'
        f'type = "layers"\nlayers = [{quoted}]\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("mini", None)
    # When import-linter checks it
    exit_code = lint_imports(config_filename=str(tmp_path / "setup.toml"), no_cache=True, no_logo=True)
    # Then the contract is broken
    assert exit_code != 0
