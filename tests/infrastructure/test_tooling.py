"""The real template tools on template.yaml: cfn-lint, sam validate --lint, sam build (no container), checkov.

The tools live in their own venv, .tools/ (`make setup`); `make test` puts .tools/bin first on PATH. A missing
tool fails its test rather than skipping it, so CI can never pass without having run them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sagebatch.local.template import load_template
from tests.conftest import ROOT

pytestmark = pytest.mark.tooling

TEMPLATE_PATH = ROOT / "template.yaml"
TEMPLATE = load_template(TEMPLATE_PATH)
FUNCTIONS = {k: v for k, v in TEMPLATE["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
LAYERS = {k: v for k, v in TEMPLATE["Resources"].items() if v["Type"] == "AWS::Serverless::LayerVersion"}
# Lambda quota: a function and all its layers, unzipped, at most 250 MB.
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
SAM_BUILD_TIMEOUT_S = 900


def tool(name: str) -> str:
    """The tool's path on PATH, or a failure that says how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH. `make setup` installs it into .tools/bin and `make test` puts .tools/bin first on PATH "
            f"(or run: PATH=$PWD/.tools/bin:$PATH .venv/bin/python -m pytest -m tooling).",
            pytrace=False,
        )
    return path


def run(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {"SAM_CLI_TELEMETRY": "0"} | env
    try:
        return subprocess.run(args, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(args)} did not finish within {timeout} s:\n{error.stdout}\n{error.stderr}", pytrace=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


# -- cfn-lint and sam validate ------------------------------------------------------------------
def test_cfn_lint_finds_nothing_in_the_template():
    # Given cfn-lint; When it lints template.yaml
    result = run([tool("cfn-lint"), "template.yaml"])

    # Then it reports no errors, warnings or informational findings
    assert result.returncode == 0, output(result)


def test_sam_validate_with_lint_accepts_the_template():
    # Given the SAM CLI; When it validates template.yaml with its linter
    result = run([tool("sam"), "validate", "--lint", "--template", "template.yaml", "--region", "us-east-1"])

    # Then the template is valid
    assert result.returncode == 0, output(result)
    assert "is a valid SAM Template" in result.stdout + result.stderr


# -- sam build ------------------------------------------------------------------------------------
class SamBuild:
    def __init__(self, result: subprocess.CompletedProcess[str], build_dir: Path, seconds: float):
        self.result = result
        self.build_dir = build_dir
        self.seconds = seconds

    def artifacts(self) -> Path:
        """The build folder, or a failure pointing at the build test (which shows sam's output)."""
        if self.result.returncode != 0:
            pytest.fail("sam build failed; see test_sam_build_without_a_container_succeeds for its output", pytrace=False)
        return self.build_dir


@pytest.fixture(scope="module")
def sam_build(tmp_path_factory: pytest.TempPathFactory) -> SamBuild:
    """One `sam build` (pip, no container: arm64 wheels for the layer come from PyPI) shared by the build tests."""
    sam = tool("sam")
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    started = time.monotonic()
    result = run([sam, "build", "--template", "template.yaml", "--build-dir", str(build_dir)], timeout=SAM_BUILD_TIMEOUT_S)
    return SamBuild(result, build_dir, time.monotonic() - started)


def test_sam_build_without_a_container_succeeds(sam_build, record_property):
    # Given the template's layer and functions; When sam builds them (fixture)
    record_property("sam_build_seconds", round(sam_build.seconds, 1))

    # Then the build succeeds
    assert sam_build.result.returncode == 0, output(sam_build.result)
    assert "Build Succeeded" in sam_build.result.stdout + sam_build.result.stderr


def test_the_built_layer_holds_the_sagebatch_package_and_its_arm64_dependencies(sam_build):
    # Given the built layer
    (layer,) = LAYERS
    site = sam_build.artifacts() / layer / "python"

    # When its contents are listed
    packages = {p.name for p in site.iterdir()} if site.is_dir() else set()

    # Then it holds sagebatch and its runtime dependencies, with native code built for Lambda's arm64 python3.11
    assert (site / "sagebatch" / "__init__.py").is_file(), f"no sagebatch package in {site}"
    for package in ("pydantic", "pydantic_core", "pydantic_settings", "aws_lambda_powertools", "boto3", "mistral_common",
                    "sentencepiece"):
        assert package in packages, f"{package} missing from the layer ({sorted(packages)})"
    assert list((site / "pydantic_core").glob("_pydantic_core.cpython-311-aarch64-linux-gnu.so")), \
        f"pydantic_core is not an arm64 cp311 build: {[p.name for p in (site / 'pydantic_core').iterdir()]}"


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_each_built_function_folder_holds_its_handler_module(sam_build, function):
    # Given a function's handler, e.g. app.lambda_handler
    module = FUNCTIONS[function]["Properties"]["Handler"].rpartition(".")[0]

    # When its build folder is looked at
    folder = sam_build.artifacts() / function

    # Then the handler's module is there
    contents = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "nothing"
    assert (folder / f"{module}.py").is_file(), f"{folder} holds {contents}"


def test_the_built_layer_and_functions_fit_lambdas_unzipped_size_limit(sam_build):
    # Given the built artifacts; When each function's size with the layer is summed
    build = sam_build.artifacts()

    def size(folder: Path) -> int:
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())

    layer_bytes = sum(size(build / layer) for layer in LAYERS)

    # Then every function plus the layer stays under 250 MB unzipped, or the deployment is refused
    for function in FUNCTIONS:
        total = size(build / function) + layer_bytes
        assert total < LAMBDA_UNZIPPED_LIMIT, f"{function} + layers = {total / 2**20:.0f} MB unzipped (limit 250 MB)"


# -- checkov --------------------------------------------------------------------------------------
_FAILED_CHECK = re.compile(r'Check: (CKV2?_\w+): "([^"]*)"\s+FAILED for resource: (\S+)')


def test_checkov_reports_no_failed_checks_on_the_template():
    # Given checkov (BC_SKIP_MAPPING: no call to the Prisma Cloud API for guideline links; the checks are the same)
    checkov = tool("checkov")

    # When it scans template.yaml as CloudFormation
    result = run([checkov, "-f", "template.yaml", "--framework", "cloudformation", "--quiet", "--compact"],
                 BC_SKIP_MAPPING="TRUE")

    # Then it completed a scan (exit 0: no findings; exit 1: findings listed) ...
    failed = _FAILED_CHECK.findall(result.stdout)
    assert result.returncode == 0 or (result.returncode == 1 and failed), f"checkov did not complete a scan: {output(result)}"
    # ... and no check failed
    listing = "\n".join(f"  {check} {resource}: {name}" for check, name, resource in failed)
    assert not failed and result.returncode == 0, f"checkov failed {len(failed)} checks:\n{listing}"


def test_every_checkov_skip_in_the_template_says_why():
    # Given the checks template.yaml tells checkov to skip (Metadata: checkov: skip: [{id, comment}])
    skips = [(name, skip) for name, resource in TEMPLATE["Resources"].items()
             for skip in (resource.get("Metadata", {}).get("checkov", {}).get("skip") or [])]

    # When each is looked at; Then it names a check and gives a reason
    for name, skip in skips:
        assert re.fullmatch(r"CKV2?_\w+", str(skip.get("id", ""))), f"{name}: checkov skip without a check id: {skip}"
        assert str(skip.get("comment", "")).strip(), f"{name}: checkov skip of {skip['id']} without a comment saying why"
