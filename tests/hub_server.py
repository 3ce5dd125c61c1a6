"""A local stand-in of the hub's HTTP API over a folder laid out like the hub, for tests.

``ROOT/models/OWNER/NAME/...`` and ``ROOT/datasets/OWNER/NAME/...`` are the repos' files. The
server answers the requests huggingface_hub's ``HfApi.repo_info`` and ``hf_hub_download``
make (huggingface_hub 2.x, pointed here with ``HF_ENDPOINT``):

- ``GET /api/models/OWNER/NAME[/revision/REV]`` (``/api/datasets/...``): the repo's commit
  (``sha``) and files (``siblings``, each ``{"rfilename": ...}``);
- ``HEAD`` / ``GET /OWNER/NAME/resolve/REV/PATH`` (``/datasets/OWNER/NAME/resolve/...``):
  the file, with ``X-Repo-Commit``, ``ETag`` (as the hub's: a git blob SHA-1 for small text
  files, the SHA-256 for LFS files, sent as ``X-Linked-Etag``) and ``Content-Length``.

A repo's commit is a hash of its files, so changing a file moves the "default branch";
``REV`` may be ``main`` or that commit. Every request is counted in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_TEXT = (".json", ".txt", ".md")


def repo_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def commit_of(folder: Path) -> str:
    digest = hashlib.sha1()
    for name in repo_files(folder):
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()


def etag_of(name: str, data: bytes) -> tuple[str, bool]:
    """(etag, is_lfs): git's blob SHA-1 for small text files, the content's SHA-256 else."""
    if name.endswith(_TEXT):
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(), False
    return hashlib.sha256(data).hexdigest(), True


class _Handler(BaseHTTPRequestHandler):
    root: Path
    requests: list[str]

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _repo(self, kind: str, owner: str, name: str) -> Path | None:
        folder = self.root / kind / owner / name
        return folder if folder.is_dir() else None

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def _not_found(self) -> None:
        self._send(404, {"X-Error-Code": "EntryNotFound", "Content-Length": "0"})

    def _answer(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.requests.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            return self._info(parts[1:])
        kind = "datasets" if parts[0] == "datasets" else "models"
        parts = parts[1:] if kind == "datasets" else parts
        if len(parts) < 5 or parts[2] != "resolve":
            return self._not_found()
        folder = self._repo(kind, parts[0], parts[1])
        if folder is None:
            return self._send(404, {"X-Error-Code": "RepoNotFound", "Content-Length": "0"})
        commit = commit_of(folder)
        file = folder / "/".join(parts[4:])
        if parts[3] not in ("main", commit) or not file.is_file():
            return self._not_found()
        data = file.read_bytes()
        etag, lfs = etag_of(file.name, data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Content-Length": str(len(data))}
        if lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        self._send(200, headers, data)

    def _info(self, parts: list[str]) -> None:
        # [models|datasets, owner, name, (revision, REV)]
        folder = self._repo(parts[0], parts[1], parts[2]) if len(parts) >= 3 else None
        if folder is None:
            return self._send(404, {"X-Error-Code": "RepoNotFound", "Content-Length": "0"})
        commit = commit_of(folder)
        if len(parts) == 5 and parts[4] not in ("main", commit):
            return self._send(404, {"X-Error-Code": "RevisionNotFound", "Content-Length": "0"})
        body = json.dumps(
            {
                "id": f"{parts[1]}/{parts[2]}",
                "sha": commit,
                "private": False,
                "siblings": [{"rfilename": name} for name in repo_files(folder)],
            }
        ).encode()
        self._send(
            200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body
        )

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._answer()

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer()


@contextmanager
def serve_hub(root: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve ``root`` on 127.0.0.1; yields (endpoint URL, list of the requests made)."""
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"root": root, "requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
