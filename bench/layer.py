"""What ships to Lambda: the layer's unzipped size and each handler's cold import time.

Usage (from the repo root; `make bench-layer` writes bench/results/layer.txt)::

    PATH=.tools/bin:$PATH .venv/bin/python bench/layer.py                    # this checkout
    git worktree add /tmp/before dcd522e                                     # the layer before this change
    PATH=.tools/bin:$PATH .venv/bin/python bench/layer.py --root . --root /tmp/before   # both, runs interleaved

For each tree (--root, default this checkout):

1. `sam build SagebatchLayer` (no container, as `make test` builds it) into a temporary folder, and the layer's
   unzipped size two ways: on disk (`du`, 4 KiB blocks, so many small files weigh more) and the sum of its file
   sizes (what Lambda's 250 MB quota for a function plus its layers counts).
2. Each handler's import, `python -X importtime -c "import app"` in functions/<name>/, as the cumulative time of
   the `app` line: the median of --runs runs after one warm-up run. Two ways:
   - dev:   sagebatch from <root>/shared, its dependencies from this venv (with their .pyc files);
   - layer: as Lambda imports it: `python -S`, everything from the built layer, which is read-only on Lambda
            (PYTHONDONTWRITEBYTECODE=1: .pyc files help only if the layer ships valid ones). The layer holds arm64
            native code, so the distributions with compiled extensions (pydantic-core, sentencepiece, ...) are
            taken from this machine's wheels of the same versions, with the layer's .pyc policy.
   Neither measures Lambda's own init (downloading and unpacking the layer), which grows with its size.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYER = "SagebatchLayer"
HANDLERS = ("intake", "worker", "finalizer")
_APP_LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| app$", re.MULTILINE)


def sam_build_layer(root: Path, build_dir: Path) -> Path:
    """`sam build SagebatchLayer` of the tree at ``root``; the built layer's python/ folder."""
    sam = shutil.which("sam", path=f"{REPO / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if sam is None:
        sys.exit("sam is not on PATH: `make setup` installs it into .tools/bin")
    result = subprocess.run(
        [sam, "build", LAYER, "--template", str(root / "template.yaml"), "--build-dir", str(build_dir)],
        cwd=root,
        env=os.environ | {"SAM_CLI_TELEMETRY": "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"sam build failed in {root}:\n{result.stdout}\n{result.stderr}")
    return build_dir / LAYER / "python"


def sizes(folder: Path) -> tuple[int, int]:
    """(bytes on disk as `du` counts them, folders included; sum of the file sizes) under ``folder``."""
    entries = [folder, *(p for p in folder.rglob("*") if not p.is_symlink())]
    return sum(p.stat().st_blocks * 512 for p in entries), sum(p.stat().st_size for p in entries if p.is_file())


def import_ms(function_dir: Path, pythonpath: list[Path], *, isolated: bool) -> float:
    """Cumulative import time of ``app`` in ms, from one fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    if isolated:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    args = [sys.executable, *(["-S"] if isolated else []), "-X", "importtime", "-c", "import app"]
    result = subprocess.run(args, cwd=function_dir, env=env, capture_output=True, text=True, check=False)
    match = _APP_LINE.search(result.stderr)
    if result.returncode != 0 or match is None:
        sys.exit(f"import app failed in {function_dir} (PYTHONPATH={env['PYTHONPATH']}):\n{result.stderr[-3000:]}")
    return int(match.group(1)) / 1000


def native_distributions(site: Path) -> list[str]:
    """name==version of each distribution in ``site`` that installed a compiled extension (.so)."""
    found = []
    for record in sorted(site.glob("*.dist-info/RECORD")):
        if any(line.split(",")[0].endswith(".so") or ".so." in line.split(",")[0] for line in record.read_text().splitlines()):
            name, version = record.parent.name.removesuffix(".dist-info").rsplit("-", 1)
            found.append(f"{name}=={version}")
    return found


def host_overlay(site: Path, overlay: Path) -> list[str]:
    """This machine's wheels of the layer's native distributions, in ``overlay`` (first on sys.path)."""
    wanted = native_distributions(site)
    if wanted:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--no-compile",
                "--target",
                str(overlay),
                *wanted,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    ships_pyc = any((site / "sagebatch").rglob("*.pyc"))
    if ships_pyc:  # the same policy as the layer build (shared/Makefile)
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-f", "--invalidation-mode", "checked-hash", str(overlay)],
            check=True,
            capture_output=True,
            text=True,
        )
    return wanted


class Tree:
    """One tree's built layer and how to import its handlers both ways."""

    def __init__(self, root: Path, scratch: Path) -> None:
        self.root = root
        self.site = sam_build_layer(root, scratch / "build")
        self.disk, self.files = sizes(self.site.parent)
        self.py = sum(1 for _ in self.site.rglob("*.py"))
        self.pyc = sum(1 for _ in self.site.rglob("*.pyc"))
        overlay = scratch / "host-native"
        overlay.mkdir()
        self.replaced = host_overlay(self.site, overlay)
        self.paths = {
            "dev": lambda d: [d, root / "shared"],
            "layer": lambda d: [d, overlay, self.site],
        }
        self.samples: dict[tuple[str, str], list[float]] = {}

    def sample(self, handler: str, mode: str) -> None:
        function_dir = self.root / "functions" / handler
        ms = import_ms(function_dir, self.paths[mode](function_dir), isolated=mode == "layer")
        self.samples.setdefault((handler, mode), []).append(ms)

    def median(self, handler: str, mode: str) -> float:
        return statistics.median(self.samples[handler, mode][1:])  # the first run warms the caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        action="append",
        help="a tree to measure, e.g. a git worktree of an older commit; repeat to compare trees, whose "
        "runs are interleaved so that they share the machine's load (default: this checkout)",
    )
    parser.add_argument("--runs", type=int, default=5, help="import runs per handler, mode and tree (median; default 5)")
    args = parser.parse_args()
    roots = [r.resolve() for r in args.root or [REPO]]

    with tempfile.TemporaryDirectory(prefix="bench-layer-") as scratch:
        trees = []
        for index, root in enumerate(roots):
            (Path(scratch) / str(index)).mkdir()
            trees.append(Tree(root, Path(scratch) / str(index)))
        for _ in range(args.runs + 1):
            for handler in HANDLERS:
                for mode in ("dev", "layer"):
                    for tree in trees:
                        tree.sample(handler, mode)

    for tree in trees:
        print(
            f"tree {tree.root}: layer {LAYER} unzipped {tree.disk / 2**20:.1f} MiB on disk (du), "
            f"{tree.files / 2**20:.1f} MiB of files ({tree.files / 1e6:.1f} MB); {tree.py} .py, {tree.pyc} .pyc files"
        )
        print(f"  layer imports take native code from this machine's wheels: {', '.join(tree.replaced) or 'none'}")
    print()
    print(f"handler import time, ms: median of {args.runs} runs after a warm-up run")
    header = "".join(f" {f'{h} {m}':>16}" for h in HANDLERS for m in ("dev", "layer"))
    print(f"{'tree':<24} {'du MiB':>7} {'files MiB':>9}{header}")
    for tree in trees:
        cells = "".join(f" {tree.median(h, m):>16.0f}" for h in HANDLERS for m in ("dev", "layer"))
        print(f"{str(tree.root)[-24:]:<24} {tree.disk / 2**20:>7.1f} {tree.files / 2**20:>9.1f}{cells}")


if __name__ == "__main__":
    main()
