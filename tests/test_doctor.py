"""Start-up checks: real caches from prepare.py, the real SDKs against the local fake server."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoresearch.doctor import check_agent, check_data, check_disk, check_proposer, preflight, run_checks
from autoresearch.errors import AutoresearchError
from autoresearch.proposers import ProposerOptions
from conftest import REPO_ROOT
from fake_llm_server import FakeLLMServer, models, status

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")


def env_for(cache: Path, **extra) -> dict:
    return {"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_SOURCE": "stdlib", "PATH": os.environ["PATH"], **extra}


def test_a_prepared_source_passes_with_its_size(lab_cache):
    c = check_data(REPO_ROOT, "cpu", env_for(lab_cache))
    assert c.ok, c.detail
    assert c.detail.startswith("stdlib: ") and "vocab 2048" in c.detail and "M tokens" in c.detail


def test_an_unprepared_source_fails_with_the_prepare_command(tmp_path):
    c = check_data(REPO_ROOT, "cpu", {"AUTORESEARCH_CACHE": str(tmp_path)})  # stdlib: the cpu default
    assert not c.ok and "source 'stdlib' is not prepared" in c.detail
    assert c.fix == "autoresearch prepare --profile cpu --source stdlib"
    c = check_data(REPO_ROOT, "gpu", {"AUTORESEARCH_CACHE": str(tmp_path), "AUTORESEARCH_SOURCE": "mytexts"})
    assert c.fix == "autoresearch prepare --profile gpu --from-dir PATH (or --from-parquet PATH) --name mytexts"


def test_a_tokenizer_of_the_other_profile_fails(lab_cache):
    c = check_data(REPO_ROOT, "gpu", env_for(lab_cache))
    assert not c.ok and "vocab 2048, profile gpu needs 8192" in c.detail
    assert c.fix == "autoresearch prepare --profile gpu --source stdlib"


def test_tokens_from_another_tokenizer_or_a_changed_shard_fail(lab_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(lab_cache / "stdlib", cache / "stdlib")
    pkl = cache / "stdlib" / "tokenizer" / "tokenizer.pkl"
    pkl.write_bytes(pkl.read_bytes() + b"\0")  # an interrupted prepare retrained the tokenizer
    c = check_data(REPO_ROOT, "cpu", env_for(cache))
    assert not c.ok and "made with another tokenizer" in c.detail
    shutil.rmtree(cache)
    shutil.copytree(lab_cache / "stdlib", cache / "stdlib")
    (cache / "stdlib" / "tokens" / "val.npy").unlink()
    c = check_data(REPO_ROOT, "cpu", env_for(cache))
    assert not c.ok and "stale for val.parquet" in c.detail


def test_a_disk_below_the_threshold_fails(tmp_path):
    assert check_disk(tmp_path / "results").ok  # a folder not made yet: its nearest parent is measured
    c = check_disk(tmp_path / "results", min_free_gb=1e9)
    assert not c.ok and f"at {tmp_path}" in c.detail and c.fix


@no_gpu
def test_the_gpu_profile_without_a_gpu_fails_and_the_cpu_profile_passes(tmp_path):
    checks = {c.name: c for c in run_checks(REPO_ROOT, "gpu", "hparam", env={"AUTORESEARCH_CACHE": str(tmp_path)})}
    assert not checks["gpu"].ok and "no CUDA device is visible to torch" in checks["gpu"].detail
    assert "CPU build" in checks["gpu"].detail and checks["gpu"].fix.endswith("or use --profile cpu")
    assert run_checks(REPO_ROOT, "cpu", "hparam", env={})[0].ok


def test_openai_key_is_accepted_and_the_model_is_offered():
    with FakeLLMServer() as server:
        server.push(models("gpt-a", "gpt-b"), models("gpt-a"))
        opts = ProposerOptions(model="gpt-b", base_url=server.openai_url)
        c = check_proposer("openai", opts, {"OPENAI_API_KEY": "sk-test-123"})
        assert c.ok, c.detail
        assert server.requests[0].path == "/v1/models" and server.requests[0].headers["authorization"] == "Bearer sk-test-123"
        c = check_proposer("openai", opts, {"OPENAI_API_KEY": "sk-test-123"})
        assert not c.ok and "offers no model 'gpt-b'" in c.detail and c.fix == "pass --model with one of: gpt-a"
    assert len(server.requests) == 2  # one call per check, nothing generated


def test_a_refused_openai_key_fails_without_showing_the_key():
    with FakeLLMServer() as server:
        server.push(status(401, "Incorrect API key provided: sk-secret-987"))
        c = check_proposer("openai", ProposerOptions(base_url=server.openai_url), {"OPENAI_API_KEY": "sk-secret-987"})
    assert not c.ok and "refused the key (HTTP 401" in c.detail and c.fix == "set a valid OPENAI_API_KEY"
    assert "sk-secret-987" not in c.detail + c.fix


def test_openai_without_a_key_or_a_server_fails():
    c = check_proposer("openai", ProposerOptions(), {})
    assert not c.ok and c.detail == "OPENAI_API_KEY is not set"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    c = check_proposer("openai", ProposerOptions(base_url=f"http://127.0.0.1:{port}/v1"), {})
    assert not c.ok and c.detail.startswith("openai: cannot connect to http://127.0.0.1:")


def test_anthropic_key_and_model_are_checked_with_one_get():
    with FakeLLMServer() as server:
        server.push(models("claude-x"), models("claude-x"), status(401, "invalid x-api-key"))
        env = {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": server.url}
        assert check_proposer("anthropic", ProposerOptions(model="claude-x"), env).ok
        sent = server.requests[0].headers
        assert server.requests[0].path == "/v1/models/claude-x"
        assert "sk-ant-test" in (sent.get("x-api-key", ""), sent.get("authorization", "").removeprefix("Bearer "))
        c = check_proposer("anthropic", ProposerOptions(model="claude-y"), env)
        assert not c.ok and "has no model 'claude-y'" in c.detail
        c = check_proposer("anthropic", ProposerOptions(model="claude-x"), env)
        assert not c.ok and "refused the key (HTTP 401" in c.detail and c.fix == "set a valid ANTHROPIC_API_KEY"
    assert not check_proposer("anthropic", ProposerOptions(), {}).ok


def test_proposers_without_keys_and_bad_names():
    assert check_proposer("hparam", ProposerOptions(), {}).ok
    assert check_proposer("optuna", ProposerOptions(sampler="cmaes"), {}).ok
    c = check_proposer("optuna", ProposerOptions(sampler="grid"), {})
    assert not c.ok and c.fix == "use --sampler tpe or cmaes or random"
    c = check_proposer("gemini", ProposerOptions(), {})
    assert not c.ok and "hparam" in c.fix and "optuna" in c.fix


def test_the_agent_command_is_found_on_path_or_in_the_checkout(tmp_path):
    env = {"PATH": os.environ["PATH"]}
    assert check_agent("sh -c 'cat >/dev/null'", REPO_ROOT, env).ok
    assert check_agent("FOO=1 sh -c true", REPO_ROOT, env).ok  # leading assignments are not the program
    c = check_agent("no-such-agent --go", REPO_ROOT, env)
    assert not c.ok and c.detail == "'no-such-agent' is not found on PATH or in the checkout"
    c = check_agent("harness/claude.sh", REPO_ROOT, {"PATH": str(tmp_path)})
    assert not c.ok and "runs 'claude', which is not on PATH" in c.detail
    fake = tmp_path / "claude"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    c = check_agent("harness/claude.sh", REPO_ROOT, {"PATH": str(tmp_path)})
    assert c.ok and str(fake) in c.detail
    assert not check_agent("", REPO_ROOT, env).ok


def test_preflight_raises_the_first_failure_as_one_line(tmp_path, lab_cache):
    env = env_for(lab_cache)
    assert [c.name for c in preflight(REPO_ROOT, "cpu", "hparam", env=env)] == ["gpu", "data", "disk", "proposer"]
    with pytest.raises(AutoresearchError) as err:
        preflight(REPO_ROOT, "cpu", "command", ProposerOptions(command="no-such-agent"), env=env)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("agent: 'no-such-agent' is not found") and "fix: install it" in str(err.value)


def test_doctor_command_prints_a_table_and_exits_1_on_a_failure(lab_cache, tmp_path):
    def doctor(*args, cache):
        env = {**os.environ, "AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_SOURCE": "stdlib",
               "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"}
        return subprocess.run([sys.executable, "-m", "autoresearch", "doctor", "--repo", str(REPO_ROOT), *args],
                              env=env, capture_output=True, text=True, timeout=120)

    good = doctor("--profile", "cpu", cache=lab_cache)
    assert good.returncode == 0, good.stdout + good.stderr
    assert all(name in good.stdout for name in ("gpu", "data", "disk", "proposer")) and "FAIL" not in good.stdout
    bad = doctor("--profile", "cpu", "--proposer", "command", "--command", "no-such-agent", cache=tmp_path)
    assert bad.returncode == 1 and bad.stdout.count("FAIL") == 2  # data and agent
    assert "autoresearch prepare --profile cpu --source stdlib" in bad.stdout and "Traceback" not in bad.stderr
    odd = doctor("--profile", "tpu", cache=tmp_path)
    assert odd.returncode == 1 and odd.stderr.strip() == "error: bad --profile 'tpu': use gpu or cpu"


def test_a_lab_without_our_profiles_table_is_not_data_checked(tmp_repo):
    from standin import make_lab

    lab = make_lab(tmp_repo)  # the loop tests' stand-in: a stub prepare.py
    c = check_data(lab, "cpu", {})
    assert c.ok and c.detail.startswith("not checked:")
    assert [c.ok for c in preflight(lab, "cpu", "hparam", env={})] == [True] * 4
