"""Reading tokens and cost out of Claude Code's and Codex's machine-readable output."""

import json

import pytest

from autoresearch.proposers.agent_usage import usage_from_output
from autoresearch.proposers.command import parse_fields
from autoresearch.proposers.pricing import PriceTable, cached_share

PRICES = PriceTable(env={})

# Verbatim shapes: a `claude -p --output-format json` result (one line) and a `codex exec --json`
# stream, as the CLIs print them (ids and numbers made up).
CLAUDE = (
    '{"type":"result","subtype":"success","is_error":false,"duration_ms":31877,"duration_api_ms":30412,'
    '"num_turns":5,"result":"Done: warmup shortened.\\n\\nHYPOTHESIS: a shorter warmup leaves more steps at '
    'the peak LR\\nDESCRIPTION: WARMUP_RATIO 0.1 -> 0.05","stop_reason":"end_turn",'
    '"session_id":"e1b6c0de-0f7b-4d6e-a1b2-3c4d5e6f7a8b","total_cost_usd":0.0925731,'
    '"usage":{"input_tokens":9,"cache_creation_input_tokens":12011,"cache_read_input_tokens":50233,'
    '"output_tokens":1204,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},'
    '"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":12011}},'
    '"modelUsage":{"claude-sonnet-4-5-20250929":{"inputTokens":9,"outputTokens":1204,"cacheReadInputTokens":50233,'
    '"cacheCreationInputTokens":12011,"webSearchRequests":0,"costUSD":0.0925731,"contextWindow":200000,'
    '"maxOutputTokens":64000}},"permission_denials":[],"uuid":"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d"}\n'
)
CODEX = "\n".join([
    '{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}',
    '{"type":"turn.started"}',
    '{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"**Scanning train.py**"}}',
    '{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"bash -lc \'cat train.py\'",'
    '"aggregated_output":"HYPOTHESIS: <from the prompt, echoed>\\n","exit_code":0,"status":"completed"}}',
    '{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"Looking at the schedule first."}}',
    '{"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"Changed the warmup.\\n'
    'HYPOTHESIS: a shorter warmup helps\\nDESCRIPTION: WARMUP_RATIO 0.1 -> 0.05"}}',
    '{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122}}',
]) + "\n"


def test_claude_result_gives_its_own_cost_and_all_input_tokens():
    usage, text = usage_from_output(CLAUDE, "", PRICES)
    assert usage.cost_usd == pytest.approx(0.0925731)
    assert usage.input_tokens == 9 + 12011 + 50233 and usage.cached_input_tokens == 50233
    assert usage.output_tokens == 1204 and usage.note == ""
    fields = parse_fields(text)
    assert fields.description == "WARMUP_RATIO 0.1 -> 0.05"
    assert fields.hypothesis == "a shorter warmup leaves more steps at the peak LR"


def test_claude_pretty_printed_or_verbose_array_with_prose_around_is_read_too():
    obj = json.loads(CLAUDE)
    pretty = "Claude Code v2\nsome warning on stderr\n" + json.dumps(obj, indent=2) + "\ntrailing words\n"
    verbose = json.dumps([{"type": "system", "subtype": "init", "session_id": "x", "tools": ["Read", "Edit"]},
                          {"type": "assistant", "message": {"content": [{"type": "text", "text": "DESCRIPTION: no"}]}},
                          obj])
    for output in (pretty, verbose):
        usage, text = usage_from_output(output, "", PRICES)
        assert usage.cost_usd == pytest.approx(0.0925731) and usage.output_tokens == 1204
        assert parse_fields(text).description == "WARMUP_RATIO 0.1 -> 0.05"


def test_claude_error_result_still_counts_its_cost():
    obj = json.loads(CLAUDE)
    obj.update(subtype="error_max_turns", is_error=True, total_cost_usd=0.41)
    del obj["result"]
    usage, text = usage_from_output(json.dumps(obj), "", PRICES)
    assert usage.cost_usd == pytest.approx(0.41) and usage.output_tokens == 1204
    assert "error_max_turns" in usage.note
    obj.update(subtype="success", is_error=True, result="API Error: 529 Overloaded", total_cost_usd=0.02)
    usage, _ = usage_from_output(json.dumps(obj), "", PRICES)
    assert usage.cost_usd == pytest.approx(0.02) and "an error result" in usage.note


def test_claude_result_without_a_cost_is_priced_from_the_table_or_said_to_be_unpriced():
    obj = json.loads(CLAUDE)
    del obj["total_cost_usd"], obj["modelUsage"]
    usage, _ = usage_from_output(json.dumps(obj), "claude-sonnet-4-5", PRICES)
    fresh, cached, out = 9 + 12011, 50233, 1204
    assert usage.cost_usd == pytest.approx((fresh * 3 + cached * 0.3 + out * 15) / 1e6)
    assert "priced from the table" in usage.note
    usage, _ = usage_from_output(json.dumps(obj), "", PRICES)
    assert usage.cost_usd == 0 and usage.input_tokens == fresh + cached
    assert "no cost" in usage.note and "--model" in usage.note


def test_codex_stream_is_priced_by_model_with_cached_input_at_its_share():
    usage, text = usage_from_output(CODEX, "gpt-5.3-codex", PRICES)
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (24763, 24448, 122)
    assert usage.cost_usd == pytest.approx(((24763 - 24448) * 1.75 + 24448 * 0.175 + 122 * 14) / 1e6)
    assert usage.note == ""
    fields = parse_fields(text)  # the last agent message wins; command output is not the answer
    assert fields.description == "WARMUP_RATIO 0.1 -> 0.05" and fields.hypothesis == "a shorter warmup helps"


@pytest.mark.parametrize("model, words", [("", "pass --model"), ("my-finetune", "AUTORESEARCH_PRICES")])
def test_codex_with_an_unknown_model_records_tokens_and_says_why_the_cost_is_0(model, words):
    usage, _ = usage_from_output(CODEX, model, PRICES)
    assert usage.input_tokens == 24763 and usage.output_tokens == 122 and usage.cost_usd == 0
    assert words in usage.note


def test_codex_prices_can_come_from_the_prices_file(tmp_path):
    (tmp_path / "p.json").write_text('{"my-finetune": [1, 2]}')
    prices = PriceTable(env={"AUTORESEARCH_PRICES": str(tmp_path / "p.json")})
    usage, _ = usage_from_output(CODEX, "my-finetune", prices)
    assert usage.cost_usd == pytest.approx((24763 * 1 + 122 * 2) / 1e6)  # no known family: cached at full price


def test_codex_usage_is_a_running_total_per_thread():
    second_turn = CODEX.replace('"input_tokens":24763', '"input_tokens":30000')
    usage, _ = usage_from_output(CODEX + "\n".join(second_turn.splitlines()[-1:]), "gpt-5", PRICES)
    assert usage.input_tokens == 30000  # the later total replaces the earlier one, not added to it
    usage, _ = usage_from_output(CODEX + second_turn, "gpt-5", PRICES)
    assert usage.input_tokens == 24763 + 30000  # two `codex exec` runs: two threads, summed


def test_codex_failed_or_killed_turn_has_no_usage_and_says_so():
    failed = "\n".join(CODEX.splitlines()[:2] + [
        '{"type":"error","message":"Reconnecting... 1/5"}',
        '{"type":"turn.failed","error":{"message":"stream disconnected before completion"}}'])
    usage, _ = usage_from_output(failed, "gpt-5", PRICES)
    assert usage.input_tokens == 0 and usage.cost_usd == 0
    assert "turn failed: Reconnecting... 1/5; stream disconnected" in usage.note
    killed = "\n".join(CODEX.splitlines()[:4]) + '\n{"type":"item.started","item":{"id":"item_4","ty'
    usage, text = usage_from_output(killed, "gpt-5", PRICES)
    assert usage.cost_usd == 0 and "stopped or crashed" in usage.note
    assert '"ty' in text  # the truncated line stays as text: nothing is lost from the record


def test_plain_text_and_garbage_report_no_usage_and_keep_their_lines():
    garbage = 'Loading\n{"type": "result", "subtype": "succ\n{ nope }\n}\n[1, 2\nDESCRIPTION: still here\n'
    usage, text = usage_from_output(garbage, "gpt-5", PRICES)
    assert (usage.input_tokens, usage.cost_usd) == (0, 0) and "no token usage" in usage.note
    assert text == garbage and parse_fields(text).description == "still here"
    assert usage_from_output("", "", PRICES)[0].note == "the command reported no token usage"


def test_cached_share_by_family():
    assert cached_share("gpt-5.3-codex") == 0.1 and cached_share("openai/gpt-4o-mini") == 0.5
    assert cached_share("claude-opus-4-6") == 0.1 and cached_share("llama-3") == 1.0
    assert PRICES.cost("gpt-5", 1000, 0, cached_input_tokens=5000) == pytest.approx(1000 * 0.125 / 1e6)
