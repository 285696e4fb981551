"""
The fixed lab of autoresearch: constants, data, tokenizer, dataloader and the metric.

train.py imports this file and the agent never edits it. Run it once to prepare a data source:

    python prepare.py                                 # the profile's default source
    python prepare.py --profile cpu                   # offline: the Python standard library's own code
    python prepare.py --source climbmix --num-shards 8
    python prepare.py --source tinystories
    python prepare.py --from-dir ~/texts --name texts     # any folder of text files
    python prepare.py --from-parquet docs.parquet         # parquet with a `text` column (name: custom)
    AUTORESEARCH_SOURCE=texts python train.py             # train on a prepared source

The profile (gpu|cpu) fixes the constants below; it comes from AUTORESEARCH_PROFILE, else `gpu` when
CUDA is available and `cpu` otherwise. Everything lives under $AUTORESEARCH_CACHE (default
~/.cache/autoresearch), one folder per source, and sources never mix:

    <source>/data/*.parquet     documents in a `text` column; val.parquet is the pinned validation shard
    <source>/tokenizer/         tokenizer.pkl (tiktoken Encoding), token_bytes.pt, meta.json
    <source>/tokens/*.npy       every shard tokenized once (uint16; each document starts with BOS)
    <source>/heldout/           heldout.parquet and heldout.npy: a split train.py never reads (the audit's)
    <source>/manifest.json      size, mtime_ns and sha256 of every file above, written last

Running it again only redoes what is missing or stale.
"""

import argparse
import bisect
import hashlib
import itertools
import json
import math
import os
import pickle
import re
import sys
import sysconfig
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tiktoken
import torch

# pyarrow, requests, rustbpe and rich are imported inside the preparation functions: train.py
# imports this module on every experiment, and they would add ~0.5 s to its startup.


class LabError(Exception):
    """Missing or bad data, tokenizer or settings; the message says what to run."""


def _env_number(name, default, kind):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise LabError(f"{name} must be a {kind.__name__}, got {value!r}") from None


# ---------------------------------------------------------------------------
# Profiles (fixed: these constants define the experiment)
# ---------------------------------------------------------------------------

PROFILES = {
    # Upstream's numbers, for one H100: a 300 s budget trains ~500M tokens; eval reads ~21M.
    "gpu": dict(
        MAX_SEQ_LEN=2048,         # context length
        TIME_BUDGET=300,          # training seconds per experiment
        EVAL_TOKENS=40 * 524288,  # validation tokens behind val_bpb
        VOCAB_SIZE=8192,
    ),
    # Two CPU cores. A whole experiment must end within TIME_BUDGET + 30 s: startup is 5-9 s (torch
    # import, model build) and the ~2M-param cpu model evaluates ~5-10k tokens/s on 2 busy cores.
    "cpu": dict(
        MAX_SEQ_LEN=256,          # Python code is ~3 chars/token: a row holds ~770 chars, a few functions
        TIME_BUDGET=120,          # ~20 experiments an hour; ~0.3-0.5M training tokens each on 2 cores
        EVAL_TOKENS=2**16,        # 7-14 s of eval; 2**17 took 28 s on 2 loaded cores, too close to +30 s
        VOCAB_SIZE=2048,          # keeps embedding + head a small share of a ~2M-parameter model
    ),
}
DEFAULT_SOURCE = {"gpu": "climbmix", "cpu": "stdlib"}
BUILTIN_SOURCES = ("climbmix", "tinystories", "stdlib")

PROFILE = os.environ.get("AUTORESEARCH_PROFILE") or ("gpu" if torch.cuda.is_available() else "cpu")
if PROFILE not in PROFILES:
    raise LabError(f"AUTORESEARCH_PROFILE must be one of {', '.join(PROFILES)}, got {PROFILE!r}")

MAX_SEQ_LEN = PROFILES[PROFILE]["MAX_SEQ_LEN"]
TIME_BUDGET = _env_number("AUTORESEARCH_TIME_BUDGET", PROFILES[PROFILE]["TIME_BUDGET"], float)
EVAL_TOKENS = _env_number("AUTORESEARCH_EVAL_TOKENS", PROFILES[PROFILE]["EVAL_TOKENS"], int)
VOCAB_SIZE = PROFILES[PROFILE]["VOCAB_SIZE"]

# BPE split pattern (GPT-4 style, with \p{N}{1,2} instead of {1,3}), as upstream
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = "<|reserved_0|>"

# ---------------------------------------------------------------------------
# Cache layout and sources
# ---------------------------------------------------------------------------

CACHE_DIR = Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser()
SOURCE = os.environ.get("AUTORESEARCH_SOURCE") or DEFAULT_SOURCE[PROFILE]
DATA_DIR = CACHE_DIR / SOURCE / "data"
TOKENIZER_DIR = CACHE_DIR / SOURCE / "tokenizer"
TOKENS_DIR = CACHE_DIR / SOURCE / "tokens"
VAL_FILENAME = "val.parquet"  # in every source's data folder: the pinned validation shard
# The held-out split lives in its own folder so that no glob of data/ or tokens/ (training reads every
# shard but val) can reach it, and a sandbox can hide it by masking one directory.
HELDOUT_DIR = CACHE_DIR / SOURCE / "heldout"
HELDOUT_FILENAME = "heldout.parquet"
MANIFEST_FILENAME = "manifest.json"

HF_BASE_URL = os.environ.get("AUTORESEARCH_HF_BASE_URL", "https://huggingface.co/datasets").rstrip("/")
CLIMBMIX_REPO = "karpathy/climbmix-400b-shuffle"
CLIMBMIX_VAL_SHARD = 6542  # the hub's last shard, shard_06542.parquet; saved as data/val.parquet
CLIMBMIX_HELDOUT_SHARD = 6541  # the one before it, never a training shard; saved as heldout/heldout.parquet
TINYSTORIES_REPO = "karpathy/tinystories-gpt4-clean"
TINYSTORIES_FILE = "tinystories_gpt4_clean.parquet"  # one ~640 MB file; we shard it after download
TINYSTORIES_VAL_ROWS = 10_000  # its first rows become the pinned validation shard...
TINYSTORIES_HELDOUT_ROWS = 10_000  # ...and the next ones the held-out split; training gets the rest
DOWNLOAD_ATTEMPTS = 5
RETRY_BACKOFF = 1.0  # seconds before the second attempt, doubled after each failure

LOCAL_VAL_FRACTION = 0.1  # local sources: share of documents held out for validation...
LOCAL_HELDOUT_FRACTION = 0.1  # ...and the same share again for the held-out split
LOCAL_DOC_CHARS = 1000  # local text files are cut at blank lines into documents of about this size
SHARD_DOCS = 100_000  # documents per parquet shard we write ourselves
TOKENIZER_MAX_CHARS = 1_000_000_000  # the tokenizer trains on at most this many characters...
TOKENIZER_DOC_CHARS = 10_000  # ...and on at most this many of any one document (as upstream)
THREADS = os.cpu_count() or 1


def prepare_command():
    """The command that prepares SOURCE for PROFILE, for error messages."""
    if SOURCE in BUILTIN_SOURCES:
        return f"python prepare.py --profile {PROFILE} --source {SOURCE}"
    return f"python prepare.py --profile {PROFILE} --from-dir PATH (or --from-parquet PATH) --name {SOURCE}"


# ---------------------------------------------------------------------------
# Data download
# ---------------------------------------------------------------------------

def hf_url(repo, filename):
    return f"{HF_BASE_URL}/{repo}/resolve/main/{filename}"


def _failure(error):
    """A one-line reason for a failed request."""
    import requests

    if isinstance(error, requests.ConnectionError):
        return "cannot connect"
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.HTTPError):
        return f"HTTP {error.response.status_code}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def download_file(url, dest, on_bytes=lambda n: None, attempts=DOWNLOAD_ATTEMPTS):
    """Fetch `url` into `dest` via `dest.tmp` and an atomic rename; an existing `dest` is kept.

    Retries with exponential backoff; a body that is not a readable parquet file counts as a failure.
    """
    import pyarrow.parquet as pq
    import requests

    if dest.exists():
        return
    tmp = dest.with_name(dest.name + ".tmp")
    for attempt in range(1, attempts + 1):
        written = 0
        try:
            with requests.get(url, stream=True, timeout=30) as response:
                if response.status_code == 404:
                    raise LabError(f"not found: {url}")  # permanent: retrying cannot help
                response.raise_for_status()
                with open(tmp, "wb") as f:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
                        written += len(chunk)
                        on_bytes(len(chunk))
            pq.read_metadata(tmp)  # a truncated file or an HTML error page fails here, not in training
            os.replace(tmp, dest)
            return
        except (requests.RequestException, OSError, ValueError) as error:
            tmp.unlink(missing_ok=True)
            on_bytes(-written)
            if attempt == attempts:
                offline = isinstance(error, (requests.ConnectionError, requests.Timeout))
                hint = " (no network? prepare offline with --source stdlib or --from-dir PATH)" if offline else ""
                raise LabError(f"download failed after {attempts} attempts: {url}: {_failure(error)}{hint}") from None
            time.sleep(RETRY_BACKOFF * 2 ** (attempt - 1))


def download_all(items, workers):
    """Download [(url, dest), ...] in parallel threads with a progress bar; skip files already there."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    todo = [(url, dest) for url, dest in items if not dest.exists()]
    print(f"Download: {len(items) - len(todo)} of {len(items)} files already present")
    if not todo:
        return
    failed = threading.Event()  # after one file fails for good, the others stop starting
    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
    with Progress(*columns) as progress:
        task = progress.add_task(f"{len(todo)} files", total=None)
        done = itertools.count(1)

        def fetch(item):
            if failed.is_set():
                return
            try:
                download_file(*item, on_bytes=lambda n: progress.advance(task, n))
            except LabError:
                failed.set()
                raise
            progress.update(task, description=f"{next(done)}/{len(todo)} files")

        with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
            futures = [pool.submit(fetch, item) for item in todo]
            errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]


def fetch_climbmix(root, num_shards, workers):
    """Upstream's data: training shards 0..num_shards-1 and the pinned validation shard."""
    data, heldout = root / "data", root / "heldout"
    data.mkdir(parents=True, exist_ok=True)
    heldout.mkdir(parents=True, exist_ok=True)
    num_train = CLIMBMIX_HELDOUT_SHARD if num_shards == -1 else min(num_shards, CLIMBMIX_HELDOUT_SHARD)
    # a cache prepared before the held-out split existed may hold it as a training shard
    (data / f"shard_{CLIMBMIX_HELDOUT_SHARD:05d}.parquet").unlink(missing_ok=True)
    items = [(hf_url(CLIMBMIX_REPO, f"shard_{CLIMBMIX_VAL_SHARD:05d}.parquet"), data / VAL_FILENAME),
             (hf_url(CLIMBMIX_REPO, f"shard_{CLIMBMIX_HELDOUT_SHARD:05d}.parquet"), heldout / HELDOUT_FILENAME)]
    items += [(hf_url(CLIMBMIX_REPO, f"shard_{i:05d}.parquet"), data / f"shard_{i:05d}.parquet") for i in range(num_train)]
    download_all(items, workers)


def fetch_tinystories(root, workers):
    """GPT-4 short stories: one file on the hub, cut here into validation, held-out and training rows."""
    import pyarrow.parquet as pq

    data = root / "data"
    # val is written last, so its presence means the split is complete (once it has a held-out part)
    if (data / VAL_FILENAME).exists() and (root / "heldout" / HELDOUT_FILENAME).exists():
        print(f"Data: already split in {data}")
        return
    raw = root / "download" / TINYSTORIES_FILE
    raw.parent.mkdir(parents=True, exist_ok=True)
    download_all([(hf_url(TINYSTORIES_REPO, TINYSTORIES_FILE), raw)], workers)
    table = pq.read_table(raw, columns=["text"])
    train = table.slice(TINYSTORIES_VAL_ROWS + TINYSTORIES_HELDOUT_ROWS)
    shards = [(f"shard_{i:05d}.parquet", train.slice(start, SHARD_DOCS))
              for i, start in enumerate(range(0, train.num_rows, SHARD_DOCS))]
    (data / VAL_FILENAME).unlink(missing_ok=True)  # an old split without held-out rows: redone whole
    _write_shards(data, shards)
    _write_shards(root / "heldout", [(HELDOUT_FILENAME, table.slice(TINYSTORIES_VAL_ROWS, TINYSTORIES_HELDOUT_ROWS))])
    _write_shards(data, [(VAL_FILENAME, table.slice(0, TINYSTORIES_VAL_ROWS))])
    raw.unlink()

# ---------------------------------------------------------------------------
# Local sources: the standard library, a folder of text files, parquet files
# ---------------------------------------------------------------------------

# Not part of the standard library proper, or absent from many installs (Debian ships tests apart).
STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def _read_text(path):
    """The file's text, or None when it is not UTF-8 text."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return None if "\0" in text else text


def _tree_texts(root, keep_dir, keep_file):
    """The non-empty texts of the files under `root` that pass the filters, in order of relative path."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if keep_dir(d)]
        found += [Path(folder, f) for f in files if keep_file(f)]
    docs = [_read_text(p) for p in sorted(found, key=lambda p: p.relative_to(root).as_posix())]
    return [text for text in docs if text and text.strip()]


def stdlib_documents():
    """The text of every .py file of this Python's standard library, in order of relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = _tree_texts(root, lambda d: d not in STDLIB_SKIP_DIRS, lambda f: f.endswith(".py"))
    if not docs:
        raise LabError(f"no .py files in the standard library at {root}; use --from-dir PATH")
    return docs


def folder_documents(folder):
    """The text of every UTF-8 text file under `folder` (hidden ones skipped), in order of relative path."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LabError(f"--from-dir: {folder} is not a folder")
    not_hidden = lambda name: not name.startswith(".")  # noqa: E731
    docs = _tree_texts(folder, not_hidden, not_hidden)
    if not docs:
        raise LabError(f"--from-dir: no UTF-8 text files in {folder}")
    return docs


def parquet_documents(path):
    """Every non-empty `text` of a parquet file or a folder of them, in order."""
    import pyarrow.parquet as pq

    path = Path(path).expanduser()
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise LabError(f"--from-parquet: no parquet files at {path}")
    docs = []
    for file in files:
        try:
            columns = pq.read_schema(file).names
        except Exception as error:  # pyarrow raises several types for a non-parquet file
            raise LabError(f"--from-parquet: cannot read {file}: {str(error).splitlines()[0]}") from None
        if "text" not in columns:
            raise LabError(f"--from-parquet: {file} has no `text` column (columns: {', '.join(columns)})")
        texts = pq.read_table(file, columns=["text"]).column("text").to_pylist()
        docs += [text for text in texts if isinstance(text, str) and text.strip()]
    if not docs:
        raise LabError(f"--from-parquet: no non-empty `text` values in {path}")
    return docs


def take(docs, max_docs=None, max_chars=None):
    """The first documents in order, at most `max_docs` of them and `max_chars` characters in all."""
    if max_docs is not None:
        docs = docs[:max_docs]
    if max_chars is not None:
        sizes = itertools.accumulate(map(len, docs))
        docs = [doc for doc, total in zip(docs, sizes) if total <= max_chars]
    if not docs:
        raise LabError("no documents left after --max-docs/--max-chars")
    return docs


def chunk_text(text, max_chars=LOCAL_DOC_CHARS):
    """Cut a long file into pieces of about `max_chars`, at a blank line where there is one.

    A 2,000-line module would otherwise be one document, cropped to its first row by the loader.
    Joined back, the pieces are the original text.
    """
    pieces, lines, size, cut_at = [], [], 0, 0
    for line in text.splitlines(keepends=True):
        if lines and size + len(line) > max_chars:
            cut = cut_at or len(lines)
            pieces.append("".join(lines[:cut]))
            lines = lines[cut:]
            size, cut_at = sum(map(len, lines)), 0
        lines.append(line)
        size += len(line)
        if not line.strip():
            cut_at = len(lines)
    pieces.append("".join(lines))
    return [piece for piece in pieces if piece.strip()]


def split_documents(docs, chunk):
    """Hold out documents for validation and a held-out split; returns (train, val, heldout) texts.

    Deterministic and independent of order: exact duplicates are dropped, the documents are ranked by
    the SHA-1 of their text, the first LOCAL_VAL_FRACTION go to validation, the next
    LOCAL_HELDOUT_FRACTION to the held-out split, the rest to training. Chunks of one document stay in
    its split, and a val or held-out chunk that also occurs in an earlier split (boilerplate) is dropped.
    """
    unique = list(dict.fromkeys(docs))
    if len(unique) < 3:
        raise LabError(f"need at least 3 distinct documents for a train/val/held-out split, got {len(unique)}")
    n_val = max(1, round(len(unique) * LOCAL_VAL_FRACTION))
    n_heldout = max(1, round(len(unique) * LOCAL_HELDOUT_FRACTION))
    ranked = sorted(range(len(unique)), key=lambda i: hashlib.sha1(unique[i].encode()).digest())
    split_of = {i: "val" for i in ranked[:n_val]} | {i: "heldout" for i in ranked[n_val:n_val + n_heldout]}
    pieces = chunk_text if chunk else (lambda text: [text])
    train = [p for i, text in enumerate(unique) if i not in split_of for p in pieces(text)]
    seen = set(train)
    val = [p for i, text in enumerate(unique) if split_of.get(i) == "val" for p in pieces(text) if p not in seen]
    seen.update(val)
    heldout = [p for i, text in enumerate(unique) if split_of.get(i) == "heldout" for p in pieces(text) if p not in seen]
    if not val or not heldout:
        raise LabError("every validation or held-out document also occurs in training; add more documents")
    return train, val, heldout


def write_local_data(data, train, val, heldout):
    """Write the texts as parquet shards; shards of an earlier, different preparation are removed."""
    import pyarrow as pa

    _write_shards(data.parent / "heldout", [(HELDOUT_FILENAME, pa.table({"text": heldout}))])

    shards = [(f"shard_{i:05d}.parquet", pa.table({"text": train[start:start + SHARD_DOCS]}))
              for i, start in enumerate(range(0, len(train), SHARD_DOCS))]
    shards.append((VAL_FILENAME, pa.table({"text": val})))
    _write_shards(data, shards)
    keep = {name for name, _ in shards}
    for stale in data.glob("*.parquet"):
        if stale.name not in keep:
            stale.unlink()


def _write_shards(data, shards):
    """Write [(filename, arrow table)] atomically, in order (so the last one marks completion)."""
    import pyarrow.parquet as pq

    data.mkdir(parents=True, exist_ok=True)
    for name, table in shards:
        tmp = data / (name + ".tmp")
        pq.write_table(table, tmp, row_group_size=1024)
        os.replace(tmp, data / name)

# ---------------------------------------------------------------------------
# Tokenizer training
# ---------------------------------------------------------------------------

def _train_files(data):
    files = sorted(p for p in data.glob("*.parquet") if p.name != VAL_FILENAME)
    if not files or not (data / VAL_FILENAME).exists():
        raise LabError(f"no training shards and {VAL_FILENAME} in {data}")
    return files


def _tokenizer_texts(files, record):
    """Training documents for the tokenizer, capped as upstream; `record` notes what it read."""
    import pyarrow.parquet as pq

    nchars = 0
    for path in files:
        record["files"].append([path.name, path.stat().st_size])
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["text"]):
            for text in batch.column(0).to_pylist():
                doc = (text or "")[:TOKENIZER_DOC_CHARS]
                nchars += len(doc)
                yield doc
                if nchars >= TOKENIZER_MAX_CHARS:
                    record["hit_cap"] = True
                    return


def _tokenizer_matches(meta, vocab_size, files):
    """Would training again read the same documents for the same vocabulary?"""
    if meta.get("vocab_size") != vocab_size:
        return False
    current = [[p.name, p.stat().st_size] for p in files]
    read = meta.get("files", [])
    # Files are read in sorted order: once the character cap was hit, later shards never matter.
    return current[:len(read)] == read if meta.get("hit_cap") else current == read


def train_tokenizer(root, vocab_size):
    """Train a BPE tokenizer on the training shards with rustbpe; save it as a tiktoken Encoding."""
    import rustbpe

    tok_dir, files = root / "tokenizer", _train_files(root / "data")
    meta_path = tok_dir / "meta.json"
    if meta_path.exists() and (tok_dir / "tokenizer.pkl").exists() and (tok_dir / "token_bytes.pt").exists():
        if _tokenizer_matches(json.loads(meta_path.read_text()), vocab_size, files):
            print(f"Tokenizer: reusing {tok_dir} (vocab {vocab_size}, same training documents)")
            return
    t0 = time.time()
    meta = {"vocab_size": vocab_size, "files": [], "hit_cap": False}
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(_tokenizer_texts(files, meta), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
    if len(ranks) + len(SPECIAL_TOKENS) != vocab_size:
        raise LabError(f"the corpus is too small for a {vocab_size}-token vocabulary "
                       f"(only {len(ranks)} merges found); add documents")
    special = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="rustbpe", pat_str=bpe.get_pattern(), mergeable_ranks=ranks, special_tokens=special)

    sample = "Hello world! Numbers: 123. Unicode: 你好 \t def f(x):\n    return x ** 2\n"
    if enc.decode(enc.encode_ordinary(sample)) != sample:
        raise LabError("tokenizer round-trip check failed")
    # Byte length of every token, for bits per byte; special tokens count 0 and drop out of the metric.
    token_bytes = [0 if i in special.values() else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]

    tok_dir.mkdir(parents=True, exist_ok=True)
    _save_atomic(tok_dir / "tokenizer.pkl", lambda f: pickle.dump(enc, f))
    _save_atomic(tok_dir / "token_bytes.pt", lambda f: torch.save(torch.tensor(token_bytes, dtype=torch.int32), f))
    _save_atomic(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    print(f"Tokenizer: trained vocab {vocab_size} in {time.time() - t0:.1f}s, saved to {tok_dir}")


def _save_atomic(path, write):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)

# ---------------------------------------------------------------------------
# Token cache: every shard tokenized once, so the loader only packs
# ---------------------------------------------------------------------------

def _tokenizer_digest(tok_dir):
    return hashlib.sha256((tok_dir / "tokenizer.pkl").read_bytes()).hexdigest()


def encode_with_bos(enc, texts, bos):
    """One flat uint16 array: BOS, then the tokens of each text, for every text in order."""
    ids = enc.encode_ordinary_batch(texts, num_threads=THREADS)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    out = np.empty(int(lengths.sum()), dtype=np.uint16)
    starts = np.cumsum(lengths) - lengths
    body = np.ones(len(out), dtype=bool)
    body[starts] = False
    out[starts] = bos
    out[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint16, count=len(out) - len(ids))
    return out


def tokenize_shards(root):
    """Tokenize every data shard and the held-out split not yet tokenized with the current tokenizer;
    returns tokens/meta (with the held-out split's counts under "heldout")."""
    data, tok_dir, tokens = root / "data", root / "tokenizer", root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    digest = _tokenizer_digest(tok_dir)
    meta_path = tokens / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("tokenizer") != digest:
        meta = {"tokenizer": digest, "shards": {}}
    enc = pickle.loads((tok_dir / "tokenizer.pkl").read_bytes())
    bos = enc.encode_single_token(BOS_TOKEN)
    shards = sorted(data.glob("*.parquet"))
    for stale in tokens.glob("*.npy"):
        if stale.stem not in {p.stem for p in shards}:
            stale.unlink()
    meta["shards"] = {k: v for k, v in meta["shards"].items() if k in {p.stem for p in shards}}
    for path in shards:
        _tokenize_shard(path, tokens, meta, meta_path, enc, bos)
    # the held-out split: the same tokenizer, its own folder and meta (see HELDOUT_DIR)
    heldout = root / "heldout"
    heldout_meta_path = heldout / "meta.json"
    heldout_meta = json.loads(heldout_meta_path.read_text()) if heldout_meta_path.exists() else {}
    if heldout_meta.get("tokenizer") != digest:
        heldout_meta = {"tokenizer": digest, "shards": {}}
    if (heldout / HELDOUT_FILENAME).exists():
        _tokenize_shard(heldout / HELDOUT_FILENAME, heldout, heldout_meta, heldout_meta_path, enc, bos)
    meta["heldout"] = heldout_meta["shards"].get(Path(HELDOUT_FILENAME).stem)
    return meta


def _tokenize_shard(path, tokens, meta, meta_path, enc, bos):
    """Tokenize one parquet shard into tokens/<stem>.npy unless meta says it is current."""
    import pyarrow.parquet as pq

    out = tokens / f"{path.stem}.npy"
    if meta["shards"].get(path.stem, {}).get("size") == path.stat().st_size and out.exists():
        return
    t0 = time.time()
    parts = [encode_with_bos(enc, [t for t in batch.column(0).to_pylist() if t], bos)
             for batch in pq.ParquetFile(path).iter_batches(batch_size=8192, columns=["text"])]
    array = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint16)
    _save_atomic(out, lambda f: np.save(f, array))
    meta["shards"][path.stem] = {"size": path.stat().st_size, "docs": int((array == bos).sum()),
                                 "tokens": int(len(array))}
    _save_atomic(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    print(f"Tokens: {path.name}: {len(array) / 1e6:.2f}M tokens in {time.time() - t0:.1f}s")

# ---------------------------------------------------------------------------
# Manifest (fixed: what the harness checks the cache against after every run)
# ---------------------------------------------------------------------------

MANIFEST_FOLDERS = ("data", "tokenizer", "tokens", "heldout")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(root):
    """Write <root>/manifest.json: size, mtime_ns and sha256 of every data, tokenizer and token file.

    Keys are paths relative to `root`; "heldout" lists the held-out split's files (a sandbox hides
    them). A file whose size and mtime_ns match the previous manifest keeps its recorded hash, so
    re-running prepare does not re-read a large cache.
    """
    path = root / MANIFEST_FILENAME
    old = json.loads(path.read_text()).get("files", {}) if path.exists() else {}
    files = {}
    for folder in MANIFEST_FOLDERS:
        for file in sorted((root / folder).glob("*")):
            if not file.is_file() or file.name.endswith(".tmp"):
                continue
            rel, stat = file.relative_to(root).as_posix(), file.stat()
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            same = {k: old.get(rel, {}).get(k) for k in entry} == entry and old[rel].get("sha256")
            files[rel] = {**entry, "sha256": old[rel]["sha256"] if same else file_sha256(file)}
    manifest = {"source": root.name, "heldout": [rel for rel in files if rel.startswith("heldout/")], "files": files}
    _save_atomic(path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return manifest

# ---------------------------------------------------------------------------
# Runtime utilities (imported by train.py)
# ---------------------------------------------------------------------------

def default_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def no_cuda_reason() -> str:
    """Why torch sees no CUDA device, in one line: train.py fails with it at start-up under the
    gpu profile instead of training the gpu model on the CPU until the harness's timeout."""
    version = torch.__version__
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"torch {version} is a CPU build (torch.version.cuda is None)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and (not visible.strip() or visible.strip().startswith("-")):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    nodes = [p for p in Path("/dev").glob("nvidia[0-9]*")] + [p for p in Path("/dev").glob("dxg")]
    if not nodes and not Path("/dev/kfd").exists():
        return "no GPU device files in /dev (no GPU here, or a container or sandbox without /dev/nvidia*)"
    if any(p.name.startswith("nvidia") for p in nodes) and not Path("/dev/nvidia-uvm").exists():
        # created by the first CUDA program outside a sandbox; the sandbox cannot load the module
        return "/dev/nvidia-uvm is missing: run `sudo nvidia-modprobe -u -c=0` (or any CUDA program) once"
    try:
        torch.cuda.init()
    except Exception as exc:  # the driver's own words: too old for this build, not loaded, ...
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"torch {version} (CUDA {torch.version.cuda}): {said[:240]}"
    return f"torch {version} (CUDA {torch.version.cuda}) counts 0 devices"


class Tokenizer:
    """The prepared BPE tokenizer (a tiktoken Encoding) with upstream's small interface."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, tokenizer_dir=None):
        tokenizer_dir = Path(tokenizer_dir or TOKENIZER_DIR)
        path = tokenizer_dir / "tokenizer.pkl"
        if not path.is_file():
            raise LabError(f"no tokenizer at {tokenizer_dir}; prepare the data first: {prepare_command()}")
        with open(path, "rb") as f:
            enc = pickle.load(f)
        if enc.n_vocab != VOCAB_SIZE:
            raise LabError(f"the tokenizer at {tokenizer_dir} has {enc.n_vocab} tokens but profile {PROFILE!r} "
                           f"uses VOCAB_SIZE {VOCAB_SIZE}; re-run prepare for this profile: {prepare_command()}")
        return cls(enc)

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads=THREADS):
        """Token ids of a string, or a list of id lists for a list of strings; `prepend`: id or special token."""
        if prepend is not None and not isinstance(prepend, int):
            prepend = self.enc.encode_single_token(prepend)
        head = [] if prepend is None else [prepend]
        if isinstance(text, str):
            return head + self.enc.encode_ordinary(text)
        if isinstance(text, list):
            return [head + ids for ids in self.enc.encode_ordinary_batch(text, num_threads=num_threads)]
        raise ValueError(f"encode takes a str or a list of str, got {type(text).__name__}")

    def decode(self, ids):
        return self.enc.decode(ids)


def get_token_bytes(device="cpu"):
    """Byte length of every token id (0 for special tokens), as an int32 tensor on `device`."""
    path = TOKENIZER_DIR / "token_bytes.pt"
    if not path.is_file():
        raise LabError(f"no {path}; prepare the data first: {prepare_command()}")
    return torch.load(path, map_location=device)

# ---------------------------------------------------------------------------
# Dataloader
# ---------------------------------------------------------------------------

def _token_shards(split):
    """The token files of `split`: val.parquet's for "val", every other shard's for "train", and
    heldout.parquet's (its own folder, never globbed for the others) for "heldout"."""
    if split == "heldout":
        return [_heldout_tokens()]
    names = [p.stem for p in sorted(DATA_DIR.glob("*.parquet"))]
    val = Path(VAL_FILENAME).stem
    names = [n for n in names if n == val] if split == "val" else [n for n in names if n != val]
    if not names:
        raise LabError(f"no {split} data in {DATA_DIR}; prepare it first: {prepare_command()}")
    paths = [TOKENS_DIR / f"{name}.npy" for name in names]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise LabError(f"no tokens for {', '.join(missing)} in {TOKENS_DIR}; re-run: {prepare_command()}")
    # A prepare interrupted after retraining the tokenizer, or data changed since, leaves token files
    # that decode to other text (and token_bytes that misprice them): refuse them rather than train on them.
    meta_path = TOKENS_DIR / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    made = meta.get("shards", {})
    stale = [n for n in names if made.get(n, {}).get("size") != (DATA_DIR / f"{n}.parquet").stat().st_size]
    current = _tokenizer_digest(TOKENIZER_DIR) if (TOKENIZER_DIR / "tokenizer.pkl").is_file() else None
    if meta.get("tokenizer") != current or stale:
        raise LabError(f"the tokens in {TOKENS_DIR} were not made from the current tokenizer and data "
                       f"(an interrupted prepare?); re-run: {prepare_command()}")
    return paths


def _heldout_tokens():
    path, data = HELDOUT_DIR / f"{Path(HELDOUT_FILENAME).stem}.npy", HELDOUT_DIR / HELDOUT_FILENAME
    if not path.exists() or not data.exists():
        raise LabError(f"no held-out split in {HELDOUT_DIR}; re-run: {prepare_command()}")
    meta_path = HELDOUT_DIR / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    current = _tokenizer_digest(TOKENIZER_DIR) if (TOKENIZER_DIR / "tokenizer.pkl").is_file() else None
    made = meta.get("shards", {}).get(path.stem, {})
    if meta.get("tokenizer") != current or made.get("size") != data.stat().st_size:
        raise LabError(f"the held-out tokens in {HELDOUT_DIR} were not made from the current tokenizer and data; "
                       f"re-run: {prepare_command()}")
    return path


def _documents(paths, bos):
    """Every document of the shards in order, forever: (uint16 token array starting with BOS, epoch)."""
    for epoch in itertools.count(1):
        found = False
        for path in paths:
            tokens = np.load(path, mmap_mode="r").view(np.ndarray)  # plain views slice ~10x faster
            starts = np.flatnonzero(tokens == bos).tolist()
            for start, end in zip(starts, starts[1:] + [len(tokens)]):
                found = True
                yield tokens[start:end], epoch
        if not found:
            raise LabError(f"no documents in {', '.join(p.name for p in paths)}; re-run: {prepare_command()}")


def make_dataloader(tokenizer, B, T, split, buffer_size=1000, device=None):
    """
    BOS-aligned best-fit packing; yields (inputs, targets, epoch) as (B, T) long tensors on `device`.

    Every row starts with a document's BOS. Each next piece of a row is the longest buffered document
    that fits whole; when none fits, the shortest is cropped to fill the row exactly, so there is no
    padding. Documents come pre-tokenized from the token cache in a fixed order, and the buffer is
    kept sorted by length (bisect), so a placement costs O(log buffer) instead of a scan of it.
    The same two tensors are refilled on every call.
    """
    assert split in ("train", "val", "heldout")
    device = torch.device(device) if device is not None else default_device()
    docs = _documents(_token_shards(split), tokenizer.get_bos_token_id())
    lengths = []  # sorted lengths of the buffered documents
    buffered = defaultdict(deque)  # length -> documents of that length, oldest first
    epoch = 1
    row_capacity = T + 1
    rows = np.empty((B, row_capacity), dtype=np.int64)
    rows_t = torch.from_numpy(rows)
    on_cuda = device.type == "cuda"
    staging = torch.empty((2, B, T), dtype=torch.long, pin_memory=on_cuda)
    batch = torch.empty((2, B, T), dtype=torch.long, device=device) if on_cuda else staging
    copied = None  # CUDA event of the last host-to-device copy out of `staging`

    while True:
        for row in rows:
            pos = 0
            while pos < row_capacity:
                while len(lengths) < buffer_size:
                    doc, epoch = next(docs)
                    bisect.insort(lengths, len(doc))
                    buffered[len(doc)].append(doc)
                remaining = row_capacity - pos
                i = bisect.bisect_right(lengths, remaining) - 1
                doc = buffered[lengths.pop(max(i, 0))].popleft()
                n = min(len(doc), remaining)  # i < 0: nothing fits, crop the shortest
                row[pos:pos + n] = doc[:n]
                pos += n
        if copied is not None:
            copied.synchronize()  # the previous batch must have left `staging` before we overwrite it
        staging[0].copy_(rows_t[:, :-1])
        staging[1].copy_(rows_t[:, 1:])
        if on_cuda:
            batch.copy_(staging, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
        yield batch[0], batch[1], epoch

# ---------------------------------------------------------------------------
# Evaluation (fixed: this is the metric)
# ---------------------------------------------------------------------------

@torch.no_grad()
def evaluate_bpb(model, tokenizer, batch_size, split="val"):
    """
    Bits per byte on the validation shard: summed per-token cross-entropy (nats) over the summed
    UTF-8 byte lengths of the target tokens, in bits. Tokens of 0 bytes (BOS) leave both sums, so
    the number does not depend on the vocabulary. Always EVAL_TOKENS // (batch_size * MAX_SEQ_LEN)
    batches of MAX_SEQ_LEN, the same for every train.py. `model(x, y, reduction='none')` returns
    the loss of every token. `split` is "val" for train.py; the harness's audit also reads "heldout".
    """
    was_training = model.training
    model.eval()
    bpb = _bits_per_byte(lambda x, y: model(x, y, reduction="none"), tokenizer, batch_size, split)
    model.train(was_training)
    return bpb


def _bits_per_byte(losses_of, tokenizer, batch_size, split):
    steps = EVAL_TOKENS // (batch_size * MAX_SEQ_LEN)
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} x MAX_SEQ_LEN {MAX_SEQ_LEN} exceeds EVAL_TOKENS {EVAL_TOKENS}")
    device = default_device()
    token_bytes = get_token_bytes(device)
    loader = make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, split, device=device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    for _ in range(steps):
        x, y, _ = next(loader)
        loss = losses_of(x, y).reshape(-1).double()
        nbytes = token_bytes[y.reshape(-1)]
        total_nats += torch.where(nbytes > 0, loss, 0.0).sum()
        total_bytes += nbytes.sum()
    return (total_nats / total_bytes).item() / math.log(2)  # float64: ln 2 times an int64 tensor is float32

# ---------------------------------------------------------------------------
# Model handoff and audit (fixed: the harness recomputes the metric with this code)
# ---------------------------------------------------------------------------

HANDOFF_ENV = "AUTORESEARCH_HANDOFF"  # set by the harness: where train.py's handoff_model saves the model


class _Logits(torch.nn.Module):
    """The handed-over computation: token ids (B, MAX_SEQ_LEN) -> float logits, in the autocast the
    model was evaluated in (recorded in the graph, so the audit needs no setting of its own)."""

    def __init__(self, model, device_type, dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, idx):
        with torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            return self.model(idx).float()


def handoff_model(model, batch_size):
    """Save `model` for the harness's own evaluation when AUTORESEARCH_HANDOFF names a file; else nothing.

    The model is exported with torch.export: a graph of ATen operations plus weights, traced for a
    (batch_size, MAX_SEQ_LEN) batch, computing the logits that `model(idx)` returns. Loading it runs
    no Python of train.py, and the audit computes the cross-entropy itself, so a model can only be
    judged by its logits. Call it inside the autocast the model was evaluated in: it is recorded.
    """
    path = os.environ.get(HANDOFF_ENV)
    if not path:
        return None
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: export the module it wraps
    device = next(model.parameters()).device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    idx = torch.zeros((batch_size, MAX_SEQ_LEN), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            program = torch.export.export(_Logits(model, device.type, dtype), (idx,))
    except Exception as error:
        raise LabError(f"cannot hand the model over: torch.export failed: {str(error).splitlines()[0]}") from error
    finally:
        model.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(path, lambda f: torch.export.save(program, f))
    return path


def load_handoff(path):
    """(logits function, batch size) of a model saved by handoff_model."""
    try:
        program = torch.export.load(path)
    except Exception as error:
        raise LabError(f"cannot load the handed-over model {path}: {str(error).splitlines()[0]}") from None
    names = program.graph_signature.user_inputs
    shapes = {n.name: tuple(n.meta["val"].shape) for n in program.graph.nodes if n.op == "placeholder"}
    if len(names) != 1 or len(shapes[names[0]]) != 2 or shapes[names[0]][1] != MAX_SEQ_LEN:
        raise LabError(f"the handed-over model takes {[shapes[n] for n in names]}, not one (B, {MAX_SEQ_LEN}) batch")
    return program.module(), shapes[names[0]][0]


@torch.no_grad()
def evaluate_handoff(path, splits=("val", "heldout")):
    """The audit: bits per byte of a handed-over model on each split, by this file's code alone.

    Also "causal_gap": the mean change (nats) of the loss at the first half of the positions of one
    validation batch when every token of the second half is replaced. A causal model scores 0 (up
    to rounding); a model that reads the tokens it predicts scores far above it.
    """
    logits_of, batch_size = load_handoff(path)
    tokenizer = Tokenizer.from_directory()
    vocab = tokenizer.get_vocab_size()

    def losses_of(x, y):
        logits = logits_of(x)
        if tuple(logits.shape) != (*x.shape, vocab):
            raise LabError(f"the handed-over model returns {tuple(logits.shape)}, not (B, T, {vocab}) logits")
        return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab).float(), y.reshape(-1), reduction="none")

    result = {split: _bits_per_byte(losses_of, tokenizer, batch_size, split) for split in splits}
    x, y, _ = next(make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, "val", device=default_device()))
    x, y = x.clone(), y.clone()  # the loader refills its tensors
    half = MAX_SEQ_LEN // 2
    changed = x.clone()
    changed[:, half:] = (changed[:, half:] + 1) % vocab
    before = losses_of(x, y).view(batch_size, -1)[:, :half]
    after = losses_of(changed, y).view(batch_size, -1)[:, :half]
    result["causal_gap"] = (before.double() - after.double()).abs().mean().item()
    result["batch_size"] = batch_size
    return result

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description="Prepare a data source and its tokenizer for autoresearch.")
    parser.add_argument("--profile", choices=sorted(PROFILES), help=f"constants to prepare for (now: {PROFILE})")
    parser.add_argument("--source", choices=BUILTIN_SOURCES,
                        help="built-in source (default: climbmix for gpu, stdlib for cpu)")
    parser.add_argument("--from-dir", metavar="PATH", help="use a folder of text files (searched recursively)")
    parser.add_argument("--from-parquet", metavar="PATH", help="use a parquet file, or a folder of them, with a `text` column")
    parser.add_argument("--name", help="source name for --from-dir/--from-parquet (default: custom)")
    parser.add_argument("--num-shards", type=int, default=10, help="climbmix training shards (-1: all 6542)")
    parser.add_argument("--download-workers", type=int, default=8, help="parallel downloads")
    parser.add_argument("--max-docs", type=int, help="local sources: keep only the first N documents")
    parser.add_argument("--max-chars", type=int, help="local sources: keep the first documents, up to N characters in all")
    args = parser.parse_args(argv)
    local = args.from_dir or args.from_parquet
    if args.from_dir and args.from_parquet:
        parser.error("use one of --from-dir and --from-parquet")
    if local and args.source:
        parser.error("--source and --from-dir/--from-parquet exclude each other")
    if args.name and not local:
        parser.error("--name names a --from-dir/--from-parquet source")
    sliced = [n for n in (args.max_docs, args.max_chars) if n is not None]
    if sliced and not (local or (args.source or DEFAULT_SOURCE[args.profile or PROFILE]) == "stdlib"):
        parser.error("--max-docs/--max-chars apply to stdlib, --from-dir and --from-parquet")
    if any(n < 1 for n in sliced):
        parser.error("--max-docs/--max-chars must be positive")
    if args.num_shards == 0 or args.num_shards < -1:
        parser.error("--num-shards must be positive, or -1 for all")
    if args.name and (not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", args.name) or args.name in BUILTIN_SOURCES):
        parser.error(f"--name must be letters, digits, '-', '_', '.' and not a built-in source, got {args.name!r}")
    return args


def prepare_source(args):
    profile = args.profile or PROFILE
    vocab_size = PROFILES[profile]["VOCAB_SIZE"]
    name = (args.name or "custom") if (args.from_dir or args.from_parquet) else (args.source or DEFAULT_SOURCE[profile])
    root = CACHE_DIR / name
    print(f"Preparing source {name!r} for profile {profile!r} (vocab {vocab_size}) in {root}")
    t0 = time.time()
    if name == "climbmix":
        fetch_climbmix(root, args.num_shards, args.download_workers)
    elif name == "tinystories":
        fetch_tinystories(root, args.download_workers)
    else:
        if args.from_dir:
            docs = folder_documents(args.from_dir)
        elif args.from_parquet:
            docs = parquet_documents(args.from_parquet)
        else:
            docs = stdlib_documents()
        docs = take(docs, args.max_docs, args.max_chars)
        train, val, heldout = split_documents(docs, chunk=not args.from_parquet)
        write_local_data(root / "data", train, val, heldout)
        print(f"Data: {len(docs)} documents, {sum(map(len, docs)):,} chars -> "
              f"{len(train)} train, {len(val)} val and {len(heldout)} held-out pieces in {root}")
    train_tokenizer(root, vocab_size)
    meta = tokenize_shards(root)
    shards = meta["shards"]
    val_stem = Path(VAL_FILENAME).stem
    for split, stems in (("train", [s for s in shards if s != val_stem]), ("val", [val_stem])):
        docs, tokens = (sum(shards[s][k] for s in stems) for k in ("docs", "tokens"))
        print(f"  {split:7s} {docs:,} documents, {tokens:,} tokens")
    print(f"  heldout {meta['heldout']['docs']:,} documents, {meta['heldout']['tokens']:,} tokens")
    write_manifest(root)
    print(f"Tokens in {root / 'tokens'}. Done in {time.time() - t0:.1f}s. Train with:")
    print(f"  AUTORESEARCH_PROFILE={profile} AUTORESEARCH_SOURCE={name} python train.py")


def main(argv=None):
    args = parse_args(argv)
    try:
        prepare_source(args)
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
