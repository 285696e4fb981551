"""The run's records under results/<tag>/: results.tsv, run.json and run.lock.

results.tsv is the night's ledger: one row per finished experiment, each written with a single
write() and fsynced, so a kill -9 can at worst leave a torn last line, which is ignored when
reading and cut off before the next append. run.json is replaced atomically. run.lock is an
flock held by the running harness; the kernel drops it when that process dies, however it dies.
"""

import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Callable
from datetime import datetime, timezone
from pathlib import Path

import psutil

from autoresearch.errors import AutoresearchError

# ---------------------------------------------------------------------------
# The columns: one definition for the writer (Row), the loop's reader and the report
# ---------------------------------------------------------------------------
# Upstream's five come first, then ours. New columns are only ever added at the end: a file whose
# header is an older prefix of COLUMNS is upgraded in place on resume (new fields empty).


def _text(raw: str) -> str:
    return raw


def _float(raw: str) -> float:
    return float(raw) if raw else 0.0


def _opt_float(raw: str) -> float | None:
    return float(raw) if raw else None


def _opt_int(raw: str) -> int | None:
    return int(float(raw)) if raw else None


def _int(raw: str) -> int:
    return int(float(raw)) if raw else 0


@dataclass(frozen=True)
class Column:
    """One column of results.tsv: its name, how its text parses, how it is written, and its
    value on a Row that does not set it (REQUIRED: every Row names it)."""

    name: str
    parse: Callable[[str], object]  # results.tsv text -> value (raises ValueError)
    digits: int | None = None  # fixed decimals when written; None: str()
    default: object = None  # REQUIRED for the columns every row must name


REQUIRED = object()

# The one declaration of every column: Row's fields, the writer, the readers and the docs follow it.
SCHEMA: tuple[Column, ...] = (
    Column("commit", _text, default=REQUIRED),
    Column("val_bpb", _float, 6, REQUIRED),  # this trial's measurement; 0.000000 for a crash (upstream)
    Column("memory_gb", _float, 1, REQUIRED),
    Column("status", _text, default=REQUIRED),  # keep | discard | crash decide an experiment; trial does not
    Column("description", _text, default=REQUIRED),
    Column("experiment", _int, default=REQUIRED),  # the same number on every trial of one experiment
    Column("hypothesis", _text, default=""),
    Column("proposer", _text, default=""),
    Column("model", _text, default=""),
    Column("reason", _text, default=""),
    Column("training_seconds", _opt_float, 1),
    Column("total_seconds", _opt_float, 1),
    Column("num_steps", _opt_int),
    Column("mfu_percent", _opt_float, 2),
    Column("input_tokens", _int, default=0),
    Column("output_tokens", _int, default=0),
    Column("cost_usd", _float, 6, 0.0),
    Column("started_at", _text, default=""),
    Column("wall_seconds", _opt_float, 1),
    Column("parent", _text, default=""),
    # schema 2: trials
    Column("role", _text, default=""),  # baseline | candidate | repeat | confirm | combine
    Column("trial", _opt_int),  # 1, 2, ... within the experiment
    Column("seed", _opt_int),  # AUTORESEARCH_SEED of this trial
    Column("mean_val_bpb", _opt_float, 6),  # the experiment's mean, on its deciding row
    Column("delta", _opt_float, 6),  # mean minus the best's mean it was judged against
    Column("sigma", _opt_float, 6),  # the pooled noise estimate the verdict used
    # schema 3: trusting the number
    Column("audit", _text, default=""),  # pass | fail (a keep's audit); off (--audit off); "" not audited
    Column("audit_val_bpb", _opt_float, 6),  # val_bpb recomputed by the base prepare.py
    Column("heldout_bpb", _opt_float, 6),  # the held-out split's; never shown to the proposer
    Column("audit_seconds", _opt_float, 1),  # what the audit cost
    Column("sandbox", _text, default=""),  # bwrap | watch (unsandboxed, held-out watched) | none
    # schema 4: scheduling
    Column("speculation", _text, default=""),  # how the idea came: asking.SPECULATION_LABELS; empty for trials not proposed
    Column("run_seconds", _opt_float, 1),  # wall time of the training process (the GPU busy)
    Column("gpu_idle_seconds", _opt_float, 1),  # the GPU idle before this trial started (since the last training ended)
    # schema 5: declared targets
    Column("metrics", _text, default=""),  # a declared target's other metrics: `peak_mb=512 cells=4096` (format_metrics)
)
COLUMNS: tuple[str, ...] = tuple(c.name for c in SCHEMA)
PARSERS: dict[str, Callable[[str], object]] = {c.name: c.parse for c in SCHEMA}
HEADER = "\t".join(COLUMNS) + "\n"
UPSTREAM_COLUMNS = COLUMNS[:5]
DECIDING = ("keep", "discard", "crash")  # the statuses that end an experiment
STATUSES = (*DECIDING, "trial")

# Tabs and every line break str.splitlines() knows (the report reads the file with it).
_BREAKS = re.compile(r"[\t\n\x0b\x0c\r\x1c\x1d\x1e\x85\u2028\u2029]+")


def format_metrics(metrics: dict) -> str:
    """The `metrics` column: `name=value` pairs, space-separated, in the order given (numbers to
    6 significant digits)."""
    return " ".join(f"{name}={value:.6g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in metrics.items())


def parse_metrics(text: str) -> dict[str, float]:
    """The `metrics` column back as numbers (a pair that is not `name=number` is skipped)."""
    out = {}
    for pair in text.split():
        name, _, value = pair.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def utc_now() -> str:
    """The current time as ISO 8601 UTC to the second, e.g. 2026-11-22T07:30:00Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clean(value: str) -> str:
    return _BREAKS.sub(" ", value)


def _write(column: Column, value) -> str:
    if value is None:
        return ""
    if column.digits is not None:
        return f"{value:.{column.digits}f}"
    return str(value)


class _RowMethods:
    def to_fields(self) -> list[str]:
        """The row as results.tsv text fields (a crash reads 0.000000 / 0.0, like upstream)."""
        crash = self.status == "crash"
        values = []
        for column in SCHEMA:
            value = getattr(self, column.name)
            if crash and column.name in ("val_bpb", "memory_gb"):
                value = 0.0
            values.append(_clean(_write(column, value)))
        return values

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def measured(self) -> bool:
        """A trial that produced a value (not a crash). A declared target's metric may be 0 or
        negative; the lab's val_bpb never is on a row that is not a crash."""
        return self.status != "crash" and self.val_bpb is not None

    @classmethod
    def from_fields(cls, values: dict[str, str]):
        """Parse one line's fields keyed by column name; missing columns take their defaults."""
        kwargs: dict = {}
        for f in fields(cls):
            if f.name in values:
                kwargs[f.name] = PARSERS[f.name](values[f.name])
        for column in SCHEMA:
            if column.default is REQUIRED:
                kwargs.setdefault(column.name, column.parse(""))
        return cls(**kwargs)


# One trial, one line of results.tsv: a dataclass whose fields are SCHEMA's columns, in order.
Row = make_dataclass(
    "Row",
    [(c.name, object) if c.default is REQUIRED else (c.name, object, field(default=c.default)) for c in SCHEMA],
    bases=(_RowMethods,),
)
Row.__doc__ = "One trial, one line of results.tsv; the fields are the columns (records.SCHEMA), in order."


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def metric_of(header: list[str]) -> str:
    """The name of a results.tsv's second column: val_bpb (the lab, upstream), or a declared
    target's metric (any name that is not one of our columns)."""
    if len(header) > 1 and header[0] == "commit" and "val_bpb" not in header and header[1] not in PARSERS:
        return header[1]
    return "val_bpb"


class ResultsFile:
    """results.tsv as a file: read all rows, append one row durably, upgrade an older header.
    The Ledger (ledger.py) is its one user: it adds the lock, the numbering and the meaning."""

    def __init__(self, path: Path, metric: str = "val_bpb"):
        self.path = Path(path)
        # A declared target's results.tsv names its second column after the metric
        # (`commit  generations_per_s  memory_gb ...`); it is read back into Row.val_bpb. An
        # existing file's own name wins when it is read (see metric_of).
        self.metric = metric

    def header(self) -> list[str] | None:
        """The header's column names, or None for a missing or empty file."""
        try:
            with open(self.path, encoding="utf-8") as f:
                first = f.readline()
        except FileNotFoundError:
            return None
        return first.rstrip("\n").split("\t") if first.endswith("\n") else None

    def header_line(self) -> str:
        """The header this file is written with: HEADER, its second column named after the metric."""
        return "\t".join(["commit", self.metric, *COLUMNS[2:]]) + "\n"

    def _canonical(self, header: list[str]) -> list[str]:
        """The header with a metric's name in the second column read as val_bpb."""
        metric = metric_of(header)
        if metric != "val_bpb":
            self.metric = metric
            return ["commit", "val_bpb", *header[2:]]
        return header

    def rows(self) -> list[Row]:
        """Every complete row; a torn last line (no trailing newline) is ignored.

        Reads our columns or any subset with a header naming them (upstream's five included).
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.split("\n")[:-1]  # the piece after the last newline is empty or torn
        if not lines:
            return []
        header = self._canonical(lines[0].split("\t"))
        if "commit" not in header or "val_bpb" not in header:
            raise AutoresearchError(f"{self.path} is not a results.tsv (header: {lines[0][:80]!r})")
        unknown = [name for name in header if name not in PARSERS]
        if unknown:
            raise AutoresearchError(
                f"{self.path} has column(s) this version does not know: {', '.join(unknown[:3])} "
                f"(written by a newer autoresearch?)"
            )
        rows = []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            values = line.split("\t")
            if len(values) != len(header):
                raise AutoresearchError(
                    f"{self.path}:{number} has {len(values)} fields, expected {len(header)}"
                )
            try:
                rows.append(Row.from_fields(dict(zip(header, values))))
            except ValueError as exc:
                raise AutoresearchError(f"{self.path}:{number} does not parse: {exc}") from None
        return rows

    def upgrade(self) -> bool:
        """Rewrite a file whose header is an older prefix of COLUMNS with today's header (the
        new fields empty): once, atomically (tmp, fsync, rename). True if it did. Any other
        header is refused with a one-line error."""
        header = self.header()
        if header is not None:
            header = self._canonical(header)
        if header is None or header == list(COLUMNS):
            return False
        if header != list(COLUMNS[: len(header)]):
            raise AutoresearchError(
                f"{self.path} has a different header; move it away or use another tag"
            )
        rows = self.rows()  # also drops a torn last line
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.upgrade")
        with open(tmp, "wb") as f:
            f.write(self.header_line().encode("utf-8"))
            for row in rows:
                f.write(("\t".join(row.to_fields()) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        return True

    def append(self, row: Row) -> None:
        """Append one row with one write(), flush and fsync; write the header into a new file.

        A torn last line left by a killed writer is cut off first, so rows never run together.
        The caller holds the ledger's lock (appends from several workers never interleave).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with open(self.path, "a+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                self._repair(f, size)
            if f.seek(0, os.SEEK_END) == 0:
                prefix = self.header_line()
            else:
                f.seek(0)
                if f.readline().decode("utf-8", "replace").rstrip("\n") != self.header_line().rstrip("\n"):
                    raise AutoresearchError(
                        f"{self.path} has a different header; move it away or use another tag"
                    )
                prefix = ""
            line = prefix + "\t".join(row.to_fields()) + "\n"
            f.write(line.encode("utf-8"))  # O_APPEND: lands at the end whatever the seek
            f.flush()
            os.fsync(f.fileno())
        if created:
            _fsync_dir(self.path.parent)

    @staticmethod
    def _repair(f, size: int) -> None:
        """Truncate to the last newline if the file does not end with one (a torn write)."""
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        keep = 0
        chunk = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            data = f.read(end - start)
            newline = data.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


class RunState:
    """run.json: a small dict of run state, always replaced whole (tmp file, fsync, rename)."""

    @staticmethod
    def load(path: Path) -> dict:
        """The saved state, or {} if the file is missing or unreadable."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def save(path: Path, **fields) -> dict:
        """Merge `fields` into the saved state, stamp updated_at, write atomically; returns it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = RunState.load(path)
        state.update(fields)
        state["updated_at"] = utc_now()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return state

    @staticmethod
    def effective_state(state: dict) -> str:
        """state['state'], except that `running` with a dead pid reads as `stopped`."""
        value = state.get("state", "")
        if value == "running":
            pid = state.get("pid")
            if not isinstance(pid, int) or not _alive(pid):
                return "stopped"
        return value


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def read_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None if it does not exist."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def restore_bytes(path: Path, data: bytes | None) -> bool:
    """Put `path` back to `data` (None: no file) if it is not that any more; atomically, fsynced.
    True if it had changed. The loop guards its own records with this while untrusted code (the
    training run) runs as the same user and could write to them."""
    path = Path(path)
    if read_bytes(path) == data:
        return False
    if data is None:
        path.unlink(missing_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.restore")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    _fsync_dir(path.parent)
    return True


class RunLock:
    """results/<tag>/run.lock: one harness per tag. An flock, so a dead process holds nothing."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AutoresearchError naming the pid that holds it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            tag = self.path.parent.name
            raise AutoresearchError(f"run '{tag}' is already running (pid {holder})") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

