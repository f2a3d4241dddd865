"""Checks the Docker build context that .dockerignore lets through, without
Docker: no secret or local state gets in, and every input of the build does.

Run by scripts/check-deploy.sh with docker-py (PyPI `docker`), whose
exclude_paths applies .dockerignore as `docker build` does. The context is
the git-tracked files plus decoys standing for what a working copy may hold.
"""

import os
import re
import subprocess
import sys
import tempfile
import tomllib

from docker.utils.build import exclude_paths

# What must never enter the context (paths a working copy may hold).
DECOYS = [
    "config/docker/secrets/wx_main",
    ".sandbox/wxtokend.toml",
    ".env",
    ".git/config",
    "target/release/wxtokend",
    "reader/target/debug/x",
    "fuzz/target/x",
    "fuzz/artifacts/crash-1",
]
INCLUDE = re.compile(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)')


def context(repo):
    """The paths of a copy of `repo` (tracked files and decoys) that
    .dockerignore lets into the build context."""
    tracked = subprocess.run(
        ["git", "-C", repo, "ls-files", "-z"], check=True, capture_output=True, text=True
    ).stdout.split("\0")
    with open(os.path.join(repo, ".dockerignore")) as f:
        patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    with tempfile.TemporaryDirectory() as root:
        for path in [p for p in tracked if p] + DECOYS:
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            open(full, "w").close()
        return set(exclude_paths(root, patterns, dockerfile="Dockerfile"))


def build_inputs(repo, inside):
    """What the build reads that the context lacks: workspace members, path
    dependencies, explicit targets and include_str!/include_bytes! files."""
    missing = []
    manifests = [p for p in inside if p == "Cargo.toml" or p.endswith("/Cargo.toml")]
    for manifest in manifests:
        crate = os.path.dirname(manifest)
        with open(os.path.join(repo, manifest), "rb") as f:
            toml = tomllib.load(f)
        wanted = [os.path.join(m, "Cargo.toml") for m in toml.get("workspace", {}).get("members", [])]
        for table in ("dependencies", "dev-dependencies", "build-dependencies"):
            for dep in toml.get(table, {}).values():
                if isinstance(dep, dict) and "path" in dep:
                    wanted.append(os.path.join(dep["path"], "Cargo.toml"))
        for kind in ("lib", "bin", "example", "test", "bench"):
            targets = toml.get(kind, [])
            for target in [targets] if isinstance(targets, dict) else targets:
                if "path" in target:
                    wanted.append(target["path"])
        if "build" in toml.get("package", {}):
            wanted.append(toml["package"]["build"])
        missing += [(manifest, os.path.normpath(os.path.join(crate, w))) for w in wanted]
    for source in [p for p in inside if p.endswith(".rs")]:
        with open(os.path.join(repo, source)) as f:
            for included in INCLUDE.findall(f.read()):
                missing.append((source, os.path.normpath(os.path.join(os.path.dirname(source), included))))
    return [(by, path) for by, path in missing if path not in inside]


def main():
    repo = sys.argv[1] if len(sys.argv) > 1 else "."
    inside = context(repo)
    leaks = [d for d in DECOYS if d in inside]
    lacking = build_inputs(repo, inside)
    for path in leaks:
        print(f"docker context: {path} would be sent to the build (.dockerignore)")
    for by, path in lacking:
        print(f"docker context: {by} needs {path}, which .dockerignore keeps out")
    if leaks or lacking:
        sys.exit(1)
    print(f"docker context: {len(inside)} paths, no secret or local state, every build input")


if __name__ == "__main__":
    main()
