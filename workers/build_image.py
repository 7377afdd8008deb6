"""Builds ``hodei-jobs-worker:latest`` (``just build-worker``).

The image is a base with Python 3.11, grpcio and protobuf, plus the agent layer of
``workers/Dockerfile``. The base comes from ``workers/Dockerfile.base`` when
``python:3.11-slim`` can be pulled; otherwise (no registry, as on our machines) it is
assembled offline: the host's Debian python3.11 with its standard library, the shared
libraries ``ldd`` names, busybox and bash, grpcio/protobuf wheels from PyPI, all
``docker import``ed. The base is tagged by a hash of its inputs and reused.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "hodei-jobs-worker:latest"
HOST_PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
SKIP_STDLIB = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "turtledemo", "EXTERNALLY-MANAGED"}
SITE = "usr/local/lib/python3.11/dist-packages"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(message: str) -> None:
    print(f"[build-worker] {message}", flush=True)


def versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("grpcio", "protobuf")}


def base_tag(kind: str) -> str:
    recipe = (Path(__file__).read_bytes() + (ROOT / "workers" / "Dockerfile.base").read_bytes()).hex()
    digest = hashlib.sha256(f"{kind}{versions()}{recipe}".encode()).hexdigest()[:12]
    return f"hodei-worker-base:{kind}-{digest}"


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def try_online_base(client: docker.DockerClient) -> str | None:
    tag = base_tag("online")
    if image_exists(client, tag):
        return tag
    try:
        client.images.pull("python", tag="3.11-slim")
    except Exception as exc:
        log(f"cannot pull python:3.11-slim ({type(exc).__name__}); building the base offline")
        return None
    v = versions()
    client.images.build(
        path=str(ROOT / "workers"),
        dockerfile="Dockerfile.base",
        tag=tag,
        buildargs={"GRPCIO_VERSION": v["grpcio"], "PROTOBUF_VERSION": v["protobuf"]},
        network_mode="host",
        rm=True,
    )
    return tag


def _run(*cmd: str, cwd: Path | None = None) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd).stdout


def _copy_file(source: Path, rootfs: Path) -> None:
    target = rootfs / str(source).lstrip("/")
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.resolve(), target)


def _elf_files(rootfs: Path) -> list[Path]:
    candidates = [
        p
        for p in rootfs.rglob("*")
        if p.is_file() and not p.is_symlink() and (p.suffix == ".so" or os.access(p, os.X_OK) or ".so." in p.name)
    ]
    found = []
    for chunk in range(0, len(candidates), 200):
        output = _run("file", "--no-pad", "-F", "\t", *map(str, candidates[chunk : chunk + 200]))
        for line in output.splitlines():
            name, _, kind = line.partition("\t")
            if "ELF" in kind and "dynamically linked" in kind:
                found.append(Path(name))
    return found


def _libraries(binary: Path) -> set[Path]:
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    libs = set()
    for line in result.stdout.splitlines():
        parts = line.split()
        for part in parts:
            if part.startswith("/"):
                libs.add(Path(part))
    return libs


def assemble_rootfs(rootfs: Path, work: Path) -> None:
    if not HOST_PYTHON.exists():
        raise SystemExit(f"{HOST_PYTHON} is missing: install Debian's python3.11 (apt-get install python3.11)")
    for directory in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "lib64",
        "etc",
        "opt",
        "proc",
        "sys",
        "dev",
        "root",
        "home/hodei",
    ):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    for tmp in ("tmp", "var/tmp"):
        (rootfs / tmp).mkdir(parents=True, exist_ok=True)
        (rootfs / tmp).chmod(0o1777)
    shutil.copy2(HOST_PYTHON, rootfs / "usr/bin/python3.11")
    for alias in ("python3", "python"):
        (rootfs / "usr/bin" / alias).symlink_to("python3.11")
    shutil.copytree(
        STDLIB,
        rootfs / str(STDLIB).lstrip("/"),
        symlinks=True,
        ignore=lambda _, names: [n for n in names if n in SKIP_STDLIB or n.startswith("config-3.11")],
    )
    v = versions()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(rootfs / SITE),
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            f"grpcio=={v['grpcio']}",
            f"protobuf=={v['protobuf']}",
        ],
        check=True,
    )
    _run("apt-get", "download", "busybox-static", cwd=work)
    deb = next(work.glob("busybox-static_*.deb"))
    _run("dpkg-deb", "-x", str(deb), str(work / "busybox"))
    busybox = rootfs / "bin/busybox"
    shutil.copy2(work / "busybox/bin/busybox", busybox)
    for applet in _run(str(busybox), "--list").split():
        link = rootfs / "bin" / applet
        if not link.exists() and applet != "busybox":
            link.symlink_to("busybox")
    shutil.copy2("/bin/bash", rootfs / "bin/bash")
    for binary in _elf_files(rootfs):
        for library in _libraries(binary):
            _copy_file(library, rootfs)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nhodei:x:1000:1000:hodei:/home/hodei:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\nhodei:x:1000:\n")
    (rootfs / "etc/hosts").write_text("127.0.0.1 localhost\n")
    os.chown(rootfs / "home/hodei", 1000, 1000)


def offline_base(client: docker.DockerClient) -> str:
    tag = base_tag("offline")
    if image_exists(client, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="hodei-rootfs-") as tmp:
        rootfs, work = Path(tmp) / "rootfs", Path(tmp) / "work"
        rootfs.mkdir()
        work.mkdir()
        assemble_rootfs(rootfs, work)
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        repository, _, version = tag.partition(":")
        client.api.import_image(
            src=str(archive),
            repository=repository,
            tag=version,
            changes=[f"ENV PATH={PATH}", 'CMD ["/bin/sh"]'],
        )
    if not image_exists(client, tag):
        raise SystemExit("docker import did not produce the base image")
    return tag


def agent_context() -> io.BytesIO:
    """Only what the agent needs: hodei/__init__.py, hodei/_proto, the agent package."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(ROOT / "workers/Dockerfile", arcname="Dockerfile")
        tar.add(ROOT / "hodei/__init__.py", arcname="hodei/__init__.py")
        for path in sorted((ROOT / "hodei/_proto").glob("*.py")):
            tar.add(path, arcname=f"hodei/_proto/{path.name}")
        for path in sorted((ROOT / "workers/hodei_worker").glob("*.py")):
            tar.add(path, arcname=f"workers/hodei_worker/{path.name}")
    buffer.seek(0)
    return buffer


def build(offline: bool | None, client: docker.DockerClient | None = None) -> str:
    if client is None:
        client = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=600)
    started = time.monotonic()
    base = None if offline else try_online_base(client)
    if base is None:
        base = offline_base(client)
    log(f"base image {base}")
    replaced = _image_id(client, IMAGE)
    client.images.build(
        fileobj=agent_context(),
        custom_context=True,
        tag=IMAGE,
        buildargs={"BASE": base},
        network_mode="host",
        rm=True,
    )
    size = client.images.get(IMAGE).attrs["Size"] / 1e6
    log(f"built {IMAGE} ({size:.0f} MB) in {time.monotonic() - started:.1f}s")
    if replaced is not None and replaced != _image_id(client, IMAGE):
        _remove_untagged(client, replaced)
    return IMAGE


def _image_id(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        return None


def _remove_untagged(client: docker.DockerClient, image_id: str) -> None:
    """The image a rebuild took the tag from, once nothing names it (75 MB a rebuild left
    dangling); one a container still uses, or another tag names, stays."""
    try:
        if not client.images.get(image_id).tags:
            client.images.remove(image_id)
            log(f"removed the image it replaced, {image_id[:19]}")
    except docker.errors.APIError as exc:  # in use by a container, or gone already
        log(f"kept the image it replaced, {image_id[:19]}: {exc.explanation or exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", action="store_true", help="skip the pull attempt and assemble the base offline")
    args = parser.parse_args()
    build(True if args.offline else None)


if __name__ == "__main__":
    main()
