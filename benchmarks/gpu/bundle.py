"""The GPU kit's wheel bundle: what the device lacks, for its Python 3.12 on x86-64 Linux, under 64 MiB.

The device starts bare with Python 3.12, torch, transformers, numpy, scipy, scikit-image, pandas,
matplotlib and most of the scientific stack, but none of nnU-Net's own packages, and it has no
network. The device tool carries at most 64 MiB per call, the working tree included. So the bundle
is nnU-Net 2.8.1 installed with ``--no-deps`` plus exactly the packages its train / plan / predict
path imports that the device does not have (:data:`WHEELS`), measured:

* ``SimpleITK`` (nnU-Net's default image reader, and ``mosmos-synthetic``'s writer) is 52.8 MB as
  published, and the whole set 69 MB, over the limit by itself. Wheels are zip files and pip reads
  every compression method of Python's ``zipfile``, so :func:`repack` rewrites each wheel with LZMA
  (same files, same RECORD hashes, same name); that is what brings the set under the limit.
* not carried, because nothing on that path imports them: ``graphviz``, ``imagecodecs``, ``yacs``
  (nnU-Net's metadata lists them), ``future``/``unittest2`` (batchgenerators'), and ``pydantic``/
  ``h2`` (blosc2's, imported only by its remote/table features).
* ``timm`` is on the device, but dynamic-network-architectures 0.4.4 pins ``timm<1.0.23`` and
  nnU-Net's trainer search imports its Primus architecture; the pinned one is carried so that the
  version the local tests ran is the one that runs there.
* ``acvl-utils`` is published as a source archive only; it is pure Python and built into a wheel here.

    python -m benchmarks.gpu.bundle build DIR    # download (cp312 manylinux), build, repack, check
    python -m benchmarks.gpu.bundle check DIR    # the 64 MiB check only: bundle + the working tree

Part of the uninstalled harness (see :mod:`benchmarks`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: the device tool's limit for one call: the working tree (tracked + untracked-not-ignored) and carried paths
LIMIT_BYTES = 64 * 2 ** 20
#: the versions the local test suite runs (nnunetv2's pins: acvl-utils <0.3, dna <0.5, blosc2 >= 3.3.2)
WHEELS = ["nnunetv2==2.8.1", "dynamic-network-architectures==0.4.4", "batchgenerators==0.25.5",
          "batchgeneratorsv2==0.3.6", "acvl-utils==0.2.6", "SimpleITK==2.5.7", "nibabel==5.4.2", "blosc2==4.14.1",
          "ndindex==1.10.1", "numexpr==2.14.2", "connected-components-3d==4.1.1", "timm==1.0.22"]
#: published as sdists only (pure Python): built with ``pip wheel``
FROM_SOURCE = {"acvl-utils==0.2.6"}
#: the device's Python (``--python-version 3.11`` builds a bundle for this machine's, to test the install here)
DEVICE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def download(folder: Path, python_version: str = DEVICE_PYTHON, pip=(sys.executable, "-m", "pip")) -> None:
    """The wheels of :data:`WHEELS` for the device (binary-only, no dependencies) into ``folder``."""
    platform = ["--python-version", python_version, "--implementation", "cp",
                *[a for tag in PLATFORMS for a in ("--platform", tag)]]
    folder.mkdir(parents=True, exist_ok=True)
    binary = [w for w in WHEELS if w not in FROM_SOURCE]
    subprocess.run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", *platform, "-d", str(folder),
                    *binary], check=True)
    for req in sorted(FROM_SOURCE):
        subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", str(folder), req], check=True)


def repack(wheel: Path) -> tuple[int, int]:
    """Rewrite ``wheel`` with every member LZMA-compressed (contents, order and names unchanged);
    returns (bytes before, bytes after). A wheel that does not shrink is left as it was."""
    before = wheel.stat().st_size
    with tempfile.NamedTemporaryFile(dir=wheel.parent, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp_path, "w", zipfile.ZIP_LZMA) as dst:
            for info in src.infolist():
                data = src.read(info)  # checks the CRC
                out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                out.external_attr, out.compress_type = info.external_attr, zipfile.ZIP_LZMA
                dst.writestr(out, data)
        with zipfile.ZipFile(tmp_path) as check:
            bad = check.testzip()
            if bad is not None:
                raise RuntimeError(f"repacked {wheel.name}: member {bad} does not read back")
        after = tmp_path.stat().st_size
        if after < before:
            os.replace(tmp_path, wheel)
            return before, after
        return before, before
    finally:
        tmp_path.unlink(missing_ok=True)


def working_tree_bytes(repo: Path = REPO) -> int:
    """What the device tool sends besides the carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.split(b"\0")
    total = 0
    for name in {n for n in listed if n}:
        path = repo / os.fsdecode(name)
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def check(folder: Path, repo: Path = REPO) -> dict:
    """Sizes of the bundle's wheels, the working tree and both together against :data:`LIMIT_BYTES`."""
    wheels = sorted(folder.glob("*.whl"))
    missing = [w for w in WHEELS if not any(_matches(p.name, w) for p in wheels)]
    bundle = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    tree = working_tree_bytes(repo)
    total = bundle + tree
    return {"bundle": str(folder), "wheels": {p.name: p.stat().st_size for p in wheels}, "missing": missing,
            "bundle_bytes": bundle, "working_tree_bytes": tree, "total_bytes": total, "limit_bytes": LIMIT_BYTES,
            "total_mib": round(total / 2 ** 20, 2), "fits": total < LIMIT_BYTES and not missing}


def _matches(filename: str, requirement: str) -> bool:
    name, version = requirement.split("==")
    norm = name.lower().replace("-", "_")
    return filename.lower().startswith(f"{norm}-{version}-")


def report(result: dict) -> str:
    lines = [f"{n:<78s} {s / 2 ** 20:7.2f} MiB" for n, s in result["wheels"].items()]
    lines += [f"{'bundle':<78s} {result['bundle_bytes'] / 2 ** 20:7.2f} MiB",
              f"{'working tree (tracked + untracked, not ignored)':<78s} "
              f"{result['working_tree_bytes'] / 2 ** 20:7.2f} MiB",
              f"{'total (limit 64 MiB per device call)':<78s} {result['total_mib']:7.2f} MiB  "
              + ("fits" if result["fits"] else "DOES NOT FIT")]
    if result["missing"]:
        lines.append(f"missing wheels: {', '.join(result['missing'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.bundle", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["build", "check"])
    p.add_argument("folder", nargs="?", default=str(REPO / ".gpu_bundle"), help="the bundle (default .gpu_bundle)")
    p.add_argument("--json", help="also write the check's JSON here")
    p.add_argument("--python-version", default=DEVICE_PYTHON, help="build: wheels for this Python (the device: 3.12)")
    args = p.parse_args(argv)
    folder = Path(args.folder).resolve()
    if args.what == "build":
        if folder.exists():
            shutil.rmtree(folder)
        download(folder, args.python_version)
        for wheel in sorted(folder.glob("*.whl")):
            before, after = repack(wheel)
            print(f"repacked {wheel.name}: {before / 2 ** 20:.2f} -> {after / 2 ** 20:.2f} MiB", file=sys.stderr)
    result = check(folder)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
