"""How the agent runs inside a job's own image (``job run --image``): the image needs
neither Python nor anything of ours.

The worker image's Python, its standard library, grpcio/protobuf, the agent and every
shared library they load (the dynamic loader included) are copied by a container of the
worker image (``fill_command``) into a volume, the *bundle*: a Docker volume filled once
and shared, or a pod's emptyDir filled by an init container. The job's container mounts
it read-only at ``MOUNT`` and starts the bundle's own dynamic loader on the bundle's
Python (``ENTRYPOINT``): the agent then uses none of the image's libraries (an Alpine
image's musl, a distroless image without a shell), while the command it runs is the
image's own. Argo's and Tekton's entrypoint injection, with a loader instead of a static
binary.
"""

from __future__ import annotations

from collections.abc import Mapping

# Where a job's container sees the bundle, and the bundle's fixed layout under it.
MOUNT = "/opt/hodei-agent"
_AGENT = f"{MOUNT}/agent"
ENTRYPOINT = [f"{_AGENT}/ld.so", "--library-path", f"{_AGENT}/lib", f"{_AGENT}/python", "-m", "hodei_worker.agent"]
_PYTHON_ENV = {
    "PYTHONHOME": f"{_AGENT}/home",
    "PYTHONPATH": f"{_AGENT}/site",
    "PYTHONNOUSERSITE": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}

# Run by the worker image's python3 with the volume at sys.argv[1]. Builds the bundle under
# a name of its own and renames it to agent/ once whole: a volume already filled (by this
# server before, or another server at the same time) is kept as it is.
_FILL = r"""
import os, re, shutil, subprocess, sys, tempfile
import grpc, google.protobuf, hodei_worker.agent
volume = sys.argv[1]
if not os.path.isdir(os.path.join(volume, "agent")):
    def site_of(module, top):
        return module.__file__[: module.__file__.rindex("/" + top + "/")]
    stdlib = os.path.dirname(os.__file__)
    sites = {site_of(grpc, "grpc"), site_of(google.protobuf, "google"), site_of(hodei_worker, "hodei_worker")}
    build = tempfile.mkdtemp(dir=volume, prefix=".fill-")
    shutil.copytree(stdlib, os.path.join(build, "home/lib", os.path.basename(stdlib)), ignore_dangling_symlinks=True)
    for site in sorted(sites):
        if not site.startswith(stdlib + "/"):  # a site inside the standard library came with it
            shutil.copytree(site, os.path.join(build, "site"), ignore_dangling_symlinks=True, dirs_exist_ok=True)
    loader = next(line.split()[-1] for line in open("/proc/self/maps") if re.search(r"/ld-linux[^/]*\.so", line))
    elves = [sys.executable] + [os.path.join(d, f) for d, _, fs in os.walk(build) for f in fs if ".so" in f]
    libraries = set()
    for elf in elves:
        listed = subprocess.run([loader, "--list", elf], capture_output=True, text=True).stdout
        libraries.update(re.findall(r"=> (/\S+)", listed))
    os.makedirs(os.path.join(build, "lib"))
    for library in libraries:
        shutil.copy(library, os.path.join(build, "lib", os.path.basename(library)))
    shutil.copy(loader, os.path.join(build, "ld.so"))
    shutil.copy(sys.executable, os.path.join(build, "python"))
    os.chmod(build, 0o755)
    try:
        os.rename(build, os.path.join(volume, "agent"))
    except OSError:
        shutil.rmtree(build)
"""


def fill_command(volume: str) -> list[str]:
    """The worker image's command that fills the bundle mounted at ``volume``."""
    return ["python3", "-c", _FILL, volume]


def agent_env(agent_vars: Mapping[str, str]) -> dict[str, str]:
    """The agent's whole environment in a job's image: its own variables (``agent_vars``),
    the bundle's Python's, and the names of both, so that the agent tells them from the
    image's own ENV, which the command gets (``HODEI_AGENT_VARIABLES``)."""
    env = {**_PYTHON_ENV, **agent_vars}
    return {**env, "HODEI_AGENT_VARIABLES": ",".join(sorted([*env, "HODEI_AGENT_VARIABLES"]))}
