"""A local stand-in for the Hugging Face Hub HTTP API: just what `create_repo` and `upload_folder` call.

Runs `http.server` on 127.0.0.1 (ephemeral port) in a background thread and shuts itself down after
`lifetime` seconds at the latest. Point huggingface_hub at it with `HfApi(endpoint=hub.url)`.

Endpoints (huggingface_hub 2.4):
    GET  /api/whoami-v2                                   the token's user
    POST /api/repos/create                                409 when the repo exists (exist_ok passes it)
    POST /api/validate-yaml                               README metadata check (create_commit path)
    GET  /api/models/{repo}[/revision/{rev}]              model_info (license look-ups)
    POST /api/models/{repo}/preupload/{rev}               every file "regular": no LFS / xet transfer
    POST /api/models/{repo}/commit/{rev}                  NDJSON: header + base64 "file" lines
    POST /api/models/{repo}/branch/{branch}               create_branch
    POST /api/models/{repo}/discussions                   create_pull_request (ref refs/pr/{num})
    GET  /api/models/{repo}/discussions/{num}             its details
Anything else answers 404 and is kept in `unhandled`, so a test can see an unexpected call.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "tester"
REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(rf"^/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?$"), "model_info"),
    ("POST", re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/api/models/{REPO}/branch/(?P<branch>[^/]+)$"), "create_branch"),
    ("POST", re.compile(rf"^/api/models/{REPO}/discussions$"), "create_discussion"),
    ("GET", re.compile(rf"^/api/models/{REPO}/discussions/(?P<num>\d+)$"), "discussion"),
]


class HubError(Exception):
    """An error answer: HTTP status, JSON body and the Hub's X-Error-Code header."""

    def __init__(self, status: int, message: str, code: str | None = None, data: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code
        self.data = data if data is not None else {"error": message}


class FakeHub:
    """In-memory repos (repo -> branch or PR ref -> path -> bytes) behind a real HTTP server."""

    def __init__(self, token: str = "hf_fake_write_token", lifetime: float = 120.0, models=None) -> None:
        self.token = token
        self.models: dict[str, dict[str, Any]] = dict(models or {})  # model_info answers for other repos
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.visibility: dict[str, str | None] = {}
        self.discussions: dict[str, list[dict[str, Any]]] = {}
        self.commits: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._timer = threading.Timer(lifetime, self.stop)  # bounded lifetime, whatever the test does
        self._timer.daemon = True
        self._stopped = False

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------
    # Handlers: (path params, query, body bytes) -> JSON answer; raise HubError for an error answer.
    # ------------------------------------------------------------------------------------------

    def _repo(self, repo: str) -> dict[str, dict[str, bytes]]:
        if repo not in self.repos:
            raise HubError(404, f"Repository Not Found for url: {repo}", "RepoNotFound")
        return self.repos[repo]

    def _branch(self, repo: str, quoted_rev: str) -> str:
        rev = unquote(quoted_rev)
        if rev not in self._repo(repo):
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return rev

    def whoami(self, p, q, body):
        return {"type": "user", "name": USER, "auth": {"accessToken": {"role": "write"}}}

    def create_repo(self, p, q, body):
        data = json.loads(body)
        repo = f"{data.get('organization') or USER}/{data['name']}"
        url = f"{self.url}/{repo}"
        if repo in self.repos:  # the Hub names the existing repo's URL in its 409 answer
            raise HubError(409, "You already created this model repo", data={"error": "exists", "url": url})
        self.repos[repo] = {"main": {}}
        self.visibility[repo] = data.get("visibility")
        return {"url": url, "name": repo}

    def validate_yaml(self, p, q, body):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        try:
            yaml.safe_load(match.group(1) if match else "")
        except yaml.YAMLError as err:
            raise HubError(400, "invalid YAML", data={"errors": [{"message": str(err)}]}) from err
        return {"errors": [], "warnings": []}

    def model_info(self, p, q, body):
        repo = p["repo"]
        if repo in self.models:
            return {"id": repo, **self.models[repo]}
        self._repo(repo)
        return {"id": repo, "private": self.visibility.get(repo) == "private"}

    def preupload(self, p, q, body):
        self._branch(p["repo"], p["rev"])
        files = json.loads(body)["files"]
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    def commit(self, p, q, body):
        repo = p["repo"]
        rev = self._branch(repo, p["rev"])
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        pr_url = None
        if q.get("create_pr") == ["1"]:
            rev, pr_url = self._open_pr(repo, lines[0]["value"]["summary"])
        files = dict(self.repos[repo][rev])
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unexpected encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:  # lfsFile etc.: never asked for, since preupload answers "regular"
                raise HubError(422, f"fake hub does not accept {line['key']!r} operations")
        self.repos[repo][rev] = files
        oid = hashlib.sha1(body + str(len(self.commits)).encode()).hexdigest()
        self.commits.append(
            {"repo": repo, "revision": rev, "summary": lines[0]["value"]["summary"], "oid": oid}
        )
        return {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr_url}

    def create_branch(self, p, q, body):
        branches = self._repo(p["repo"])
        branch = unquote(p["branch"])
        if branch in branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        branches[branch] = dict(branches["main"])
        return {}

    def _open_pr(self, repo: str, title: str) -> tuple[str, str]:
        items = self.discussions.setdefault(repo, [])
        num = len(items) + 1
        items.append({"num": num, "title": title})
        self.repos[repo][f"refs/pr/{num}"] = dict(self.repos[repo]["main"])
        return f"refs/pr/{num}", f"{self.url}/{repo}/discussions/{num}"

    def create_discussion(self, p, q, body):
        repo = p["repo"]
        self._repo(repo)
        data = json.loads(body)
        if not data.get("pullRequest"):
            raise HubError(400, "fake hub only opens pull requests")
        ref, url = self._open_pr(repo, data["title"])
        return {"num": int(ref.rsplit("/", 1)[1]), "url": url}

    def discussion(self, p, q, body):
        repo, num = p["repo"], int(p["num"])
        items = self.discussions.get(repo, [])
        if not 1 <= num <= len(items):
            raise HubError(404, "Discussion not found")
        return {
            "num": num,
            "title": items[num - 1]["title"],
            "author": {"name": USER},
            "createdAt": "2026-01-01T00:00:00.000Z",
            "status": "draft",
            "repo": {"name": repo, "type": "model"},
            "isPullRequest": True,
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
            "events": [],
        }


def _make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self, status: int, data: Any, code: str | None = None) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if code:
                self.send_header("X-Error-Code", code)
            self.end_headers()
            self.wfile.write(payload)

        def _dispatch(self, method: str) -> None:
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            body = self._body()
            with hub._lock:
                hub.requests.append((method, path))
            for route_method, pattern, name in ROUTES:
                match = pattern.match(path) if route_method == method else None
                if match is None:
                    continue
                public_read = name == "model_info" and match["repo"] in hub.models
                if not public_read and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._answer(401, {"error": "Invalid username or password."})
                    return
                try:
                    with hub._lock:
                        data = getattr(hub, name)(match.groupdict(), query, body)
                except HubError as err:
                    self._answer(err.status, err.data, err.code)
                    return
                self._answer(200, data)
                return
            with hub._lock:
                hub.unhandled.append((method, path))
            self._answer(404, {"error": f"fake hub: no route for {method} {path}"})

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

    return Handler
