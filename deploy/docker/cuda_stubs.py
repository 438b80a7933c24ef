"""Stand-ins for the CUDA libraries that a CUDA build of torch links, for the CPU-only image.

    python cuda_stubs.py SITE_PACKAGES OUT_DIR

Why: the registry's Linux x86_64 torch wheel is a CUDA build, and no CPU-only wheel of the
pinned version is on the registry. The CPU image installs that same wheel without its CUDA
runtime packages (nvidia-*, cuda-*, triton: about 3 GB), so its CPU kernels are exactly the ones
the CUDA image, the test environment and the calibration ran. But libtorch_cpu.so, libtorch.so
and torch's Python module carry DT_NEEDED entries for libcudart, libcublas, libcudnn, ... and
the dynamic loader refuses to load them without those files ("libcudnn.so.9: cannot open shared
object file"), even though a CPU process never calls into them.

This script finds every library named in a DT_NEEDED entry under SITE_PACKAGES that is absent
(not in the tree, not known to ldconfig, not in the system library directories) and is a CUDA
library (others, such as numba's optional libtbb, are only named: a real dependency must not be
papered over). For each it builds a small shared object with that soname that defines exactly
the symbols the installed binaries import from it, under the same symbol versions. Each stub
function returns 100: a failure status in every CUDA library's convention (0 is success), and
for the runtime cudaErrorNoDevice, which torch reads as "no GPU" (torch.cuda.is_available() is
False). The few functions that return a pointer (error strings, the fat-binary registration
handle that the static constructors of libtorch_cuda.so pass back to the runtime) return a
valid one. So a CPU process loads and runs, and any attempt to use CUDA fails with an error
instead of computing.

The NVIDIA driver's own libraries (libcuda.so.1, libnvidia-ml.so.1) are left alone: only code
that torch opens lazily for GPU work needs them.
Needs readelf and a C compiler (cc) at build time only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# Sonames that may be stubbed: the CUDA toolkit's and math libraries' (versioned .so names).
CUDA_SONAME = re.compile(
    r"^lib(cudart|cublas|cublasLt|cudnn(_\w+)?|cufft|cufftw|cufile|cupti|curand|cusolver"
    r"|cusolverMg|cusparse|cusparseLt|nccl|nvrtc|nvrtc-builtins|nvshmem_host|nvJitLink"
    r"|nvToolsExt|nvjpeg)\.so(\.\d+)*$")
# Installed with the NVIDIA driver on GPU hosts; never stubbed (the stub would shadow the driver).
DRIVER_SONAME = re.compile(r"^lib(cuda|nvidia-ml)\.so(\.\d+)*$")
# Unversioned imports are attributed to a stub by their name's prefix (longest first).
PREFIXES = [
    ("cublasLt", "libcublasLt"), ("cublas", "libcublas"), ("cudnn", "libcudnn"),
    ("cufft", "libcufft"), ("cuFile", "libcufile"), ("cupti", "libcupti"),
    ("curand", "libcurand"), ("cusolver", "libcusolver"), ("cusparseLt", "libcusparseLt"),
    ("cusparse", "libcusparse"), ("nccl", "libnccl"), ("nvrtc", "libnvrtc"),
    ("nvshmem", "libnvshmem_host"), ("nvJitLink", "libnvJitLink"), ("nvtx", "libnvToolsExt"),
    ("__cuda", "libcudart"), ("cuda", "libcudart"),
]
# Functions whose return value is a pointer that callers dereference or keep.
STRING_FUNCTION = re.compile(r"Get(Error|Status|Result)(String|Name|Message)$")
HANDLE_FUNCTIONS = {"__cudaRegisterFatBinary"}
STATUS = 100  # cudaErrorNoDevice; nonzero = failure for every CUDA library's status type


@dataclass
class Elf:
    path: Path
    needed: list[str] = field(default_factory=list)
    defined: set[str] = field(default_factory=set)
    # (name, version or None, type) of the strong undefined dynamic symbols.
    undefined: list[tuple[str, str | None, str]] = field(default_factory=list)
    version_file: dict[str, str] = field(default_factory=dict)  # needed version -> soname


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True,
                          check=True).stdout


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def read_elf(path: Path) -> Elf:
    elf = Elf(path)
    for m in re.finditer(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf("-d", str(path))):
        elf.needed.append(m.group(1))
    symbols = readelf("--dyn-syms", str(path))
    for line in symbols.splitlines():
        fields = line.split()
        if len(fields) < 8 or not fields[0].endswith(":") or not fields[0][:-1].isdigit():
            continue
        kind, bind, ndx, name = fields[3], fields[4], fields[6], fields[7]
        if ndx == "UND":
            if bind != "GLOBAL" or not name:
                continue  # weak imports may stay unresolved
            base, _, version = name.partition("@")
            elf.undefined.append((base, version or None, kind))
        elif bind in ("GLOBAL", "WEAK", "UNIQUE"):
            elf.defined.add(re.split(r"@@?", name)[0])
    current = None
    for line in readelf("-V", str(path)).splitlines():
        file_match = re.search(r"Version: \d+\s+File: (\S+)", line)
        if file_match:
            current = file_match.group(1)
            continue
        name_match = re.search(r"Name: (\S+)\s+Flags", line)
        if name_match and current:
            elf.version_file[name_match.group(1)] = current
    return elf


def system_library_paths() -> dict[str, Path]:
    """soname -> path, from the loader's cache and the standard directories."""
    found: dict[str, Path] = {}
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for d in ("/lib", "/usr/lib", "/lib64", "/usr/lib64", f"/lib/{multiarch}",
              f"/usr/lib/{multiarch}", "/usr/local/lib"):
        if os.path.isdir(d):
            for entry in os.scandir(d):
                found.setdefault(entry.name, Path(entry.path))
    try:
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        cache = ""
    for m in re.finditer(r"^\s*(\S+) \([^)]*\) => (\S+)$", cache, re.M):
        found.setdefault(m.group(1), Path(m.group(2)))
    return found


def plan_stubs(site_packages: Path) -> dict[str, dict[str, tuple[str | None, str]]]:
    """soname -> {symbol: (version, type)} for every missing CUDA library."""
    elves = [read_elf(p) for p in sorted(site_packages.rglob("*.so*"))
             if p.is_file() and not p.is_symlink() and is_elf(p)]
    in_tree = {e.path.name for e in elves}
    system = system_library_paths()
    missing = {n for e in elves for n in e.needed} - in_tree - system.keys()
    # Other absent libraries belong to optional features their packages load only on request
    # (numba's TBB threading layer wants libtbb): named, never stubbed. The build's round trip
    # (verify_install.py) shows that nothing the services run needs them.
    others = sorted(n for n in missing if not CUDA_SONAME.match(n) and not DRIVER_SONAME.match(n))
    if others:
        print(f"cuda_stubs: not CUDA, left absent: {' '.join(others)}", file=sys.stderr)
    stubbed = {n for n in missing if CUDA_SONAME.match(n)}

    # Everything some loaded object defines: the tree, the interpreter, and the system
    # libraries they need (followed transitively).
    defined: set[str] = set()
    for e in elves:
        defined |= e.defined
    queue = [n for e in elves for n in e.needed if n in system]
    seen: set[str] = set()
    interpreter = read_elf(Path(os.path.realpath(sys.executable)))
    defined |= interpreter.defined
    queue += [n for n in interpreter.needed if n in system]
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        lib = read_elf(system[name])
        defined |= lib.defined
        queue += [n for n in lib.needed if n in system]

    plan: dict[str, dict[str, tuple[str | None, str]]] = defaultdict(dict)
    unattributed = []
    for e in elves:
        wants = [n for n in e.needed if n in stubbed]
        if not wants:
            continue
        for name, version, kind in e.undefined:
            if version is not None:
                soname = e.version_file.get(version)
                if soname in stubbed:
                    plan[soname][name] = (version, kind)
                continue
            if name in defined:
                continue
            soname = attribute(name, wants)
            if soname is None:
                unattributed.append(f"{e.path.name}: {name}")
            else:
                plan[soname].setdefault(name, (None, kind))
    if unattributed:
        raise SystemExit("cuda_stubs: unresolved imports not attributable to a CUDA library:\n  "
                         + "\n  ".join(sorted(unattributed)[:50]))
    for soname in stubbed:
        plan.setdefault(soname, {})
    return dict(plan)


def attribute(symbol: str, wants: list[str]) -> str | None:
    """The stub (among the sonames the importing object needs) that should define `symbol`."""
    for prefix, base in PREFIXES:
        if symbol.startswith(prefix):
            matches = [w for w in wants if w.split(".so")[0] == base]
            if matches:
                return matches[0]
    return wants[0] if len(wants) == 1 and symbol.startswith(("cu", "nv", "__cu")) else None


def stub_source(soname: str, symbols: dict[str, tuple[str | None, str]]) -> str:
    lines = [
        f"/* Generated by deploy/docker/cuda_stubs.py: {soname} for a CPU-only install. */",
        f'static const char message[] = "CUDA is not available: {soname} is a stub (CPU-only '
        'image)";',
        "static void *handle[16];",
    ]
    for i, (name, (_, kind)) in enumerate(sorted(symbols.items())):
        label = f'__asm__("{name}")'
        if kind == "OBJECT":
            lines.append(f"__attribute__((used)) char o{i}[256] {label};")
        elif kind == "TLS":
            raise SystemExit(f"cuda_stubs: {soname}: thread-local import {name} is not supported")
        elif name == "cudaGetDeviceCount":
            lines.append(f"int f{i}(int *count) {label};")
            lines.append(f"int f{i}(int *count) {{ if (count) *count = 0; return {STATUS}; }}")
        elif STRING_FUNCTION.search(name):
            lines.append(f"const char *f{i}(void) {label};")
            lines.append(f"const char *f{i}(void) {{ return message; }}")
        elif name in HANDLE_FUNCTIONS:
            lines.append(f"void **f{i}(void) {label};")
            lines.append(f"void **f{i}(void) {{ return handle; }}")
        else:
            lines.append(f"int f{i}(void) {label};")
            lines.append(f"int f{i}(void) {{ return {STATUS}; }}")
    return "\n".join(lines) + "\n"


def version_script(soname: str, symbols: dict[str, tuple[str | None, str]]) -> str:
    """One version node per version the importers name; unversioned imports go in the first
    (the soname's own node), where they are the default version."""
    nodes: dict[str, list[str]] = {soname: []}
    for name, (version, _) in sorted(symbols.items()):
        nodes.setdefault(version or soname, []).append(name)
    out = []
    for i, (node, names) in enumerate(nodes.items()):
        exported = f" global:{''.join(f' {n};' for n in names)}" if names else ""
        local = " local: *;" if i == 0 else ""
        out.append(f"{node} {{{exported}{local} }};")
    return "\n".join(out) + "\n"


def build(site_packages: Path, out_dir: Path) -> dict[str, int]:
    plan = plan_stubs(site_packages)
    out_dir.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    built = {}
    for soname, symbols in sorted(plan.items()):
        src, script = out_dir / f"{soname}.c", out_dir / f"{soname}.map"
        src.write_text(stub_source(soname, symbols))
        script.write_text(version_script(soname, symbols))
        subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out_dir / soname),
                        f"-Wl,-soname,{soname}", f"-Wl,--version-script,{script}", str(src)],
                       check=True)
        src.unlink()
        script.unlink()
        built[soname] = len(symbols)
    return built


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    built = build(Path(argv[0]), Path(argv[1]))
    for soname, count in built.items():
        print(f"cuda_stubs: {soname}: {count} symbols")
    if not built:
        print("cuda_stubs: nothing to stub (no CUDA library is missing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
