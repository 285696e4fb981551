"""SEARCH/REPLACE: lenient parsing of messy replies, strict application, helpful errors."""

import pytest

from autoresearch.edits import EditBlock, EditError, apply_blocks, apply_reply, check_path, parse_reply

SOURCE = '''\
"""A tiny train.py."""

import torch

# ---------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------

MATRIX_LR = 0.04  # Muon LR for 2-D weights
EMBEDDING_LR = 0.6  # Adam LR for the embedding
WARMDOWN_RATIO = 0.5  # fraction of the budget spent decaying the LR


def lr_multiplier(progress):
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown * 1.0 + (1 - cooldown) * 0.0


def step(model, opt):
    loss = model()
    loss.backward()
    opt.step()
    return loss
'''


def test_fenced_reply_with_prose_and_fields_applies():
    text = """I think the Muon LR is too low for this budget.

HYPOTHESIS: A higher Muon LR converges faster within 5 minutes.
DESCRIPTION: MATRIX_LR 0.04 -> 0.06

Here is the change:

train.py
```python
<<<<<<< SEARCH
MATRIX_LR = 0.04  # Muon LR for 2-D weights
=======
MATRIX_LR = 0.06  # Muon LR for 2-D weights
>>>>>>> REPLACE
```

Let me know how it goes!"""
    reply, new = apply_reply(SOURCE, text)
    assert reply.hypothesis == "A higher Muon LR converges faster within 5 minutes."
    assert reply.description == "MATRIX_LR 0.04 -> 0.06"
    assert "MATRIX_LR = 0.06  # Muon LR" in new
    assert new.replace("0.06", "0.04") == SOURCE


def test_missing_fences_crlf_and_odd_marker_lengths_parse():
    text = (
        "**Hypothesis:** shorter warmdown keeps the LR high for longer\r\n"
        "**Description:** warmdown 0.5 -> 0.3\r\n"
        "\r\n"
        "<<<<< SEARCH   \r\n"
        "WARMDOWN_RATIO = 0.5  # fraction of the budget spent decaying the LR\r\n"
        "=========\r\n"
        "WARMDOWN_RATIO = 0.3  # fraction of the budget spent decaying the LR\r\n"
        ">>>>>>>>> REPLACE \r\n"
    )
    reply, new = apply_reply(SOURCE, text)
    assert reply.hypothesis == "shorter warmdown keeps the LR high for longer"
    assert reply.description == "warmdown 0.5 -> 0.3"
    assert reply.blocks[0].path == "train.py"
    assert "WARMDOWN_RATIO = 0.3" in new
    assert "\r" not in new


def test_several_blocks_apply_in_order_and_inherit_filename():
    text = """HYPOTHESIS: both LRs up
DESCRIPTION: LRs x1.5

```train.py
<<<<<<< SEARCH
MATRIX_LR = 0.04  # Muon LR for 2-D weights
=======
MATRIX_LR = 0.06  # Muon LR for 2-D weights
>>>>>>> REPLACE
```

```
<<<<<<< SEARCH
EMBEDDING_LR = 0.6  # Adam LR for the embedding
=======
EMBEDDING_LR = 0.9  # Adam LR for the embedding
>>>>>>> REPLACE
```
"""
    reply, new = apply_reply(SOURCE, text)
    assert [b.index for b in reply.blocks] == [1, 2]
    assert all(b.path == "train.py" for b in reply.blocks)
    assert "MATRIX_LR = 0.06" in new and "EMBEDDING_LR = 0.9" in new


def test_trailing_whitespace_and_uniform_indent_difference_still_match():
    # The model dropped the function body's indentation and added trailing spaces.
    text = """DESCRIPTION: clip nothing
<<<<<<< SEARCH
loss = model()   
loss.backward()
=======
loss = model()
loss = loss * 1.0
loss.backward()
>>>>>>> REPLACE
"""
    _, new = apply_reply(SOURCE, text)
    assert "    loss = model()\n    loss = loss * 1.0\n    loss.backward()\n" in new


def test_over_indented_search_is_outdented_with_its_replace():
    block = EditBlock(
        "        cooldown = (1.0 - progress) / WARMDOWN_RATIO\n",
        "        cooldown = (1.0 - progress) / max(WARMDOWN_RATIO, 1e-8)\n",
    )
    new = apply_blocks(SOURCE, [block])
    assert "\n    cooldown = (1.0 - progress) / max(WARMDOWN_RATIO, 1e-8)\n" in new


def test_blank_lines_at_the_edges_of_search_are_forgiven():
    block = EditBlock("\n\nMATRIX_LR = 0.04  # Muon LR for 2-D weights\n\n\n", "MATRIX_LR = 0.05  # Muon LR for 2-D weights\n")
    assert "MATRIX_LR = 0.05" in apply_blocks(SOURCE, [block])


def test_ambiguous_search_is_an_error_naming_the_lines():
    source = SOURCE + "\n\ndef again(model):\n    loss = model()\n    loss.backward()\n"
    block = EditBlock("    loss = model()\n    loss.backward()\n", "    loss = model() * 2\n    loss.backward()\n")
    with pytest.raises(EditError) as err:
        apply_blocks(source, [block])
    msg = str(err.value)
    assert "Block 1 of 1" in msg and "matches 2 places in train.py (lines 22, 29)" in msg
    assert "Add surrounding lines" in msg


def test_exact_match_wins_over_an_indentation_insensitive_one():
    source = SOURCE + "\n\ndef other():\n    return 1.0\n"
    new = apply_blocks(source, [EditBlock("    return 1.0\n", "    return 2.0\n")])
    assert new.endswith("def other():\n    return 2.0\n")
    assert "        return 1.0\n" in new
    # Without indentation it matches both places loosely: ambiguous, not a guess.
    with pytest.raises(EditError, match="matches 2 places"):
        apply_blocks(source, [EditBlock("return 1.0\n", "return 2.0\n")])


def test_no_match_names_block_and_shows_nearest_real_lines():
    text = """DESCRIPTION: two blocks
<<<<<<< SEARCH
MATRIX_LR = 0.04  # Muon LR for 2-D weights
=======
MATRIX_LR = 0.05  # Muon LR for 2-D weights
>>>>>>> REPLACE

<<<<<<< SEARCH
def lr_multiplier(progress):
    if progress < 1.0 - WARMUP_RATIO:
        return 1.0
=======
def lr_multiplier(progress):
    return 1.0
>>>>>>> REPLACE
"""
    with pytest.raises(EditError) as err:
        apply_reply(SOURCE, text)
    msg = str(err.value)
    assert "Block 2 of 2" in msg and "was not found" in msg
    assert "SEARCH starting `def lr_multiplier(progress):`" in msg
    assert "nearest real lines of train.py (lines 12-18)" in msg
    assert "    if progress < 1.0 - WARMDOWN_RATIO:" in msg
    assert "No block was applied" in msg


def test_nothing_applies_when_a_later_block_fails():
    blocks = [
        EditBlock("MATRIX_LR = 0.04  # Muon LR for 2-D weights\n", "MATRIX_LR = 0.05  # Muon LR for 2-D weights\n", index=1),
        EditBlock("NOT_THERE = 1\n", "NOT_THERE = 2\n", index=2),
    ]
    with pytest.raises(EditError):
        apply_blocks(SOURCE, blocks)


@pytest.mark.parametrize(
    "path, why",
    [
        ("prepare.py", "is not train.py"),
        ("../train.py", "leaves the repository"),
        ("/etc/train.py", "is an absolute path"),
        ("sub/../../train.py", "leaves the repository"),
        ("src/train.py", "is not train.py"),
        ("C:\\work\\train.py", "is an absolute path"),
    ],
)
def test_blocks_for_other_paths_are_rejected(path, why):
    text = f"""{path}
```
<<<<<<< SEARCH
MATRIX_LR = 0.04  # Muon LR for 2-D weights
=======
MATRIX_LR = 0.05  # Muon LR for 2-D weights
>>>>>>> REPLACE
```"""
    with pytest.raises(EditError) as err:
        apply_reply(SOURCE, text)
    assert why in str(err.value) and "Only train.py may be edited" in str(err.value)


def test_dot_slash_train_py_and_decorated_filenames_are_accepted():
    assert check_path("./train.py") is None
    for header in ("./train.py", "`train.py`", "### train.py", "**train.py**", "File: train.py:"):
        text = f"{header}\n<<<<<<< SEARCH\nMATRIX_LR = 0.04  # Muon LR for 2-D weights\n=======\nMATRIX_LR = 0.05  # Muon LR for 2-D weights\n>>>>>>> REPLACE\n"
        _, new = apply_reply(SOURCE, text)
        assert "MATRIX_LR = 0.05" in new, header


def test_empty_search_replaces_the_whole_file_only_when_alone():
    whole = "print('hello')\n"
    text = f"DESCRIPTION: rewrite\n<<<<<<< SEARCH\n=======\n{whole}>>>>>>> REPLACE\n"
    _, new = apply_reply(SOURCE, text)
    assert new == whole
    two = text + "<<<<<<< SEARCH\nimport torch\n=======\nimport numpy\n>>>>>>> REPLACE\n"
    with pytest.raises(EditError, match="empty SEARCH"):
        apply_reply(SOURCE, two)


def test_reply_without_blocks_or_refusal_is_an_error():
    for text in ("", "I'm sorry, I can't help with that.", "HYPOTHESIS: x\nDESCRIPTION: y\n"):
        with pytest.raises(EditError, match="no SEARCH/REPLACE block"):
            apply_reply(SOURCE, text)


def test_cut_off_reply_says_so():
    text = "<<<<<<< SEARCH\nMATRIX_LR = 0.04  # Muon LR for 2-D weights\n=======\nMATRIX_LR = 0.0"
    with pytest.raises(EditError, match="not closed.*cut off"):
        parse_reply(text)


def test_edit_that_breaks_syntax_is_reported_before_training():
    text = "<<<<<<< SEARCH\n    return loss\n=======\n    return loss)\n>>>>>>> REPLACE\n"
    with pytest.raises(EditError, match="not valid Python"):
        apply_reply(SOURCE, text)


def test_no_op_edit_is_rejected():
    line = "MATRIX_LR = 0.04  # Muon LR for 2-D weights\n"
    with pytest.raises(EditError, match="unchanged"):
        apply_reply(SOURCE, f"<<<<<<< SEARCH\n{line}=======\n{line}>>>>>>> REPLACE\n")


def test_replace_already_present_gets_a_hint():
    block = EditBlock("MATRIX_LR = 0.08  # Muon LR for 2-D weights\n", "MATRIX_LR = 0.04  # Muon LR for 2-D weights\n")
    with pytest.raises(EditError, match="already in train.py"):
        apply_blocks(SOURCE, [block])


def test_first_field_lines_win_and_are_kept_to_one_line():
    text = "HYPOTHESIS:   first   idea  \nDESCRIPTION: label\nHYPOTHESIS: second\n"
    reply = parse_reply(text)
    assert reply.hypothesis == "first idea" and reply.description == "label"
