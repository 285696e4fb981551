"""parse_summary and diverged on saved training logs (tests/data/*.log) and odd inputs."""

import math
from pathlib import Path

from autoresearch.summary import SUMMARY_KEYS, diverged, parse_summary

DATA = Path(__file__).parent / "data"


def log(name: str) -> str:
    # newline="" keeps \r and \r\n exactly as train.py wrote them
    return (DATA / name).open(encoding="utf-8", newline="").read()


def test_upstream_h100_log_parses_to_the_published_baseline():
    fields = parse_summary(log("upstream_h100.log"))
    assert fields == {
        "val_bpb": 0.9979,
        "training_seconds": 300.1,
        "total_seconds": 325.9,
        "peak_vram_mb": 45060.2,
        "mfu_percent": 39.8,
        "total_tokens_M": 499.6,
        "num_steps": 953,
        "num_params_M": 50.3,
        "depth": 8,
    }
    assert type(fields["num_steps"]) is int and type(fields["depth"]) is int
    assert diverged(log("upstream_h100.log")) is None


def test_crlf_log_with_every_key_parses_values_and_types():
    fields = parse_summary(log("cpu_crlf.log"))
    assert set(fields) == set(SUMMARY_KEYS)
    assert fields["val_bpb"] == 1.874512
    assert math.isnan(fields["mfu_percent"])
    assert fields["device"] == "cpu" and fields["profile"] == "cpu"
    assert fields["time_budget"] == 60.0
    assert fields["depth"] == 2 and fields["num_steps"] == 118


def test_truncated_summary_keeps_complete_lines_and_drops_the_cut_one():
    fields = parse_summary(log("truncated.log"))
    # mfu_percent was cut at "39.8" (the real value is 39.80): an unterminated line is not trusted
    assert fields == {
        "val_bpb": 0.9979,
        "training_seconds": 300.1,
        "total_seconds": 325.9,
        "peak_vram_mb": 45060.2,
    }


def test_fail_printed_right_after_a_progress_line_is_found():
    text = log("diverged_upstream.log")
    assert diverged(text) == "FAIL"
    assert parse_summary(text) == {}


def test_fail_with_a_reason_keeps_the_reason():
    assert diverged(log("diverged_reason.log")) == "FAIL loss is nan at step 12"


def test_crash_log_is_neither_summary_nor_fail():
    text = log("crash_oom.log")
    assert parse_summary(text) == {}
    assert diverged(text) is None


def test_last_dashes_line_wins_and_earlier_blocks_are_ignored():
    text = "---\nval_bpb: 9.0\nnote: first\n---\nval_bpb: 1.5\n"
    assert parse_summary(text) == {"val_bpb": 1.5}


def test_device_with_colons_and_unknown_keys_are_kept_as_text():
    text = (
        "---\n"
        "device:           cuda:NVIDIA H100 80GB HBM3\n"
        "profile: gpu\n"
        "seed: 42\n"
        "optimizer_name: muon\n"
    )
    assert parse_summary(text) == {
        "device": "cuda:NVIDIA H100 80GB HBM3",
        "profile": "gpu",
        "seed": 42.0,
        "optimizer_name": "muon",
    }


def test_garbage_and_traceback_lines_after_the_summary_are_ignored():
    text = (
        "---\n"
        "val_bpb: 1.25\n"
        "this is not a field\n"
        "Traceback (most recent call last):\n"
        '  File "train.py", line 1, in <module>\n'
        "RuntimeError: exit hook failed\n"
        "num_steps: 12\n"
        "depth:\n"
    )
    assert parse_summary(text) == {"val_bpb": 1.25, "num_steps": 12}


def test_non_finite_and_non_numeric_values():
    text = "---\nval_bpb: nan\ntotal_seconds: inf\nnum_steps: lots\ndepth: 4.0\n"
    fields = parse_summary(text)
    assert math.isnan(fields["val_bpb"])
    assert fields["total_seconds"] == math.inf
    assert fields["num_steps"] == "lots"
    assert fields["depth"] == 4 and type(fields["depth"]) is int


def test_no_block_gives_empty_dict():
    assert parse_summary("") == {}
    assert parse_summary("step 1 loss 3.2\nval_bpb: 1.0\n") == {}
    assert parse_summary("-----\nval_bpb: 1.0\n") == {}


def test_words_that_merely_start_with_fail_are_not_divergence():
    assert diverged("FAILED to import flash_attn, falling back\n") is None
    assert diverged("AssertionError: FAIL\n") is None
    assert diverged("FAIL: loss 1.2e3 > 100\n") == "FAIL: loss 1.2e3 > 100"
