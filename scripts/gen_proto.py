"""Generate the Python stubs of proto/mixprec/v1 into mixprec/v1 (the only way they are made).

Usage: python scripts/gen_proto.py [--out DIR]   (DIR defaults to the repository root)
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    protos = sorted(PROTO_ROOT.glob("mixprec/v1/*.proto"))
    (out / "mixprec" / "v1").mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out / "mixprec" / "v1" / "__init__.py"
    init.write_text('"""Generated from proto/mixprec/v1 by scripts/gen_proto.py; do not edit."""\n')
    return sorted((out / "mixprec" / "v1").glob("*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
