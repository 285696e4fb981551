"""prepare.py, the fixed lab: sources, tokenizer, loader, metric, downloads and their errors.

prepare.py reads its environment at import, so each test sets the variables and reloads it
(`lab` fixture); whole runs of the command go through `main([...])` or a subprocess.
"""

import importlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import REPO_ROOT, lab_env


def load_lab(monkeypatch, **env):
    """prepare.py imported afresh under `env` (AUTORESEARCH_* variables not given are unset)."""
    for name in [n for n in os.environ if n.startswith("AUTORESEARCH_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    import prepare

    return importlib.reload(prepare)


@pytest.fixture
def lab(monkeypatch, lab_cache):
    return load_lab(monkeypatch, **lab_env(lab_cache))


def documents(tokens: np.ndarray, bos: int) -> list[tuple[int, ...]]:
    starts = list(np.flatnonzero(tokens == bos)) + [len(tokens)]
    return [tuple(tokens[a:b].tolist()) for a, b in zip(starts, starts[1:])]


def cached_documents(lab, stem: str) -> list[tuple[int, ...]]:
    bos = lab.Tokenizer.from_directory().get_bos_token_id()
    return documents(np.load(lab.TOKENS_DIR / f"{stem}.npy"), bos)


def write_tokens(lab, stem: str, tokens: list[int], tokenizer_dir: Path) -> None:
    """A hand-made token file for `stem` (its parquet shard exists), with the meta prepare.py writes."""
    lab.TOKENS_DIR.mkdir(parents=True, exist_ok=True)
    np.save(lab.TOKENS_DIR / f"{stem}.npy", np.array(tokens, dtype=np.uint16))
    if not lab.TOKENIZER_DIR.exists():
        shutil.copytree(tokenizer_dir, lab.TOKENIZER_DIR)
    size = (lab.DATA_DIR / f"{stem}.parquet").stat().st_size
    meta = {"tokenizer": lab._tokenizer_digest(lab.TOKENIZER_DIR), "shards": {stem: {"size": size}}}
    (lab.TOKENS_DIR / "meta.json").write_text(json.dumps(meta))


def stdlib_texts(n: int) -> list[str]:
    """Real text for corpora the tests build themselves."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8") for p in sorted(root.glob("*.py"))[:n]]


# ---------------------------------------------------------------------------
# Profiles and environment
# ---------------------------------------------------------------------------

def test_cpu_profile_constants_and_overrides(monkeypatch, tmp_path):
    lab = load_lab(monkeypatch, AUTORESEARCH_PROFILE="cpu", AUTORESEARCH_CACHE=str(tmp_path))
    assert (lab.MAX_SEQ_LEN, lab.TIME_BUDGET, lab.EVAL_TOKENS, lab.VOCAB_SIZE) == (256, 120, 2**16, 2048)
    assert lab.SOURCE == "stdlib"
    assert lab.DATA_DIR == tmp_path / "stdlib" / "data"
    assert lab.TOKENIZER_DIR == tmp_path / "stdlib" / "tokenizer"

    lab = load_lab(monkeypatch, AUTORESEARCH_PROFILE="gpu", AUTORESEARCH_TIME_BUDGET="12.5",
                   AUTORESEARCH_EVAL_TOKENS="4096", AUTORESEARCH_SOURCE="mine")
    assert (lab.MAX_SEQ_LEN, lab.VOCAB_SIZE, lab.TIME_BUDGET, lab.EVAL_TOKENS) == (2048, 8192, 12.5, 4096)
    assert lab.DATA_DIR.parts[-2:] == ("mine", "data")


def test_bad_environment_values_are_named_in_the_error(monkeypatch):
    with pytest.raises(Exception, match="AUTORESEARCH_TIME_BUDGET must be a float, got 'soon'"):
        load_lab(monkeypatch, AUTORESEARCH_PROFILE="cpu", AUTORESEARCH_TIME_BUDGET="soon")
    with pytest.raises(Exception, match="AUTORESEARCH_PROFILE must be one of gpu, cpu"):
        load_lab(monkeypatch, AUTORESEARCH_PROFILE="tpu")


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

def test_tokenizer_round_trips_and_counts_bytes(lab):
    tok = lab.Tokenizer.from_directory()
    assert tok.get_vocab_size() == lab.VOCAB_SIZE == 2048
    bos = tok.get_bos_token_id()
    texts = ["def f(x):\n    return x ** 2\n", "Ünïcode: 你好 🙂", "  \t\n\n", ""]
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert bos not in ids
    assert [ids[0] for ids in tok.encode(texts, prepend=bos)] == [bos] * 4
    assert tok.encode("x", prepend=lab.BOS_TOKEN) == [bos] + tok.encode("x")

    token_bytes = lab.get_token_bytes()
    assert token_bytes[bos] == 0
    text = "Ünïcode: 你好 🙂 and some code: {k: v for k, v in d.items()}"
    assert int(token_bytes[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_tokenizer_of_another_vocab_size_is_refused(monkeypatch, lab_cache):
    lab = load_lab(monkeypatch, **{**lab_env(lab_cache), "AUTORESEARCH_PROFILE": "gpu"})
    with pytest.raises(lab.LabError, match=r"has 2048 tokens but profile 'gpu' uses VOCAB_SIZE 8192; "
                                           r"re-run prepare .*--profile gpu --source stdlib"):
        lab.Tokenizer.from_directory()


def test_preparing_again_reuses_tokenizer_and_tokens(lab, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in [*lab.TOKENS_DIR.iterdir(), *lab.TOKENIZER_DIR.iterdir()]}
    lab.main(["--profile", "cpu", "--source", "stdlib", "--max-docs", "60"])
    out = capsys.readouterr().out
    assert "Tokenizer: reusing" in out and "Tokens:" not in out
    assert "AUTORESEARCH_PROFILE=cpu AUTORESEARCH_SOURCE=stdlib python train.py" in out
    after = {p.name: p.stat().st_mtime_ns for p in [*lab.TOKENS_DIR.iterdir(), *lab.TOKENIZER_DIR.iterdir()]}
    assert after == before


def test_stdlib_preparation_is_deterministic(lab, monkeypatch, tmp_path):
    other = load_lab(monkeypatch, **lab_env(tmp_path))
    other.main(["--profile", "cpu", "--source", "stdlib", "--max-docs", "60"])
    for folder in ("data", "tokenizer", "tokens"):
        ours = {p.name: p.read_bytes() for p in (lab.CACHE_DIR / "stdlib" / folder).iterdir()}
        theirs = {p.name: p.read_bytes() for p in (tmp_path / "stdlib" / folder).iterdir()}
        assert ours == theirs, folder


def test_too_small_corpus_for_the_vocabulary_is_a_clear_error(monkeypatch, tmp_path, capsys):
    lab = load_lab(monkeypatch, AUTORESEARCH_CACHE=str(tmp_path / "cache"), AUTORESEARCH_PROFILE="cpu")
    (tmp_path / "texts").mkdir()
    for i in range(4):
        (tmp_path / "texts" / f"{i}.txt").write_text(f"tiny document number {i}\n")
    with pytest.raises(SystemExit) as exit_info:
        lab.main(["--from-dir", str(tmp_path / "texts")])
    assert exit_info.value.code == 1
    assert "too small for a 2048-token vocabulary" in capsys.readouterr().err

# ---------------------------------------------------------------------------
# Local sources and the train/val split
# ---------------------------------------------------------------------------

def test_val_never_overlaps_train(lab):
    val_texts = set(pq.read_table(lab.DATA_DIR / "val.parquet").column("text").to_pylist())
    train_texts = set(pq.read_table(lab.DATA_DIR / "shard_00000.parquet").column("text").to_pylist())
    assert val_texts and train_texts and not val_texts & train_texts
    val_docs, train_docs = set(cached_documents(lab, "val")), set(cached_documents(lab, "shard_00000"))
    assert len(val_docs) > 5 and not val_docs & train_docs


def test_split_drops_duplicates_and_shared_chunks():
    sys.path.insert(0, str(REPO_ROOT))
    import prepare

    common = "import os\n\n"
    docs = [f"{common}x = {i}\n" * 3 for i in range(40)] + ["x = 7\n" * 3] * 2
    train, val, heldout = prepare.split_documents(docs, chunk=False)
    assert len(val) == 4 and len(heldout) == 4 and len(train) == 33
    assert not set(train) & set(val) and not set(train) & set(heldout) and not set(val) & set(heldout)
    train, val, heldout = prepare.split_documents([common * 200 + text for text in docs], chunk=True)
    assert not set(train) & set(val) and not (set(train) | set(val)) & set(heldout)
    # deterministic and independent of the documents' order
    assert [set(s) for s in prepare.split_documents(docs[::-1], chunk=False)] == [set(s) for s in
                                                                                 prepare.split_documents(docs, chunk=False)]


def test_heldout_split_is_disjoint_apart_and_readable_only_by_name(lab):
    heldout_texts = set(pq.read_table(lab.HELDOUT_DIR / "heldout.parquet").column("text").to_pylist())
    others = {t for p in lab.DATA_DIR.glob("*.parquet") for t in pq.read_table(p).column("text").to_pylist()}
    assert heldout_texts and not heldout_texts & others
    assert lab.HELDOUT_DIR == lab.CACHE_DIR / "stdlib" / "heldout" and not list(lab.DATA_DIR.glob("heldout*"))
    tok = lab.Tokenizer.from_directory()
    bos = tok.get_bos_token_id()
    heldout_docs = set(documents(np.load(lab.HELDOUT_DIR / "heldout.npy"), bos))
    x, _, _ = next(lab.make_dataloader(tok, 8, 256, "heldout"))
    assert all(piece in heldout_docs for row in x for piece in documents(row.numpy(), bos)[:-1])
    for split in ("train", "val"):  # what train.py reads never includes the held-out token file
        assert lab.HELDOUT_DIR not in {p.parent for p in lab._token_shards(split)}
    assert lab.evaluate_bpb(Uniform(2048), tok, 4, split="heldout") != lab.evaluate_bpb(Uniform(2048), tok, 4)


def test_manifest_lists_every_lab_file_with_size_mtime_and_sha256(lab):
    manifest = json.loads((lab.CACHE_DIR / "stdlib" / "manifest.json").read_text())
    root = lab.CACHE_DIR / "stdlib"
    on_disk = {p.relative_to(root).as_posix() for folder in ("data", "tokenizer", "tokens", "heldout")
               for p in (root / folder).iterdir()}
    assert set(manifest["files"]) == on_disk
    assert {"data/val.parquet", "tokenizer/tokenizer.pkl", "tokens/val.npy", "heldout/heldout.npy"} <= on_disk
    assert manifest["heldout"] == sorted(r for r in on_disk if r.startswith("heldout/"))
    for rel, entry in manifest["files"].items():
        stat = (root / rel).stat()
        assert (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
        assert entry["sha256"] == lab.file_sha256(root / rel)


def test_chunks_join_back_to_the_file_and_cut_at_blank_lines():
    sys.path.insert(0, str(REPO_ROOT))
    import prepare

    text = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(200)) + "x" * 3000 + "\nend\n"
    pieces = prepare.chunk_text(text, max_chars=200)
    assert "".join(pieces) == text
    assert all(p.endswith("\n\n") for p in pieces[:-3])
    assert max(len(p) for p in pieces if "xxx" not in p) <= 200


def test_max_docs_and_max_chars_take_a_prefix(monkeypatch, tmp_path):
    lab = load_lab(monkeypatch, AUTORESEARCH_PROFILE="cpu")
    docs = [f"{i}" * 10 for i in range(10)]
    assert lab.take(docs, max_docs=3) == docs[:3]
    assert lab.take(docs, max_chars=35) == docs[:3]
    with pytest.raises(lab.LabError, match="no documents left"):
        lab.take(docs, max_chars=5)


def test_from_dir_reads_nested_text_and_skips_binary_and_hidden(monkeypatch, tmp_path, capsys):
    texts = tmp_path / "texts"
    for i, text in enumerate(stdlib_texts(30)):
        (texts / f"sub{i % 3}").mkdir(parents=True, exist_ok=True)
        (texts / f"sub{i % 3}" / f"doc{i}.txt").write_text(text)
    (texts / "blob.bin").write_bytes(bytes(range(256)))
    (texts / ".hidden").mkdir()
    (texts / ".hidden" / "secret.txt").write_text("SECRET-MARKER\n")
    lab = load_lab(monkeypatch, AUTORESEARCH_CACHE=str(tmp_path / "cache"), AUTORESEARCH_PROFILE="cpu")
    lab.main(["--from-dir", str(texts), "--name", "mytexts"])
    out = capsys.readouterr().out
    assert "Data: 30 documents" in out
    assert "AUTORESEARCH_SOURCE=mytexts" in out
    data = tmp_path / "cache" / "mytexts" / "data"
    stored = "".join(t for p in data.glob("*.parquet") for t in pq.read_table(p).column("text").to_pylist())
    assert "SECRET-MARKER" not in stored and "\x00" not in stored


def test_from_parquet_uses_rows_as_documents(monkeypatch, tmp_path, capsys):
    rows = stdlib_texts(40)
    pq.write_table(pa.table({"id": list(range(40)), "text": rows}), tmp_path / "docs.parquet")
    lab = load_lab(monkeypatch, AUTORESEARCH_CACHE=str(tmp_path / "cache"), AUTORESEARCH_PROFILE="cpu",
                   AUTORESEARCH_SOURCE="custom")
    lab.main(["--from-parquet", str(tmp_path / "docs.parquet")])
    assert "Data: 40 documents" in capsys.readouterr().out
    val = pq.read_table(lab.DATA_DIR / "val.parquet").column("text").to_pylist()
    train = pq.read_table(lab.DATA_DIR / "shard_00000.parquet").column("text").to_pylist()
    heldout = pq.read_table(lab.HELDOUT_DIR / "heldout.parquet").column("text").to_pylist()
    assert len(val) == 4 and len(heldout) == 4
    assert sorted(val + heldout + train) == sorted(rows)  # rows are never cut into chunks


@pytest.mark.parametrize("setup, message", [
    (lambda d: ["--from-dir", str(d)], "--from-dir: no UTF-8 text files in"),
    (lambda d: ["--from-dir", str(d / "nope")], "is not a folder"),
    (lambda d: pq.write_table(pa.table({"body": ["a", "b"]}), d / "x.parquet") or ["--from-parquet", str(d / "x.parquet")],
     "x.parquet has no `text` column (columns: body)"),
    (lambda d: (d / "bad.parquet").write_text("not parquet") and ["--from-parquet", str(d / "bad.parquet")],
     "--from-parquet: cannot read"),
    (lambda d: pq.write_table(pa.table({"text": ["", None]}), d / "e.parquet") or ["--from-parquet", str(d)],
     "no non-empty `text` values"),
], ids=["empty-folder", "missing-folder", "parquet-without-text", "not-parquet", "only-empty-texts"])
def test_bad_local_input_is_one_line_and_exit_1(tmp_path, setup, message):
    folder = tmp_path / "input"
    folder.mkdir()
    args = setup(folder)
    env = {**os.environ, **lab_env(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "prepare.py", *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

# ---------------------------------------------------------------------------
# Dataloader
# ---------------------------------------------------------------------------

def test_loader_rows_are_whole_documents_then_one_crop(lab):
    tok = lab.Tokenizer.from_directory()
    bos = tok.get_bos_token_id()
    train_docs = set(cached_documents(lab, "shard_00000"))
    loader = lab.make_dataloader(tok, 4, 64, "train")
    for _ in range(20):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (4, 64) and x.dtype == torch.long and x.is_contiguous()
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert (x[:, 0] == bos).all()
        for row in torch.cat([x, y[:, -1:]], dim=1):
            pieces = documents(row.numpy(), bos)
            assert all(piece in train_docs for piece in pieces[:-1])  # whole documents: no padding
            last = pieces[-1]
            assert any(doc[:len(last)] == last for doc in train_docs)  # the crop is a document's start


def test_loader_is_best_fit_and_crops_only_when_nothing_fits(monkeypatch, lab_cache, tmp_path):
    tok = load_lab(monkeypatch, **lab_env(lab_cache)).Tokenizer.from_directory()
    lab = load_lab(monkeypatch, **{**lab_env(lab_cache), "AUTORESEARCH_CACHE": str(tmp_path), "AUTORESEARCH_SOURCE": "toy"})
    bos = tok.get_bos_token_id()
    a, b, c, d = ([bos] + [base + i for i in range(n - 1)] for base, n in ((10, 7), (20, 5), (30, 4), (40, 8)))
    (tmp_path / "toy" / "data").mkdir(parents=True)
    (tmp_path / "toy" / "data" / "shard_00000.parquet").touch()
    write_tokens(lab, "shard_00000", a + b + c + d, lab_cache / "stdlib" / "tokenizer")
    loader = lab.make_dataloader(tok, 3, 9, "train", buffer_size=4)
    x, y, epoch = next(loader)
    rows = torch.cat([x, y[:, -1:]], dim=1).tolist()
    # Rows hold 10 tokens; documents a7 b5 c4 d8 a7 b5 c4 d8 ... stream into a buffer of 4.
    # Row 0: d8 fits best; then nothing fits in 2, so the shortest buffered (c4) is cropped.
    assert rows == [d + c[:2], a + c[:3], d + b[:2]]
    assert epoch == 3


def test_loader_is_deterministic_and_val_differs_from_train(lab):
    tok = lab.Tokenizer.from_directory()
    for split in ("train", "val"):
        one, two = lab.make_dataloader(tok, 8, 256, split), lab.make_dataloader(tok, 8, 256, split)
        for _ in range(5):
            (x1, y1, e1), (x2, y2, e2) = next(one), next(two)
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and e1 == e2
    val_docs = set(cached_documents(lab, "val"))
    x, _, _ = next(lab.make_dataloader(tok, 8, 256, "val"))
    assert all(piece in val_docs for row in x for piece in documents(row.numpy(), tok.get_bos_token_id())[:-1])


def test_loader_counts_epochs_over_a_small_split(lab):
    tok = lab.Tokenizer.from_directory()
    val_tokens = len(np.load(lab.TOKENS_DIR / "val.npy"))
    loader = lab.make_dataloader(tok, 8, 256, "val", buffer_size=1)  # the buffer pulls documents ahead
    epochs = [next(loader)[2] for _ in range(3 * val_tokens // (8 * 256) + 2)]
    assert epochs[0] == 1 and epochs == sorted(epochs) and epochs[-1] >= 3


def test_loader_without_data_fails_instead_of_looping(monkeypatch, lab_cache, tmp_path):
    tok = load_lab(monkeypatch, **lab_env(lab_cache)).Tokenizer.from_directory()
    lab = load_lab(monkeypatch, **{**lab_env(lab_cache), "AUTORESEARCH_CACHE": str(tmp_path)})
    with pytest.raises(lab.LabError, match=r"no train data in .*stdlib/data; prepare it first: python prepare.py"):
        next(lab.make_dataloader(tok, 2, 16, "train"))
    (tmp_path / "stdlib" / "data").mkdir(parents=True)
    (tmp_path / "stdlib" / "data" / "shard_00000.parquet").touch()
    with pytest.raises(lab.LabError, match="no tokens for shard_00000.npy"):
        next(lab.make_dataloader(tok, 2, 16, "train"))
    write_tokens(lab, "shard_00000", [], lab_cache / "stdlib" / "tokenizer")
    with pytest.raises(lab.LabError, match="no documents in shard_00000.npy"):
        next(lab.make_dataloader(tok, 2, 16, "train"))


def test_loader_refuses_tokens_left_by_an_interrupted_prepare(monkeypatch, lab_cache, tmp_path):
    shutil.copytree(lab_cache / "stdlib", tmp_path / "stdlib")
    lab = load_lab(monkeypatch, **{**lab_env(lab_cache), "AUTORESEARCH_CACHE": str(tmp_path)})
    tok = lab.Tokenizer.from_directory()
    next(lab.make_dataloader(tok, 2, 16, "val"))  # a complete preparation is read
    # New training documents, a new tokenizer, then the process dies before the shards are tokenized again:
    # the old token ids now mean other text, and token_bytes prices them by the new vocabulary.
    train = lab.DATA_DIR / "shard_00000.parquet"
    texts = pq.read_table(train).column("text").to_pylist()
    pq.write_table(pa.table({"text": texts[: len(texts) // 2]}), train)
    lab.train_tokenizer(tmp_path / "stdlib", lab.VOCAB_SIZE)
    assert lab._tokenizer_digest(lab.TOKENIZER_DIR) != lab._tokenizer_digest(lab_cache / "stdlib" / "tokenizer")
    for split in ("train", "val"):
        with pytest.raises(lab.LabError, match=r"not made from the current tokenizer and data .*re-run: python prepare.py"):
            next(lab.make_dataloader(lab.Tokenizer.from_directory(), 2, 16, split))
    lab.tokenize_shards(tmp_path / "stdlib")  # finishing the preparation makes them readable again
    next(lab.make_dataloader(lab.Tokenizer.from_directory(), 2, 16, "train"))

# ---------------------------------------------------------------------------
# Evaluation (the metric)
# ---------------------------------------------------------------------------

class Uniform(torch.nn.Module):
    """Every next token equally likely: loss ln(V) everywhere."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, y, reduction="mean"):
        assert not self.training and not torch.is_grad_enabled()
        logits = torch.zeros(*x.shape, self.vocab_size) * self.scale
        return torch.nn.functional.cross_entropy(logits.view(-1, self.vocab_size), y.view(-1), reduction=reduction)


def test_evaluate_bpb_of_uniform_model_is_log2_vocab_per_byte(lab):
    tok = lab.Tokenizer.from_directory()
    vocab = tok.get_vocab_size()
    model = Uniform(vocab)
    bpb = lab.evaluate_bpb(model, tok, batch_size=4)
    assert model.training  # put back as it was

    token_bytes = lab.get_token_bytes()
    steps = lab.EVAL_TOKENS // (4 * lab.MAX_SEQ_LEN)
    loader = lab.make_dataloader(tok, 4, lab.MAX_SEQ_LEN, "val")
    counted = nbytes = 0
    for _ in range(steps):
        _, y, _ = next(loader)
        counted += int((token_bytes[y] > 0).sum())
        nbytes += int(token_bytes[y].sum())
    assert counted < steps * 4 * lab.MAX_SEQ_LEN  # BOS targets are there, and excluded
    # the model's loss is float32 ln(V); everything after it is summed and divided in float64
    loss = torch.tensor(math.log(vocab), dtype=torch.float32).item()
    assert bpb == pytest.approx(loss / math.log(2) * counted / nbytes, rel=1e-12)


def test_evaluate_bpb_refuses_a_batch_larger_than_eval_tokens(lab):
    with pytest.raises(ValueError, match="exceeds EVAL_TOKENS"):
        lab.evaluate_bpb(Uniform(2048), lab.Tokenizer.from_directory(), batch_size=lab.EVAL_TOKENS)

# ---------------------------------------------------------------------------
# Downloads, against a local HTTP server
# ---------------------------------------------------------------------------

class Hub:
    """A local stand-in for the Hugging Face hub: serves `files` under /<repo>/resolve/main/."""

    def __init__(self, files, fail_first=(), truncate=()):
        self.files, self.fail_first, self.truncate = files, set(fail_first), set(truncate)
        self.requests = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                hub.requests.append(name)
                if name in hub.fail_first:
                    hub.fail_first.discard(name)
                    self.send_error(503)
                elif name not in hub.files:
                    self.send_error(404)
                else:
                    body = hub.files[name]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2] if name in hub.truncate else body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def parquet_bytes(texts, tmp_path, name):
    path = tmp_path / f"src_{name}"
    pq.write_table(pa.table({"text": texts}), path)
    return path.read_bytes()


@pytest.fixture
def hub_lab(monkeypatch, tmp_path):
    """Returns (start(files, ...) -> Hub, reload() -> prepare module pointing at that hub)."""
    hubs = []

    def start(files, **kwargs):
        hubs.append(Hub(files, **kwargs))
        return hubs[-1]

    def reload(hub_url):
        lab = load_lab(monkeypatch, AUTORESEARCH_CACHE=str(tmp_path / "cache"), AUTORESEARCH_PROFILE="cpu",
                       AUTORESEARCH_HF_BASE_URL=hub_url)
        monkeypatch.setattr(lab, "RETRY_BACKOFF", 0.01)
        return lab

    yield start, reload
    for hub in hubs:
        hub.close()


def test_climbmix_download_retries_resumes_and_pins_val(hub_lab, tmp_path, capsys):
    start, reload = hub_lab
    texts = stdlib_texts(60)
    files = {f"shard_{i:05d}.parquet": parquet_bytes(texts[i * 20:(i + 1) * 20], tmp_path, i) for i in range(2)}
    files["shard_06542.parquet"] = parquet_bytes(texts[40:50], tmp_path, "val")
    files["shard_06541.parquet"] = parquet_bytes(texts[50:], tmp_path, "heldout")
    hub = start(files, fail_first={"shard_00001.parquet"})
    lab = reload(hub.url)
    lab.main(["--source", "climbmix", "--num-shards", "2", "--download-workers", "2"])
    data = tmp_path / "cache" / "climbmix" / "data"
    assert sorted(p.name for p in data.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet", "val.parquet"]
    assert (data / "val.parquet").read_bytes() == files["shard_06542.parquet"]
    assert (data.parent / "heldout" / "heldout.parquet").read_bytes() == files["shard_06541.parquet"]
    assert sorted(hub.requests) == ["shard_00000.parquet", "shard_00001.parquet", "shard_00001.parquet",
                                    "shard_06541.parquet", "shard_06542.parquet"]
    assert (data.parent / "heldout" / "heldout.npy").exists() and (data.parent / "manifest.json").exists()
    assert "AUTORESEARCH_SOURCE=climbmix" in capsys.readouterr().out

    hub.requests.clear()
    (data / "shard_00000.parquet").unlink()
    lab.main(["--source", "climbmix", "--num-shards", "2"])
    assert hub.requests == ["shard_00000.parquet"]  # the others were kept
    assert "Tokenizer: reusing" in capsys.readouterr().out


def test_truncated_download_leaves_no_file_and_no_tmp(hub_lab, tmp_path):
    start, reload = hub_lab
    hub = start({"shard_00000.parquet": parquet_bytes(stdlib_texts(3), tmp_path, 0)}, truncate={"shard_00000.parquet"})
    lab = reload(hub.url)
    dest = tmp_path / "shard.parquet"
    with pytest.raises(lab.LabError, match=r"download failed after 3 attempts: .*shard_00000.parquet"):
        lab.download_file(lab.hf_url(lab.CLIMBMIX_REPO, "shard_00000.parquet"), dest, attempts=3)
    assert hub.requests == ["shard_00000.parquet"] * 3
    assert list(tmp_path.glob("shard.parquet*")) == []


def test_missing_file_on_the_hub_is_not_retried(hub_lab, tmp_path):
    start, reload = hub_lab
    hub = start({})
    lab = reload(hub.url)
    with pytest.raises(lab.LabError, match="not found: .*/karpathy/climbmix-400b-shuffle/resolve/main/shard_00009.parquet"):
        lab.download_file(lab.hf_url(lab.CLIMBMIX_REPO, "shard_00009.parquet"), tmp_path / "x.parquet")
    assert hub.requests == ["shard_00009.parquet"]


def test_tinystories_is_split_into_train_shards_and_pinned_val(hub_lab, tmp_path, monkeypatch):
    start, reload = hub_lab
    texts = stdlib_texts(40)
    hub = start({"tinystories_gpt4_clean.parquet": parquet_bytes(texts, tmp_path, "ts")})
    lab = reload(hub.url)
    monkeypatch.setattr(lab, "TINYSTORIES_VAL_ROWS", 5)
    monkeypatch.setattr(lab, "TINYSTORIES_HELDOUT_ROWS", 5)
    lab.main(["--source", "tinystories"])
    root = tmp_path / "cache" / "tinystories"
    assert pq.read_table(root / "data" / "val.parquet").column("text").to_pylist() == texts[:5]
    assert pq.read_table(root / "heldout" / "heldout.parquet").column("text").to_pylist() == texts[5:10]
    assert pq.read_table(root / "data" / "shard_00000.parquet").column("text").to_pylist() == texts[10:]
    assert not (root / "download" / "tinystories_gpt4_clean.parquet").exists()
    assert sorted(p.name for p in (root / "tokens").glob("*.npy")) == ["shard_00000.npy", "val.npy"]
    lab.main(["--source", "tinystories"])
    assert hub.requests == ["tinystories_gpt4_clean.parquet"]


def test_no_network_is_one_line_that_suggests_offline_sources(hub_lab, tmp_path, capsys):
    _, reload = hub_lab
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lab = reload(f"http://127.0.0.1:{port}")
    with pytest.raises(SystemExit) as exit_info:
        lab.main(["--source", "climbmix", "--num-shards", "3"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot connect" in err and "--source stdlib" in err and "--from-dir" in err
    assert list((tmp_path / "cache" / "climbmix" / "data").iterdir()) == []
