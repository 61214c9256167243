"""The real template tools on template.yaml: cfn-lint, sam validate --lint, sam build (no container), checkov.

The tools live in their own venv, .tools/ (`make setup`); `make test` puts .tools/bin first on PATH. A missing
tool fails its test rather than skipping it, so CI can never pass without having run them.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer as ReferenceTokenizer

from sagebatch.domain.prompt import render_prompt
from sagebatch.domain.tokens import BUNDLED_MODEL_PATH, MODEL_SHA256
from sagebatch.tooling.local.template import load_template
from tests.conftest import ROOT

pytestmark = pytest.mark.tooling

TEMPLATE_PATH = ROOT / "template.yaml"
TEMPLATE = load_template(TEMPLATE_PATH)
FUNCTIONS = {k: v for k, v in TEMPLATE["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
LAYERS = {k: v for k, v in TEMPLATE["Resources"].items() if v["Type"] == "AWS::Serverless::LayerVersion"}
# Lambda quota: a function and all its layers, unzipped, at most 250 MB.
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
# Our own budget for the layer (README, "What ships to Lambda"): at most 60 MB of files unzipped.
LAYER_BUDGET = 60 * 1024 * 1024
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
    for package in ("pydantic", "pydantic_core", "pydantic_settings", "aws_lambda_powertools", "boto3", "sentencepiece"):
        assert package in packages, f"{package} missing from the layer ({sorted(packages)})"
    for package, extension in (("pydantic_core", "_pydantic_core"), ("sentencepiece", "_sentencepiece")):
        assert list((site / package).glob(f"{extension}.cpython-311-aarch64-linux-gnu.so")), (
            f"{package} is not an arm64 cp311 build: {[p.name for p in (site / package).iterdir()]}"
        )


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


# -- what ships to Lambda: the layer (shared/Makefile) ----------------------------------------------
# Developer tooling and the packages only it, the tests or mistral-common's other tokenizers need.
NOT_SHIPPED = {"mistral_common": "mistral_common", "numpy": "numpy", "PIL": "pillow", "tiktoken": "tiktoken", "moto": "moto"}


def layer_site(sam_build: SamBuild) -> Path:
    (layer,) = LAYERS
    return sam_build.artifacts() / layer / "python"


def shipped_names(site: Path) -> set[str]:
    """Top-level module names the layer provides (packages, modules, extension modules)."""
    return {p.name.partition(".")[0] for p in site.iterdir() if not p.name.endswith(".dist-info")}


def test_the_built_layer_holds_no_developer_tooling_fakes_or_mistral_common(sam_build):
    # Given the built layer
    site = layer_site(sam_build)

    # When its contents are listed
    names = shipped_names(site)
    distributions = {p.name.rpartition("-")[0].lower() for p in site.glob("*.dist-info")}

    # Then the package has no tooling (local stack, emulator, CLI, deploy) and no in-memory fakes ...
    assert (site / "sagebatch" / "lambdas" / "handlers.py").is_file(), f"no sagebatch runtime package in {site}"
    assert not (site / "sagebatch" / "tooling").exists(), "sagebatch/tooling/ is developer tooling; it must not ship"
    fakes = [p for p in (site / "sagebatch").rglob("fakes*") if p.name == "fakes.py" or (p.name == "fakes" and p.is_dir())]
    assert not fakes, f"in-memory fakes are for the tests; they must not ship: {fakes}"
    # ... and neither mistral-common nor its numpy, pillow and tiktoken are installed in it
    for module, distribution in NOT_SHIPPED.items():
        assert module not in names, f"{module} is in the layer"
        assert distribution not in distributions, f"{distribution} is installed in the layer"


def test_the_built_layer_holds_the_v1_model_where_the_tokenizer_looks_first(sam_build):
    # Given where sagebatch.domain.tokens looks for the model beside the package
    relative = BUNDLED_MODEL_PATH.relative_to(ROOT / "shared")

    # When the built layer is looked at there
    model = layer_site(sam_build) / relative

    # Then it holds the v1 model with the published SHA-256, which the source tree never holds (gitignored)
    assert model.is_file(), f"no {relative} in the layer"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == MODEL_SHA256
    assert not BUNDLED_MODEL_PATH.exists(), f"{BUNDLED_MODEL_PATH} is in the source tree; the layer build copies it"
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert str(BUNDLED_MODEL_PATH.relative_to(ROOT)) in ignored, f"{relative} is not in .gitignore"


def _imported_modules(source: Path, package: str) -> set[str]:
    """Absolute names of the modules ``source`` imports (``from a import b`` gives both a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_every_module_in_the_built_layer_imports_only_what_the_layer_or_the_runtime_has(sam_build):
    # Given the layer's sagebatch modules and the three entry points (functions/*/app.py)
    site = layer_site(sam_build)
    names = shipped_names(site)
    sources = {path: ".".join(path.relative_to(site).with_suffix("").parts[:-1]) for path in (site / "sagebatch").rglob("*.py")}
    sources |= {ROOT / props["Properties"]["CodeUri"] / "app.py": "" for props in FUNCTIONS.values()}

    def in_source_tree(module: str) -> bool:
        path = ROOT / "shared" / Path(*module.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    def in_layer(module: str) -> bool:
        path = site / Path(*module.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    # When their imports (anywhere in the module, lazy ones included) are resolved against the layer
    problems = []
    for source, package in sorted(sources.items()):
        for module in sorted(_imported_modules(source, package)):
            top = module.partition(".")[0]
            if module.startswith("sagebatch.tooling"):
                problems.append(f"{source}: imports developer tooling {module}")
            elif top == "sagebatch" and in_source_tree(module) and not in_layer(module):
                problems.append(f"{source}: imports {module}, which the layer build leaves out")
            elif top != "sagebatch" and top not in sys.stdlib_module_names and top not in names:
                problems.append(f"{source}: imports {top}, which is not in the layer")

    # Then each one is in the standard library or in the layer, and none is tooling
    assert not problems, "\n".join(problems)


# Run in a fresh interpreter: import a handler the way Lambda would, with only what the layer ships importable.
# The layer's native code is arm64, which this machine may not run, so only sagebatch itself comes from the built
# layer and the other packages the layer ships come from this venv (same requirements); anything the layer does
# not ship (mistral_common, numpy, moto, sagebatch.tooling, ...) cannot be imported at all.
_IMPORT_AS_LAMBDA = """
import importlib.abc, importlib.machinery, json, sys
from pathlib import Path

shipped, package_root = set(json.loads(sys.argv[1])), Path(sys.argv[2])
stdlib = [p for p in sys.path if p.startswith(sys.base_prefix) and "site-packages" not in p]

class OnlyWhatTheLayerShips(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in shipped or top == "app" or top in sys.builtin_module_names:
            return None
        if importlib.machinery.PathFinder.find_spec(top, stdlib) is not None:  # the standard library
            return None
        raise ModuleNotFoundError(f"No module named {name!r} in the layer", name=name)

sys.meta_path.insert(0, OnlyWhatTheLayerShips())
sys.path[1:1] = [str(package_root)]
import app
import sagebatch
from sagebatch.domain.tokens import default_model_path, get_tokenizer

print(json.dumps({
    "handler": callable(app.lambda_handler),
    "sagebatch": sagebatch.__file__,
    "tooling": sorted(m for m in sys.modules if m.startswith("sagebatch.tooling")),
    "outside": sorted({m.__name__ for m in list(sys.modules.values())
                       if m.__name__.startswith("sagebatch") and not str(getattr(m, "__file__", "") or "").startswith(str(package_root))}),
    "model": str(default_model_path()),
    "ids": get_tokenizer().encode(sys.argv[3]),
}))
"""


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_each_handler_imports_with_only_the_layer_and_tokenizes_with_its_model(sam_build, function, tmp_path):
    # Given the layer's sagebatch package (copied out of the build) and nothing importable that the layer lacks
    site = layer_site(sam_build)
    shutil.copytree(site / "sagebatch", tmp_path / "sagebatch")
    question = "Crème brûlée, 東京 and 😀 in one prompt?"
    function_dir = ROOT / FUNCTIONS[function]["Properties"]["CodeUri"]

    # When a fresh interpreter imports the function's handler module and tokenizes a prompt
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _IMPORT_AS_LAMBDA,
            json.dumps(sorted(shipped_names(site))),
            str(tmp_path),
            render_prompt(question),
        ],
        cwd=function_dir,
        env=os.environ | {"PYTHONPATH": str(function_dir), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Then the import succeeds, with every sagebatch module from the layer's copy and no tooling ...
    assert result.returncode == 0, output(result)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["handler"]
    assert report["sagebatch"].startswith(str(tmp_path)), report["sagebatch"]
    assert report["tooling"] == [] and report["outside"] == [], report
    # ... and the tokenizer loads the layer's model file and gives mistral-common's ids for the chat
    assert report["model"] == str(tmp_path / BUNDLED_MODEL_PATH.relative_to(ROOT / "shared"))
    request = ChatCompletionRequest(messages=[UserMessage(content=question)])
    assert report["ids"] == ReferenceTokenizer.v1().encode_chat_completion(request).tokens


def test_every_python_file_in_the_built_layer_has_a_checked_hash_pyc(sam_build):
    # Given the layer's Python files (/opt is read-only on Lambda and `sam deploy` dates every zipped file 1980-01-01,
    # so only hash-based .pyc files spare a cold start from compiling every module it imports)
    site = layer_site(sam_build)
    sources = list(site.rglob("*.py"))

    # When each one's cached bytecode header is read (magic number, then flags: 0b11 = hash-based, checked)
    def header(source: Path) -> bytes:
        cached = Path(importlib.util.cache_from_source(str(source)))
        return cached.read_bytes()[:8] if cached.is_file() else b""

    stale = [str(s.relative_to(site)) for s in sources if header(s) != importlib.util.MAGIC_NUMBER + b"\x03\x00\x00\x00"]

    # Then every one has a checked-hash .pyc for this (the layer's) Python version
    assert sources and not stale, f"{len(stale)} of {len(sources)} files without a checked-hash .pyc, e.g. {stale[:5]}"


def test_the_built_layer_stays_within_its_60_mb_budget(sam_build, record_property):
    # Given the built layer; When its files are added up, unzipped
    site = layer_site(sam_build)
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
    record_property("layer_mib", round(size / 2**20, 1))

    # Then they stay within the budget the README reports against
    assert size <= LAYER_BUDGET, f"the layer is {size / 2**20:.1f} MiB unzipped (budget {LAYER_BUDGET / 2**20:.0f} MiB)"


# -- checkov --------------------------------------------------------------------------------------
_FAILED_CHECK = re.compile(r'Check: (CKV2?_\w+): "([^"]*)"\s+FAILED for resource: (\S+)')


def test_checkov_reports_no_failed_checks_on_the_template():
    # Given checkov (BC_SKIP_MAPPING: no call to the Prisma Cloud API for guideline links; the checks are the same)
    checkov = tool("checkov")

    # When it scans template.yaml as CloudFormation
    result = run(
        [checkov, "-f", "template.yaml", "--framework", "cloudformation", "--quiet", "--compact"], BC_SKIP_MAPPING="TRUE"
    )

    # Then it completed a scan (exit 0: no findings; exit 1: findings listed) ...
    failed = _FAILED_CHECK.findall(result.stdout)
    assert result.returncode == 0 or (result.returncode == 1 and failed), f"checkov did not complete a scan: {output(result)}"
    # ... and no check failed
    listing = "\n".join(f"  {check} {resource}: {name}" for check, name, resource in failed)
    assert not failed and result.returncode == 0, f"checkov failed {len(failed)} checks:\n{listing}"


def test_every_checkov_skip_in_the_template_says_why():
    # Given the checks template.yaml tells checkov to skip (Metadata: checkov: skip: [{id, comment}])
    skips = [
        (name, skip)
        for name, resource in TEMPLATE["Resources"].items()
        for skip in (resource.get("Metadata", {}).get("checkov", {}).get("skip") or [])
    ]

    # When each is looked at; Then it names a check and gives a reason
    for name, skip in skips:
        assert re.fullmatch(r"CKV2?_\w+", str(skip.get("id", ""))), f"{name}: checkov skip without a check id: {skip}"
        assert str(skip.get("comment", "")).strip(), f"{name}: checkov skip of {skip['id']} without a comment saying why"
