"""Builds the gRPC stubs of Quiver's protos into the package as it is built.

The protos live in the repository's `proto/` folder (one level up; `pip install ./python`
builds in place) and are compiled by grpcio-tools, a build requirement, into
`quiver/v1/*_pb2.py` and `*_pb2_grpc.py` beside the hand-written code. The generated code
checks at import that grpcio and protobuf are at least the versions that generated it, so the
package requires exactly that.
"""

import re
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def proto_root() -> Path:
    for candidate in (HERE.parent / "proto", HERE / "proto"):
        if (candidate / "quiver" / "v1").is_dir():
            return candidate
    sys.exit("quiver-client: no proto/quiver/v1 beside or inside python/; build from a clone of the repository")


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    root = proto_root()
    protos = sorted(str(p.relative_to(root)) for p in (root / "quiver" / "v1").glob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["grpc_tools.protoc", f"-I{root}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        sys.exit(f"quiver-client: protoc failed on {protos}")
    (out / "quiver" / "v1" / "__init__.py").write_text('"""Generated from proto/quiver/v1 when the package was built."""\n')


def requirements() -> list:
    """grpcio and protobuf at least as new as the generators."""
    from importlib.metadata import version

    tools = version("grpcio-tools")
    gen = sorted((HERE / "build" / "gen").rglob("*_pb2.py"))
    protobuf = None
    if gen:
        m = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+)", gen[0].read_text())
        if m:
            protobuf = ".".join(m.groups())
    reqs = [f"grpcio>={tools}", "pyarrow>=14"]
    reqs.append(f"protobuf>={protobuf}" if protobuf else "protobuf>=5")
    return reqs


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        generate(Path(self.build_lib))


gen = HERE / "build" / "gen"
gen.mkdir(parents=True, exist_ok=True)
generate(gen)
setup(cmdclass={"build_py": BuildWithStubs}, install_requires=requirements())
