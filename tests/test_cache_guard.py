"""CacheGuard against a real prepared cache: a changed token file or tokenizer is caught."""

import os
import shutil

import numpy as np
import pytest

from autoresearch.cache_guard import CacheGuard
from autoresearch.errors import AutoresearchError


@pytest.fixture
def cache(lab_cache, tmp_path):
    shutil.copytree(lab_cache / "stdlib", tmp_path / "stdlib", copy_function=shutil.copy2)  # keeps mtimes
    return tmp_path / "stdlib"


def test_an_untouched_cache_has_no_changes(cache):
    guard = CacheGuard(cache / "manifest.json")
    assert guard.quick_changes() == [] and guard.full_changes() == []
    assert [p.name for p in guard.heldout_paths()] == ["heldout.npy", "heldout.parquet", "meta.json"]


def test_a_modified_token_file_is_caught_by_size_then_by_hash(cache):
    guard = CacheGuard(cache / "manifest.json")
    path = cache / "tokens" / "shard_00000.npy"
    tokens = np.load(path)
    np.save(path, tokens[:-10])
    assert guard.quick_changes() == [f"cache file tokens/shard_00000.npy changed size "
                                     f"({tokens.nbytes + 128} -> {tokens.nbytes + 128 - 20} bytes)"]
    assert guard.full_changes() == ["cache file tokens/shard_00000.npy has other contents (sha256 differs from the manifest)"]


def test_same_size_contents_with_the_old_mtime_only_the_full_check_sees(cache):
    guard = CacheGuard(cache / "manifest.json")
    path = cache / "tokenizer" / "tokenizer.pkl"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert guard.quick_changes() == ["cache file tokenizer/tokenizer.pkl was modified (mtime changed)"]
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a run that covers its tracks
    assert guard.quick_changes() == []
    assert guard.full_changes() == ["cache file tokenizer/tokenizer.pkl has other contents (sha256 differs from the manifest)"]


def test_a_rewritten_manifest_does_not_fool_a_guard_made_before(cache):
    guard = CacheGuard(cache / "manifest.json")
    (cache / "heldout" / "heldout.npy").unlink()
    (cache / "manifest.json").write_text('{"files": {}}')
    assert guard.quick_changes() == ["cache file heldout/heldout.npy was removed"]


def test_no_manifest_is_a_one_line_error(tmp_path):
    with pytest.raises(AutoresearchError, match="no readable cache manifest at .*manifest.json; re-run prepare"):
        CacheGuard(tmp_path / "manifest.json")
