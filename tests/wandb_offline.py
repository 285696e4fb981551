"""Read W&B's offline run files (run-<id>.wandb) for tests: what `wandb sync` would upload.

The file is W&B's 7-byte header, then LevelDB-log chunks (32 KiB blocks; each chunk a CRC,
a length, a type: full, first, middle, last) holding protobuf Records.
"""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", path
    out, pos, buffer = [], 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, FIRST):
            buffer = chunk
        else:
            buffer += chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(buffer)
            out.append(record)
    return out


def offline_run(folder: Path) -> dict:
    """One offline run folder: its id, history rows (step -> values), config, summary, files."""
    (wandb_file,) = Path(folder).glob("run-*.wandb")
    run = {"id": None, "group": None, "history": {}, "config": {}, "summary": {}, "files": [], "exit": None}
    for record in records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"], run["group"] = record.run.run_id, record.run.run_group
            run["config"].update(_items(record.run.config.update))
        elif kind == "config":
            run["config"].update(_items(record.config.update))
        elif kind == "history":
            values = _items(record.history.item)
            run["history"][record.history.step.num] = values
        elif kind == "summary":
            run["summary"].update(_items(record.summary.update))
        elif kind == "files":
            run["files"] += [f.path for f in record.files.files]
        elif kind == "exit":
            run["exit"] = record.exit.exit_code
    return run


def _items(items) -> dict:
    """Key/value items; W&B's core writes the key as a path (nested_key) rather than as key."""
    return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in items}


def offline_runs(wandb_dir: Path) -> list[dict]:
    return [offline_run(folder) for folder in sorted(Path(wandb_dir).glob("offline-run-*"))]


def runs_by_id(wandb_dir: Path) -> dict[str, dict]:
    """The offline folders of one run id (a run resumed once per row) as that run after `wandb
    sync`: history by step, the latest config, summary and exit code, every file and folder."""
    merged: dict[str, dict] = {}
    for folder in sorted(Path(wandb_dir).glob("offline-run-*")):
        run = offline_run(folder)
        into = merged.setdefault(run["id"], {**run, "history": {}, "files": [], "folders": []})
        into["history"].update(run["history"])
        into["config"] = {**into["config"], **run["config"]}
        into["summary"] = {**into["summary"], **run["summary"]}
        into["files"] += run["files"]
        into["folders"].append(folder)
        into["exit"] = run["exit"]
    return merged
