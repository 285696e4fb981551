"""Check the lab's cache (data, tokenizer, token files) against the manifest prepare.py wrote.

The manifest is read once, when the guard is made (before the first run), so a training run
that rewrites files *and* the manifest is still caught. `quick_changes` compares sizes and
mtimes (a stat per file: run it after every run); `full_changes` re-hashes every file (run it
for a row about to be kept, or when the quick check found something).
"""

import hashlib
import json
from pathlib import Path

from autoresearch.errors import AutoresearchError


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class CacheGuard:
    def __init__(self, manifest_path: Path):
        self.manifest_path = Path(manifest_path)
        self.root = self.manifest_path.parent
        try:
            manifest = json.loads(self.manifest_path.read_text())
            self.files: dict[str, dict] = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError):
            raise AutoresearchError(
                f"no readable cache manifest at {self.manifest_path}; re-run prepare for this source "
                f"(autoresearch prepare ...)") from None
        self.heldout: list[str] = list(manifest.get("heldout", []))

    def quick_changes(self) -> list[str]:
        """One line per file whose size or mtime differs from the manifest (or that is gone)."""
        changes = []
        for rel, entry in self.files.items():
            try:
                stat = (self.root / rel).stat()
            except OSError:
                changes.append(f"cache file {rel} was removed")
                continue
            if stat.st_size != entry["size"]:
                changes.append(f"cache file {rel} changed size ({entry['size']} -> {stat.st_size} bytes)")
            elif stat.st_mtime_ns != entry["mtime_ns"]:
                changes.append(f"cache file {rel} was modified (mtime changed)")
        return changes

    def full_changes(self) -> list[str]:
        """One line per file whose sha256 differs from the manifest (or that is gone)."""
        changes = []
        for rel, entry in self.files.items():
            try:
                digest = _sha256(self.root / rel)
            except OSError:
                changes.append(f"cache file {rel} was removed")
                continue
            if digest != entry["sha256"]:
                changes.append(f"cache file {rel} has other contents (sha256 differs from the manifest)")
        return changes

    def paths(self) -> list[Path]:
        return [self.root / rel for rel in self.files]

    def heldout_paths(self) -> list[Path]:
        """The held-out split's files (what a sandbox hides and an unsandboxed run is watched for)."""
        return [self.root / rel for rel in self.heldout]
