"""Packaging: the light client wheel carries no model weights; the server install finds them.

Two distributions come out of the checkout:

- `reprocodec` (pyproject.toml): the light client (base install, no torch) and, with the
  `server` extra, the codecs and services. No weights.
- `reprocodec-weights` (reprocodec/weights/pyproject.toml, import name `reprocodec_weights`):
  every NAME.pt + NAME.json pair in reprocodec/weights, whatever the names. The server set-ups
  install it from the checkout (scripts/venv.sh editable, the Dockerfile for real), so nothing
  is downloaded at run time; reprocodec.shipped.WEIGHTS_DIR finds it.

The wheels are built offline from a copy of the tree with this environment's setuptools.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "reprocodec" / "weights"
# What setuptools prints when the configuration leaves something out or is deprecated.
SETUPTOOLS_WARNINGS = ("would be ignored", "is absent from the `packages`",
                       "SetuptoolsDeprecationWarning", "BuildBackendWarning",
                       "SetuptoolsWarning")


def shipped_files() -> set[str]:
    """The weights folder's model files, as found (no list of names anywhere)."""
    return {p.name for p in WEIGHTS.iterdir()
            if p.is_file() and p.suffix in (".pt", ".json")}


def build_wheel(src: Path, out: Path) -> tuple[Path, str]:
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                             "--no-build-isolation", "-w", str(out), str(src)],
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    for warning in SETUPTOOLS_WARNINGS:
        assert warning not in output, output[output.find(warning) - 800:][:2000]
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], output


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """{'light': the reprocodec wheel, 'weights': the reprocodec-weights wheel}, each built
    from a copy of what the Docker build context holds (no local build state)."""
    tmp = tmp_path_factory.mktemp("wheels")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for folder in ("reprocodec", "server", "client"):
        shutil.copytree(REPO / folder, src / folder, ignore=junk)
    # A stale egg-info manifest that still lists the weights (what an older checkout's
    # editable install leaves behind) must not pull them back into the light wheel.
    stale = src / "reprocodec.egg-info"
    stale.mkdir()
    (stale / "SOURCES.txt").write_text(
        "".join(f"reprocodec/weights/{name}\n" for name in sorted(shipped_files())))
    light, _ = build_wheel(src, tmp / "light")
    weights, _ = build_wheel(src / "reprocodec" / "weights", tmp / "weights")
    return {"light": light, "weights": weights}


def test_light_client_wheel_has_no_weights(wheels):
    names = set(zipfile.ZipFile(wheels["light"]).namelist())
    assert not [n for n in names if n.endswith(".pt") or "/weights/" in n or "weights" ==
                n.split("/")[0]], sorted(n for n in names if "weights" in n)
    # What it does carry: the client, the server code (its extra brings torch), the samples.
    samples = {f"reprocodec/samples/{p.name}" for p in (REPO / "reprocodec" / "samples").iterdir()
               if p.is_file() and not p.name.startswith(".")}
    assert samples and samples <= names, sorted(samples - names)
    assert {"reprocodec/server/main.py", "reprocodec/client/__init__.py", "reprocodec/py.typed",
            "reprocodec/v1/service_pb2.pyi", "reprocodec/shipped.py"} <= names
    # A few hundred kB, not the ~13 MB (17 MB unpacked) it was with the weights.
    assert wheels["light"].stat().st_size < 3_000_000, wheels["light"].stat().st_size


def test_weights_wheel_ships_every_model_pair_in_the_folder(wheels):
    assert wheels["weights"].name.startswith("reprocodec_weights-")
    names = set(zipfile.ZipFile(wheels["weights"]).namelist())
    packaged = {n.split("/", 1)[1] for n in names if n.startswith("reprocodec_weights/")}
    expected = shipped_files()
    assert expected and {p for p in expected if p.endswith(".pt")}
    assert packaged == expected | {"__init__.py"}, sorted(packaged ^ (expected | {"__init__.py"}))
    # Its metadata: no dependencies (it is data), the version of the release that last changed
    # the weights: never newer than the package's (a code-only release keeps it).
    meta = zipfile.ZipFile(wheels["weights"]).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist" not in meta
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    weights_version = tomllib.loads((WEIGHTS / "pyproject.toml").read_text())["project"]["version"]

    def release(v: str) -> tuple[int, ...]:
        return tuple(int(part) for part in v.split("."))

    assert release(weights_version) <= release(version)
    assert f"Version: {weights_version}" in meta


@pytest.mark.parametrize("project", [".", "reprocodec/weights"])
def test_editable_builds_print_no_setuptools_warnings(project, tmp_path):
    """What scripts/venv.sh runs on every call (pip install -e, no build isolation), through
    the backend directly: no warning but setuptools' "Editable installation." notice, the one
    that venv.sh silences by its exact message."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for folder in ("reprocodec", "server", "client"):
        shutil.copytree(REPO / folder, src / folder, ignore=junk)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-W", "ignore:Editable installation", "-c",
         f"from setuptools import build_meta; print(build_meta.build_editable({str(out)!r}))"],
        capture_output=True, text=True, timeout=300, cwd=src / project)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    for warning in (*SETUPTOOLS_WARNINGS, "Warning:", "InformationOnly"):
        assert warning not in output, output[output.find(warning) - 800:][:2000]
    assert list(out.glob("*.whl")), output[-2000:]


def test_every_shipped_model_is_a_pair_with_its_hash():
    """Whatever the names (models are added and replaced by training): each json has its .pt
    and names its SHA-256, and no .pt is without its json."""
    from reprocodec.shipped import sha256_file

    metas = sorted(WEIGHTS.glob("*.json"))
    assert metas
    assert {p.stem for p in WEIGHTS.glob("*.pt")} == {p.stem for p in metas}
    for meta in metas:
        assert json.loads(meta.read_text())["weights_sha256"] == sha256_file(
            meta.with_suffix(".pt")), meta.name


def test_light_client_install_runs_without_torch_and_has_no_weights(wheels, tmp_path):
    """The light wheel, installed on its own (no weights distribution, torch unimportable):
    the client and the command line work, and the weights folder is absent."""
    target = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                             "--no-index", "--target", str(target), str(wheels["light"])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (target / "reprocodec" / "weights").exists()
    assert not (target / "reprocodec_weights").exists()
    probe = f"""
import contextlib, io, sys
sys.modules["torch"] = None                 # as if not installed
sys.modules["reprocodec_weights"] = None    # the weights distribution is not installed
sys.path.insert(0, {str(target)!r})
import reprocodec, reprocodec.client, reprocodec.cli
assert reprocodec.__file__.startswith({str(target)!r}), reprocodec.__file__
from reprocodec import shipped
assert shipped.WEIGHTS_DIR == shipped.CHECKOUT_WEIGHTS_DIR and not shipped.WEIGHTS_DIR.exists()
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        reprocodec.cli.main(["--help"])
    except SystemExit as e:
        assert e.code in (0, None), e.code
assert "usage: reprocodec" in out.getvalue()
from reprocodec.errors import UnknownModelError
try:
    shipped.model_files("bmshj2018-hyperprior-q2", shipped.WEIGHTS_DIR, "image", lambda: [])
except UnknownModelError as e:
    assert "reprocodec/weights" in str(e) and "REPROCODEC_WEIGHTS_DIR" in str(e), e
else:
    raise AssertionError("no weights, yet a model was found")
print("light ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "REPROCODEC_WEIGHTS_DIR"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0 and "light ok" in result.stdout, result.stdout + result.stderr


def weights_dir_in_subprocess(env: dict[str, str]) -> Path:
    """reprocodec.shipped.WEIGHTS_DIR in a fresh interpreter of this environment, run from
    the checkout as the test suite is."""
    base = {k: v for k, v in os.environ.items() if k != "REPROCODEC_WEIGHTS_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", "from reprocodec.shipped import WEIGHTS_DIR; print(WEIGHTS_DIR)"],
        capture_output=True, text=True, timeout=60, env=base | env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def test_server_install_finds_the_shipped_weights(tmp_path):
    """This environment is a server set-up (scripts/venv.sh): WEIGHTS_DIR is the checkout's
    weights folder, through the installed reprocodec-weights distribution where it is
    installed (an environment set up before it existed finds the same folder beside the
    package), and REPROCODEC_WEIGHTS_DIR overrides both."""
    found = weights_dir_in_subprocess({})
    assert found.resolve() == WEIGHTS.resolve()
    spec = importlib.util.find_spec("reprocodec_weights")
    if spec is not None:  # scripts/venv.sh installs it (editable)
        assert Path(next(iter(spec.submodule_search_locations))).resolve() == WEIGHTS.resolve()
    other = tmp_path / "other"
    other.mkdir()
    assert weights_dir_in_subprocess({"REPROCODEC_WEIGHTS_DIR": str(other)}) == other


def test_installed_weights_package_comes_before_the_checkout_folder(tmp_path):
    """An installed reprocodec_weights (the Docker image, a hand install) is where the weights
    are looked up first; the folder beside the package is the last resort."""
    site = tmp_path / "site"
    (site / "reprocodec_weights").mkdir(parents=True)
    (site / "reprocodec_weights" / "__init__.py").write_text("")
    found = weights_dir_in_subprocess({"PYTHONPATH": str(site)})
    assert found == (site / "reprocodec_weights").resolve()


def test_checkout_folder_is_the_fallback(monkeypatch):
    from reprocodec import shipped

    monkeypatch.delenv("REPROCODEC_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert shipped.find_weights_dir() == shipped.CHECKOUT_WEIGHTS_DIR == WEIGHTS.resolve()
    monkeypatch.setenv("REPROCODEC_WEIGHTS_DIR", "/somewhere")
    assert shipped.find_weights_dir() == Path("/somewhere")


def test_server_setups_install_the_weights_distribution():
    """Every server set-up installs reprocodec/weights from the checkout (no download at run
    time), and the venv's cache key covers the weights distribution's project table."""
    venv_sh = (REPO / "scripts" / "venv.sh").read_text()
    assert venv_sh.count('-e "$root/reprocodec/weights"') == 2, "first build and every run"
    assert "reprocodec/weights/pyproject.toml" in venv_sh
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install --no-deps . ./reprocodec/weights" in dockerfile
    # The server extra does not name the weights distribution: no index serves it, so pip
    # would fail (or fetch someone else's) where the checkout's folder is not given.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any("weights" in r for extra in project["optional-dependencies"].values()
                   for r in extra)
    setuptools_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not any("weights" in p for p in setuptools_config["packages"])
    assert not any("weights" in p for p in setuptools_config["package-data"])
