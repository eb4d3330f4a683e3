"""A minimal fake Hugging Face Hub on 127.0.0.1 for the real huggingface_hub client (the routes an upload uses)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

GOOD_TOKEN = "hf_fake_good_token"
USER = "alice"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict] = field(default_factory=list)
    prs: list[dict[str, bytes]] = field(default_factory=list)  # files of pull request N (refs/pr/N) at prs[N-1]
    heads: dict[str, str] = field(default_factory=dict)  # revision -> last commit oid

    def files_at(self, revision: str) -> dict[str, bytes] | None:
        """Files of a branch or of ``refs/pr/N``."""
        if revision.startswith("refs/pr/"):
            number = int(revision.rsplit("/", 1)[1])
            return self.prs[number - 1] if 0 < number <= len(self.prs) else None
        return self.branches.get(revision)


def _pull_request(repo_id: str, number: int) -> dict:
    """The details the Hub gives for pull request ``number`` (what ``get_discussion_details`` reads)."""
    return {
        "title": "upload",
        "num": number,
        "author": {"name": USER},
        "createdAt": "2026-01-01T00:00:00.000Z",
        "status": "draft",
        "repo": {"name": repo_id, "type": "model"},
        "isPullRequest": True,
        "events": [],
        "changes": {"base": "refs/heads/main"},
        "filesWithConflicts": [],
    }


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_commits_after: int | None = None  # commits accepted before the server starts failing them
        self.fail_all_with: int | None = None  # every request answered with this status (a Hub that is down)
        self.base_models: dict[str, dict] = {}  # read-only model infos (cardData) of base models
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def commit_count(self) -> int:
        return sum(len(r.commits) for r in self.repos.values())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {GOOD_TOKEN}"

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                url = urlparse(self.path)
                hub.requests.append(("GET", url.path))
                if hub.fail_all_with:
                    return self._send(hub.fail_all_with, {"error": "simulated outage"})
                if url.path == "/api/whoami-v2":
                    if not self._authorised():
                        return self._send(401, {"error": "Invalid credentials"})
                    return self._send(200, {"type": "user", "name": USER, "auth": {"accessToken": {"role": "write"}}})
                parts = [unquote(p) for p in url.path.split("/")]
                if url.path.startswith("/api/models/") and len(parts) == 7 and parts[5] == "discussions":
                    repo_id, number = f"{parts[3]}/{parts[4]}", int(parts[6])
                    if repo_id not in hub.repos or not 0 < number <= len(hub.repos[repo_id].prs):
                        return self._send(404, {"error": "Discussion not found"})
                    return self._send(200, _pull_request(repo_id, number))
                if url.path.startswith("/api/models/") and len(parts) >= 5:
                    repo_id = f"{parts[3]}/{parts[4]}"
                    revision = "/".join(parts[6:]) if len(parts) > 6 and parts[5] == "revision" else "main"
                    repo = hub.repos.get(repo_id)
                    if repo_id in hub.base_models:
                        return self._send(
                            200,
                            {"id": repo_id, "sha": "1" * 40, "private": False, "cardData": hub.base_models[repo_id]},
                        )
                    if repo is None:
                        return self._send(404, {"error": "Repository not found"})
                    files = repo.files_at(revision)
                    if files is None:
                        return self._send(404, {"error": f"revision {revision} not found"})
                    return self._send(
                        200,
                        {
                            "id": repo_id,
                            "sha": repo.heads.get(revision, "0" * 40),
                            "private": repo.private,
                            "siblings": [{"rfilename": n} for n in files],
                        },
                    )
                return self._send(404, {"error": f"no route {url.path}"})

            def do_POST(self) -> None:
                url = urlparse(self.path)
                hub.requests.append(("POST", url.path))
                body = self._body()
                if hub.fail_all_with:
                    return self._send(hub.fail_all_with, {"error": "simulated outage"})
                if not self._authorised():
                    return self._send(401, {"error": "Invalid credentials"})
                if url.path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if url.path == "/api/repos/create":
                    payload = json.loads(body)
                    repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
                    if repo_id in hub.repos:
                        return self._send(
                            409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
                        )
                    hub.repos[repo_id] = Repo(
                        private=payload.get("visibility") == "private" or bool(payload.get("private"))
                    )
                    return self._send(200, {"url": f"{hub.url}/{repo_id}"})
                parts = [unquote(p) for p in url.path.split("/")]
                if len(parts) == 6 and parts[1:3] == ["api", "models"] and parts[5] == "discussions":
                    repo = hub.repos.get(f"{parts[3]}/{parts[4]}")
                    if repo is None:
                        return self._send(404, {"error": "Repository not found"})
                    repo.prs.append(dict(repo.branches["main"]))  # a draft pull request starts from main
                    return self._send(200, {"num": len(repo.prs), "pullRequest": json.loads(body)["pullRequest"]})
                if len(parts) < 7 or parts[1:3] != ["api", "models"]:
                    return self._send(404, {"error": f"no route {url.path}"})
                repo_id, action, revision = f"{parts[3]}/{parts[4]}", parts[5], "/".join(parts[6:])
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._send(404, {"error": "Repository not found"})
                if action == "branch":
                    if revision not in repo.branches:
                        repo.branches[revision] = dict(repo.branches["main"])
                        repo.heads[revision] = repo.heads.get("main", "0" * 40)
                    return self._send(200, {})
                files = repo.files_at(revision)
                if files is None:
                    return self._send(404, {"error": f"revision {revision} not found"})
                if action == "preupload":
                    wanted = json.loads(body)["files"]
                    return self._send(
                        200,
                        {
                            "files": [
                                {
                                    "path": f["path"],
                                    "uploadMode": "regular",
                                    "shouldIgnore": False,
                                    "oid": git_sha1(files[f["path"]]) if f["path"] in files else None,
                                }
                                for f in wanted
                            ]
                        },
                    )
                if action == "commit":
                    if hub.fail_commits_after is not None and hub.commit_count() >= hub.fail_commits_after:
                        return self._send(503, {"error": "simulated interruption"})
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    added = {}
                    for line in lines:
                        if line["key"] == "file":
                            added[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                        elif line["key"] != "header":
                            return self._send(400, {"error": f"unsupported {line['key']}"})
                    create_pr = parse_qs(url.query).get("create_pr") == ["1"]
                    if create_pr:  # a pull request starts from the branch and gets the commit
                        repo.prs.append({**files, **added})
                        revision = f"refs/pr/{len(repo.prs)}"
                    else:
                        files.update(added)
                    repo.commits.append({"revision": revision, "files": sorted(added), "pr": create_pr})
                    oid = hashlib.sha1(repr(repo.commits).encode()).hexdigest()
                    repo.heads[revision] = oid
                    pr_url = f"{hub.url}/{repo_id}/discussions/{len(repo.prs)}" if create_pr else None
                    return self._send(
                        200,
                        {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr_url},
                    )
                return self._send(404, {"error": f"no route {url.path}"})

        return Handler
