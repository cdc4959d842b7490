"""What `docker build -f deploy/Dockerfile` would install, without Docker: the build stage's
`COPY` sources, filtered by `deploy/Dockerfile.dockerignore`, assembled into a directory; a wheel
built from it (`pip wheel --no-deps`); the wheel installed into a fresh venv.

The fresh venv sees the project venv's third-party packages (torch, grpc, ...) through a `.pth`
file that calls `site.addsitedir` on them, so nothing is downloaded or reinstalled. That venv's
site-packages also holds the checkout's editable-install finder, which is why the checks compare
each imported module's `__file__` with the fresh venv: a module missing from the wheel would
otherwise be found in the checkout and pass unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.deploy.manifest_commands import REPO
from tests.deploy.test_dockerfile import stages

DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "Dockerfile.dockerignore"
BUILD_STAGES = ("cpu-build", "cuda-build")


def copy_instructions(dockerfile_text: str, stage: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of the stage's COPY instructions that read the build context."""
    copies = []
    for keyword, rest in stages(dockerfile_text)[stage]:
        if keyword == "COPY" and "--from=" not in rest:
            *sources, dest = shlex.split(rest)
            copies.append((sources, dest))
    return copies


def _pattern_regex(pattern: str) -> re.Pattern:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignore_rules(dockerignore_text: str) -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per line of a .dockerignore, in order (the last match wins)."""
    rules = []
    for line in dockerignore_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, _pattern_regex(pattern.strip("/"))))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: a path is excluded when it or a parent folder matches the last rule."""
    parts = relative.split("/")
    result = False
    for negate, regex in rules:
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            result = not negate
    return result


def context_files(rules) -> list[str]:
    files = []
    for root, dirs, names in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if d != ".git" and not ignored(rel_root + d, rules)]
        files += [rel_root + n for n in names if not ignored(rel_root + n, rules)]
    return files


def assemble_context(dest: Path, dockerfile_text: str, dockerignore_text: str) -> Path:
    """Lay out /src as the build stage would see it after its COPY instructions."""
    rules = ignore_rules(dockerignore_text)
    available = context_files(rules)
    for sources, target in copy_instructions(dockerfile_text, "cpu-build"):
        for source in sources:
            prefix = "" if source in (".", "./") else source.rstrip("/")
            for rel in available:
                if prefix and rel != prefix and not rel.startswith(prefix + "/"):
                    continue
                if prefix == rel:  # a single file: into the target folder, or as the target
                    out = dest / target / Path(rel).name if target.endswith("/") else dest / target
                else:  # a folder's contents go into the target folder
                    out = dest / target / (rel[len(prefix) + 1 :] if prefix else rel)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, out)
    return dest


def build_wheel(src: Path, out_dir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return next(out_dir.glob("baton-*.whl"))


def install_into_fresh_venv(wheel: Path, venv: Path) -> Path:
    """A venv without pip that sees the project venv's packages; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    deps = sysconfig.get_paths()["purelib"]
    (site_packages / "zz_project_deps.pth").write_text(f"import site; site.addsitedir({deps!r})\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return python


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


IMPORT_ALL = r"""
import importlib, json, os, pathlib, pkgutil, sys
prefix = pathlib.Path(sys.prefix).resolve()
top = json.loads(sys.argv[1])
report = {"imported": [], "outside": [], "failed": {}}
for name in top:
    try:
        package = importlib.import_module(name)
    except Exception as error:  # noqa: BLE001
        report["failed"][name] = repr(error)
        continue
    modules = [name] + [m.name for m in pkgutil.walk_packages(package.__path__, name + ".")]
    for module_name in modules:
        if module_name.endswith(".__main__"):
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # noqa: BLE001
            report["failed"][module_name] = repr(error)
            continue
        report["imported"].append(module_name)
        if not pathlib.Path(module.__file__).resolve().is_relative_to(prefix):
            report["outside"].append(f"{module_name}: {module.__file__}")
print(json.dumps(report))
"""


def shipped_modules_in_checkout(top_level: list[str]) -> set[str]:
    """Every module the checkout has under the shipped top-level packages."""
    modules = set()
    for name in top_level:
        for path in (REPO / name).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            if "__main__" not in parts:
                modules.add(".".join(parts))
    return modules


def check_installed(python: Path, workdir: Path, top_level: list[str]) -> list[str]:
    """Problems seen from the fresh venv, run in `workdir` (not the checkout): entry points'
    `--help`, and an import of every shipped module from inside the venv."""
    problems = []
    env = clean_env()
    commands = [[str(python.parent / "baton"), "--help"]]
    commands += [
        [str(python), "-m", name, "--help"] for name in top_level if (REPO / name / "__main__.py").exists()
    ]
    for command in commands:
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or "usage" not in done.stdout.lower():
            problems.append(f"{' '.join(command[-3:])}: exit {done.returncode}: {done.stderr.strip()[-400:]}")
    done = subprocess.run(
        [str(python), "-c", IMPORT_ALL, json.dumps(top_level)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        return problems + [f"import check crashed: {done.stderr[-800:]}"]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    problems += [f"import {name} failed: {error}" for name, error in report["failed"].items()]
    problems += [f"not from the image's venv: {line}" for line in report["outside"]]
    missing = shipped_modules_in_checkout(top_level) - set(report["imported"])
    problems += [f"module in the checkout but not importable from the image: {m}" for m in sorted(missing)]
    return problems
