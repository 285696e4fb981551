"""LLM proposers through the real openai and anthropic SDKs, against a local scripted server."""

import json

import pytest
from fake_llm_server import FakeLLMServer, raw, reply, slow, status

from autoresearch.errors import AutoresearchError
from autoresearch.proposers import Context, ProposerError, ProposerOptions, get_proposer
from autoresearch.proposers.pricing import PriceTable
from autoresearch.proposers.prompt import build_messages, history_table

KEY = "sk-test-0123456789abcdef"

TRAIN_PY = '''\
"""train.py for tests."""

MATRIX_LR = 0.04  # Muon LR for 2-D weights
EMBEDDING_LR = 0.6  # Adam LR for the embedding


def main():
    print("---")
    print("val_bpb: 1.0")


main()
'''

GOOD = """I'll raise the Muon LR.

HYPOTHESIS: A higher Muon LR converges faster in the fixed budget.
DESCRIPTION: MATRIX_LR 0.04 -> 0.06

train.py
```
<<<<<<< SEARCH
MATRIX_LR = 0.04  # Muon LR for 2-D weights
=======
MATRIX_LR = 0.06  # Muon LR for 2-D weights
>>>>>>> REPLACE
```
Good luck with the run."""

MISSES = """HYPOTHESIS: lower the embedding LR
DESCRIPTION: EMBEDDING_LR 0.6 -> 0.3

<<<<<<< SEARCH
EMBEDDING_LR = 0.8  # Adam LR for embeddings
=======
EMBEDDING_LR = 0.3  # Adam LR for embeddings
>>>>>>> REPLACE
"""

OTHER_FILE = """HYPOTHESIS: evaluate on fewer tokens
DESCRIPTION: cheaper eval

prepare.py
```
<<<<<<< SEARCH
EVAL_TOKENS = 40 * 524288
=======
EVAL_TOKENS = 524288
>>>>>>> REPLACE
```
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "AUTORESEARCH_PRICES"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    with FakeLLMServer() as s:
        yield s


def make_ctx(tmp_path, **kw) -> Context:
    defaults = dict(
        program="# Research program\nGet the lowest val_bpb.",
        train_py=TRAIN_PY,
        lab_contract="MAX_SEQ_LEN = 2048\nTIME_BUDGET = 300",
        history=[
            {"experiment": 0, "commit": "abc1234", "val_bpb": "1.000000", "status": "keep",
             "description": "baseline", "hypothesis": ""},
            {"experiment": 1, "commit": "def5678", "val_bpb": "1.010000", "status": "discard",
             "description": "DEPTH 8 -> 12", "hypothesis": "deeper is better"},
        ],
        workdir=tmp_path,
        experiment=2,
        profile="cpu",
    )
    defaults.update(kw)
    return Context(**defaults)


def openai_proposer(server, **kw):
    opts = dict(api_key=KEY, base_url=server.openai_url, model="gpt-5.5", api_retries=2, timeout=10)
    opts.update(kw)
    return get_proposer("openai", ProposerOptions(**opts))


def anthropic_proposer(server, **kw):
    opts = dict(api_key=KEY, base_url=server.url, model="claude-opus-5-5", api_retries=2, timeout=10)
    opts.update(kw)
    return get_proposer("anthropic", ProposerOptions(**opts))


BACKENDS = {"openai": openai_proposer, "anthropic": anthropic_proposer}


def user_text(request) -> str:
    """Everything the SDK sent as prompt text, system included."""
    return json.dumps(request.body)


# ---------------------------------------------------------------------------
# Both backends
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_reply_with_prose_around_blocks_becomes_a_proposal(backend, server, tmp_path):
    server.push(reply(GOOD, input_tokens=2000, output_tokens=300))
    proposal = BACKENDS[backend](server).propose(make_ctx(tmp_path))
    assert proposal.description == "MATRIX_LR 0.04 -> 0.06"
    assert proposal.hypothesis == "A higher Muon LR converges faster in the fixed budget."
    assert "MATRIX_LR = 0.06  # Muon LR" in proposal.train_py
    assert proposal.attempts == 1 and proposal.raw == GOOD
    assert proposal.usage.input_tokens == 2000 and proposal.usage.output_tokens == 300
    price_in, price_out = (5.0, 30.0) if backend == "openai" else (4.0, 20.0)
    assert proposal.usage.cost_usd == pytest.approx((2000 * price_in + 300 * price_out) / 1e6)
    assert proposal.model in ("gpt-5.5", "claude-opus-5-5")
    assert "Get the lowest val_bpb." in proposal.prompt


@pytest.mark.parametrize("backend", BACKENDS)
def test_request_carries_program_history_contract_and_train_py_but_never_the_key(backend, server, tmp_path):
    server.push(reply(GOOD))
    BACKENDS[backend](server).propose(make_ctx(tmp_path))
    (request,) = server.requests
    body = user_text(request)
    for expected in ("Get the lowest val_bpb.", "TIME_BUDGET = 300", "DEPTH 8 -> 12", "deeper is better",
                     "MATRIX_LR = 0.04", "<<<<<<< SEARCH", "HYPOTHESIS:"):
        assert expected in body, expected
    assert KEY not in body
    if backend == "openai":
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert request.body["messages"][0]["role"] == "system"
    else:
        assert request.path == "/v1/messages"
        # Older SDKs send x-api-key, this one sends a bearer token: either carries the key.
        assert KEY in (request.headers.get("x-api-key"), request.headers.get("authorization", "")[7:])
        assert "SEARCH/REPLACE" in request.body["system"] and request.body["max_tokens"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_edit_that_does_not_apply_is_sent_back_with_nearest_lines_then_fixed(backend, server, tmp_path):
    server.push(reply(MISSES, 1000, 100), reply(GOOD, 1500, 200))
    proposal = BACKENDS[backend](server).propose(make_ctx(tmp_path))
    assert proposal.attempts == 2
    assert proposal.usage.input_tokens == 2500 and proposal.usage.output_tokens == 300
    assert MISSES in proposal.raw and GOOD in proposal.raw
    second = server.requests[1].body["messages"]
    assert second[-2] == {"role": "assistant", "content": MISSES}
    feedback = second[-1]["content"]
    assert "was not found in train.py" in feedback
    assert "EMBEDDING_LR = 0.6  # Adam LR for the embedding" in feedback  # the nearest real line
    assert "3 attempts left" in feedback


@pytest.mark.parametrize("backend", BACKENDS)
def test_edit_to_another_file_is_refused_and_retried(backend, server, tmp_path):
    server.push(reply(OTHER_FILE), reply(GOOD))
    proposal = BACKENDS[backend](server).propose(make_ctx(tmp_path))
    assert proposal.attempts == 2 and "EVAL_TOKENS" not in proposal.train_py
    assert "Only train.py may be edited" in server.requests[1].body["messages"][-1]["content"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rate_limit_with_retry_after_is_retried_by_the_sdk(backend, server, tmp_path):
    server.push(status(429, "slow down", retry_after_ms=20), status(500), reply(GOOD))
    proposal = BACKENDS[backend](server).propose(make_ctx(tmp_path))
    assert proposal.description == "MATRIX_LR 0.04 -> 0.06"
    assert len(server.requests) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_errors_past_the_retries_are_one_line_proposer_errors(backend, server, tmp_path):
    server.push(*[status(500, "the GPU caught fire")] * 3)
    with pytest.raises(ProposerError) as err:
        BACKENDS[backend](server, api_retries=1).propose(make_ctx(tmp_path))
    assert len(server.requests) == 2
    assert str(err.value) == f"{backend}: HTTP 500: the GPU caught fire"


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_json_is_a_proposer_error(backend, server, tmp_path):
    server.push(raw(b'{"choices": [oops'))
    with pytest.raises(ProposerError, match=f"^{backend}: unreadable response"):
        BACKENDS[backend](server).propose(make_ctx(tmp_path))


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_of_the_wrong_shape_is_a_proposer_error(backend, server, tmp_path):
    server.push(raw(b"[1, 2, 3]"))
    with pytest.raises(ProposerError, match=f"^{backend}: response has no"):
        BACKENDS[backend](server).propose(make_ctx(tmp_path))


@pytest.mark.parametrize("backend", BACKENDS)
def test_replies_without_blocks_use_up_the_retries_then_fail_with_summed_usage(backend, server, tmp_path):
    server.push(reply("", 100, 0), reply("I can't help with that.", 100, 10),
                reply("HYPOTHESIS: idea but no edit", 100, 10), reply("Sure! Done.", 100, 10))
    with pytest.raises(ProposerError) as err:
        BACKENDS[backend](server).propose(make_ctx(tmp_path))
    assert len(server.requests) == 4  # 1 + max_edit_retries (3)
    assert "no applicable edit after 4 replies" in str(err.value)
    assert "no SEARCH/REPLACE block" in str(err.value)
    assert err.value.usage.input_tokens == 400 and err.value.usage.output_tokens == 30
    assert "I can't help with that." in err.value.raw
    assert server.requests[1].body["messages"][-2]["content"] == "(empty reply)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_reply_of_several_megabytes_is_not_echoed_back_whole(backend, server, tmp_path):
    huge = "Let me think. " * 300_000  # ~4 MB of prose, no block
    server.push(reply(huge), reply(GOOD))
    proposal = BACKENDS[backend](server).propose(make_ctx(tmp_path))
    assert proposal.attempts == 2
    assert len(server.requests[0].raw) < 100_000
    assert len(server.requests[1].raw) < 100_000  # the echo of the huge reply was clipped
    assert "characters cut" in server.requests[1].body["messages"][-2]["content"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_slow_server_times_out(backend, server, tmp_path):
    server.push(slow(3.0))
    with pytest.raises(ProposerError, match="timed out after 0.5s"):
        BACKENDS[backend](server, timeout=0.5, api_retries=0).propose(make_ctx(tmp_path))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreachable_server_is_a_proposer_error(backend, tmp_path):
    opts = ProposerOptions(api_key=KEY, base_url="http://127.0.0.1:9/v1", api_retries=0, timeout=5)
    with pytest.raises(ProposerError, match="cannot connect to http://127.0.0.1:9"):
        get_proposer(backend, opts).propose(make_ctx(tmp_path))


@pytest.mark.parametrize("backend", BACKENDS)
def test_key_echoed_in_a_server_error_is_redacted(backend, server, tmp_path):
    server.push(status(401, f"Incorrect API key provided: {KEY}"))
    with pytest.raises(ProposerError) as err:
        BACKENDS[backend](server).propose(make_ctx(tmp_path))
    assert KEY not in str(err.value) and "***" in str(err.value)


# ---------------------------------------------------------------------------
# Factories and keys
# ---------------------------------------------------------------------------


def test_unknown_proposer_lists_the_known_ones():
    with pytest.raises(AutoresearchError, match="unknown proposer 'gpt'; known proposers: anthropic, command, hparam, openai"):
        get_proposer("gpt", ProposerOptions())


@pytest.mark.parametrize("backend, var", [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_missing_key_names_the_variable_to_set(backend, var):
    with pytest.raises(AutoresearchError, match=f"set {var}"):
        get_proposer(backend, ProposerOptions())


def test_key_and_base_url_come_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
    server.push(reply(GOOD))
    get_proposer("openai", ProposerOptions(api_retries=0)).propose(make_ctx(tmp_path))
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert server.requests[0].body["model"] == "gpt-5.5"  # the documented default


def test_local_server_without_a_key_gets_a_placeholder(server, tmp_path):
    server.push(reply(GOOD))
    proposal = get_proposer("openai", ProposerOptions(base_url=server.openai_url, model="qwen3-coder")).propose(make_ctx(tmp_path))
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"
    assert proposal.usage.cost_usd == 0.0 and proposal.usage.input_tokens == 1000  # unknown model: free, counted


def test_anthropic_base_url_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    server.push(reply(GOOD))
    assert get_proposer("anthropic", ProposerOptions(api_retries=0)).propose(make_ctx(tmp_path)).attempts == 1
    assert server.requests[0].body["model"] == "claude-opus-5-5"


# ---------------------------------------------------------------------------
# Pricing
# ---------------------------------------------------------------------------


def test_prices_match_dated_and_provider_prefixed_names():
    table = PriceTable(env={})
    assert table.lookup("claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert table.lookup("gpt-5-mini-2025-08-07") == (0.25, 2.0)
    assert table.lookup("openai/gpt-5") == (1.25, 10.0)
    assert table.lookup("gpt-5.5-pro") == (30.0, 180.0)  # not mistaken for gpt-5.5
    assert table.lookup("gpt-5.3") is None  # nor for gpt-5: unknown versions cost 0
    assert table.lookup("llama3:70b") is None
    assert table.cost("gpt-5", 1_000_000, 100_000) == pytest.approx(2.25)


def test_prices_are_overridden_by_options_then_file(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-5": {"input": 2, "output": 20}, "my-model": [1, 1]}))
    table = PriceTable({"my-model": [5, 5]}, env={"AUTORESEARCH_PRICES": str(prices)})
    assert table.lookup("gpt-5") == (2.0, 20.0)
    assert table.lookup("my-model") == (5.0, 5.0)
    assert table.lookup("claude-haiku-4-5") == (1.0, 5.0)


def test_bad_prices_file_is_a_one_line_autoresearch_error(tmp_path):
    bad = tmp_path / "prices.json"
    bad.write_text("{nope")
    with pytest.raises(AutoresearchError, match="AUTORESEARCH_PRICES=.*not valid JSON"):
        PriceTable(env={"AUTORESEARCH_PRICES": str(bad)})
    with pytest.raises(AutoresearchError, match="cannot read"):
        PriceTable(env={"AUTORESEARCH_PRICES": str(tmp_path / "missing.json")})
    bad.write_text('{"gpt-5": "cheap"}')
    with pytest.raises(AutoresearchError, match="must be \\[input, output\\]"):
        PriceTable(env={"AUTORESEARCH_PRICES": str(bad)})


def test_prices_env_file_reaches_the_proposal(server, tmp_path, monkeypatch):
    prices = tmp_path / "prices.json"
    prices.write_text('{"qwen3-coder": [10, 100]}')
    monkeypatch.setenv("AUTORESEARCH_PRICES", str(prices))
    server.push(reply(GOOD, 1000, 100))
    proposal = openai_proposer(server, model="qwen3-coder").propose(make_ctx(tmp_path))
    assert proposal.usage.cost_usd == pytest.approx((1000 * 10 + 100 * 100) / 1e6)


# ---------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------


def test_history_table_trims_fields_and_compresses_old_rows(tmp_path):
    rows = [
        {"experiment": i, "commit": f"{i:07x}", "val_bpb": f"{1 - i * 1e-4:.6f}", "status": "discard",
         "description": f"idea {i} " + "x" * 300, "hypothesis": "because " + "y" * 300}
        for i in range(500)
    ]
    rows[0]["status"] = "keep"
    table = history_table(rows, best={"commit": "0000000", "experiment": 0, "val_bpb": 1.0, "trials": 2}, noise=3e-4)
    assert "idea 499 " in table and "idea 160 " in table  # every idea but the oldest is named
    assert max(len(line) for line in table.split("\n")) < 400
    assert "x" * 121 not in table and "y" * 121 not in table
    assert "(160 oldest experiments omitted)" in table and "idea 159 " not in table
    assert len(table) < 60_000
    assert table.startswith("1 kept, 499 discarded, 0 crashed. Baseline val_bpb 1.000000; best 1.000000 "
                            "(experiment 0, commit 0000000). Run-to-run noise: sigma 0.000300")


def test_fix_attempt_prompt_carries_the_crash_log_tail(tmp_path):
    log = "step 1\n" * 5000 + "RuntimeError: CUDA out of memory"
    system, user = build_messages(make_ctx(tmp_path, feedback=f"crash: exit 1\n{log}"))
    assert "The last attempt crashed" in user and user.count("step 1") < 1000
    assert "RuntimeError: CUDA out of memory" in user
    assert "fix attempt" in user
    assert "Edit only train.py" in system


def test_crash_reason_shows_in_history(tmp_path):
    rows = [{"experiment": 3, "commit": "aaaaaaa", "val_bpb": "0.000000", "status": "crash",
             "reason": "timeout", "description": "DEPTH 8 -> 32", "hypothesis": "h"}]
    table = history_table(rows)
    assert "| 3 | aaaaaaa | - | crash (timeout) | DEPTH 8 -> 32 | h |" in table
