"""Regenerate the Python code for `proto/baton/v1/*.proto` into `baton_pb/v1/`.

`python -m baton_pb.regenerate [OUT_DIR]`. protoc lays the code out as `baton/v1/*_pb2.py` with
`from baton.v1 import ...` imports; `baton` is our CLI package, so the code is moved to
`baton_pb/v1/` and those imports are rewritten to `baton_pb.v1`. A test regenerates into a temp
dir and diffs against the committed files.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
IMPORT_PATTERN = re.compile(r"^from baton\.v1 import", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "baton" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Writes the generated modules into `out_dir` (the `v1` package); returns their paths."""
    grpc_include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{grpc_include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for source in sorted((Path(tmp) / "baton" / "v1").iterdir()):
            text = IMPORT_PATTERN.sub("from baton_pb.v1 import", source.read_text())
            target = out_dir / source.name
            target.write_text(text)
            written.append(target)
        (out_dir / "__init__.py").write_text('"""Generated from proto/baton/v1 by baton_pb.regenerate."""\n')
        return written


def main() -> int:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "baton_pb" / "v1"
    if out_dir.exists() and out_dir == REPO / "baton_pb" / "v1":
        shutil.rmtree(out_dir)
    for path in generate(out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
