"""A container registry for tests: the pull side of the registry HTTP API (v2) on a free
loopback port, serving images copied from the Docker engine (``docker save``). Docker
pulls from 127.0.0.1 over plain HTTP without configuration, so a job's image can come
from a registry with no network: pulled for real, slowly, or never (``hold``)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
import uuid
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import docker

from hodei.devdb import free_port

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """``push`` copies an image of ``client``'s engine under a name and tag; pulls of it are logged in
    ``asked`` (``(kind, name, reference)``). While ``hold`` is on, a layer's download waits
    (``held`` says one does) until ``release``: a pull that takes as long as the test wants."""

    def __init__(self, client: Any) -> None:
        self.client = client  # the Docker engine that pulls (its images of ours go at the end)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.asked: list[tuple[str, str, str]] = []
        self.held = threading.Event()
        self.layers_sent = 0
        self._open = threading.Event()
        self._open.set()
        self._blobs: dict[str, bytes] = {}
        self._layers: set[str] = set()
        self._manifests: dict[tuple[str, str], bytes] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Registry:
        self._forget()  # pulled from a registry of an earlier run that had this port
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._forget()

    def _forget(self) -> None:
        """Remove every image the engine holds from this host, by tag and by digest (one a
        tag moved off keeps its digest): a later registry on this port must find none, or its
        first pull is not one. (The engine's name filter would not do: its ``*`` stops at a
        ``/``.)"""
        mine = f"{self.host}/"
        for image in self.client.images.list():
            for reference in (*image.tags, *(image.attrs.get("RepoDigests") or ())):
                if reference.startswith(mine):
                    with suppress(docker.errors.ImageNotFound):  # gone with its last tag
                        self.client.images.remove(reference)

    def push(self, image: str, name: str, tag: str) -> str:
        """The engine's ``image`` served as ``name:tag`` (a tag pushed again moves); its
        reference for a pull."""
        with tarfile.open(fileobj=io.BytesIO(b"".join(self.client.images.get(image).save(named=False)))) as saved:

            def member(path: str) -> bytes:
                extracted = saved.extractfile(path)
                assert extracted is not None, path
                return extracted.read()

            (entry,) = json.loads(member("manifest.json"))
            config = member(entry["Config"])
            layers = [gzip.compress(member(path), mtime=0) for path in entry["Layers"]]
        for blob in (config, *layers):
            self._blobs[_digest(blob)] = blob
        self._layers.update(_digest(layer) for layer in layers)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": _digest(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer),
                    "digest": _digest(layer),
                }
                for layer in layers
            ],
        }
        encoded = json.dumps(manifest).encode()
        self._manifests[(name, tag)] = self._manifests[(name, _digest(encoded))] = encoded
        return f"{self.host}/{name}:{tag}"

    def push_new(self, base: str, name: str, *changes: str) -> str:
        """``base``'s files, a file of its own and ``changes`` (Dockerfile lines) as
        ``name:1`` here and nowhere else: a layer the engine lacks (a pull skips the ones it
        has), the image removed from the engine once copied."""
        container = self.client.containers.run(base, ["sh", "-c", f"echo {uuid.uuid4()} > /tmp/made"], detach=True)
        try:
            container.wait(timeout=60)
            image = container.commit(changes=list(changes)).id
        finally:
            container.remove()
        reference = self.push(image, name, "1")
        self.client.images.remove(image)
        return reference

    def hold(self) -> None:
        self.held.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def pulls(self, name: str) -> int:
        """How many times ``name``'s manifest was asked for by tag: a pull each (the engine
        then asks for it by digest too)."""
        return sum(1 for kind, asked, ref in self.asked if (kind, asked) == ("manifests", name) and ":" not in ref)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                if self.path == "/v2/":
                    self._send(200, b"{}", "application/json", body)
                    return
                found = _PATH.match(self.path)
                if found is None:
                    self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}', "application/json", body)
                    return
                name, kind, ref = found["name"], found["kind"], found["ref"]
                registry.asked.append((kind, name, ref))
                if kind == "manifests":
                    data = registry._manifests.get((name, ref))
                    kind_of = MANIFEST
                else:
                    data = registry._blobs.get(ref)
                    kind_of = "application/octet-stream"
                    if ref in registry._layers and body and not registry._open.is_set():
                        registry.held.set()
                        registry._open.wait()
                if data is None:
                    self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', "application/json", body)
                    return
                self._send(200, data, kind_of, body, digest=_digest(data))
                if body and ref in registry._layers:
                    registry.layers_sent += 1

            def _send(self, status: int, data: bytes, kind: str, body: bool, digest: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                if digest is not None:
                    self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler
