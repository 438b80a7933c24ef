"""Regenerate the checked-in protobuf/gRPC modules from proto/ (the one command).

    python scripts/gen_proto.py           # rewrite reprocodec/v1/*_pb2*.py
    python scripts/gen_proto.py --check   # exit 1 if the checked-in files are stale (CI)
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_PACKAGE = "reprocodec/v1"


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency (grpcio-tools)

    sources = (PROTO_DIR / OUT_PACKAGE).glob("*.proto")
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in sources)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / OUT_PACKAGE).glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        target = ROOT / OUT_PACKAGE
        if args.check:
            stale = [
                f.name for f in fresh if not (target / f.name).exists()
                or not filecmp.cmp(f, target / f.name, shallow=False)
            ]
            extra = {p.name for p in target.glob("*_pb2*.py*")} - {f.name for f in fresh}
            if stale or extra:
                print(f"generated protobuf code is stale: {sorted(stale) + sorted(extra)}; "
                      "run: python scripts/gen_proto.py", file=sys.stderr)
                return 1
            print(f"generated protobuf code is up to date ({len(fresh)} files)")
            return 0
        for old in target.glob("*_pb2*.py*"):
            old.unlink()
        for f in fresh:
            shutil.copy2(f, target / f.name)
        print(f"wrote {len(fresh)} files to {OUT_PACKAGE}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
