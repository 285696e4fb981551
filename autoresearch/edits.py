"""SEARCH/REPLACE edits to the edit files (train.py in the lab): parse leniently, apply strictly.

The reply format every proposer asks for (see proposers/prompt.py):

    HYPOTHESIS: one sentence: what you expect and why
    DESCRIPTION: a short label for the results table

    train.py
    ```
    <<<<<<< SEARCH
    lines copied exactly from train.py
    =======
    the lines that replace them
    >>>>>>> REPLACE
    ```

Parsing is lenient: prose anywhere, fences or none, CRLF, 5-9 marker characters, trailing spaces
on markers, a missing filename (means the previous block's file, else the only edit file:
train.py in the lab). A reply may edit several files, each block naming its file on the line
before its fence (aider's form); a block for a file that is not an edit file is refused with a
message naming the edit files. Applying is strict: a SEARCH must match exactly
once, first byte-for-byte, then ignoring trailing whitespace and a uniform indentation shift,
then ignoring blank lines at its edges. Never fuzzy. A SEARCH that matches nowhere or more than
once is an EditError that names the block and shows the nearest real lines, so the model can fix
it. An empty SEARCH means "replace the whole file" and is only allowed as its file's one block.
All blocks apply or none do.
"""

import ast
import difflib
import heapq
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field

TARGET = "train.py"

HEAD = re.compile(r"^\s*<{5,9}\s*SEARCH\s*>?\s*$", re.IGNORECASE)
DIVIDER = re.compile(r"^\s*={5,9}\s*$")
UPDATED = re.compile(r"^\s*>{5,9}\s*REPLACE\s*<?\s*$", re.IGNORECASE)
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([^\s`]*)\s*$")
FIELD = re.compile(r"^[\s>*#_-]*(HYPOTHESIS|DESCRIPTION)[*_]*\s*[:：]\s*(.*?)\s*$", re.IGNORECASE)

TOKEN = re.compile(r"\w+|[^\w\s]")  # for ranking near misses
MAX_FIELD_CHARS = 300  # a hypothesis or description is one line of the results table
MAX_SHOWN_LINES = 12  # of a failing SEARCH, in the error message


class EditError(Exception):
    """A reply could not be turned into a new train.py; the message is written for the model."""


@dataclass
class EditBlock:
    search: str
    replace: str
    path: str = TARGET
    index: int = 1  # 1-based position in the reply, for error messages


@dataclass
class Reply:
    hypothesis: str = ""
    description: str = ""
    blocks: list[EditBlock] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Parsing (lenient)
# ---------------------------------------------------------------------------


def parse_reply(text: str, default_path: str = TARGET) -> Reply:
    """HYPOTHESIS/DESCRIPTION lines and SEARCH/REPLACE blocks of a reply; raises EditError.
    A block that names no file (nor follows one that does) gets `default_path` ("": unnamed)."""
    lines = _normalise_newlines(text).split("\n")
    reply = Reply()
    i = 0
    current_path = None  # a block without a filename line edits the previous block's file
    while i < len(lines):
        line = lines[i]
        if HEAD.match(line):
            path = _filename_before(lines, i) or current_path or default_path
            current_path = path
            block, i = _read_block(lines, i, len(reply.blocks) + 1, path)
            reply.blocks.append(block)
            continue
        m = FIELD.match(line)
        if m:
            key, value = m.group(1).lower(), _clean_field(m.group(2))
            if value and not getattr(reply, key):
                setattr(reply, key, value)
        i += 1
    return reply


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _clean_field(value: str) -> str:
    value = value.strip().strip("*_`").strip()
    value = " ".join(value.split())
    return value[:MAX_FIELD_CHARS]


def _read_block(lines: list[str], head: int, index: int, path: str) -> tuple[EditBlock, int]:
    """Read from a SEARCH marker at `head` to its REPLACE marker; return the block and next line."""
    i = head + 1
    search = []
    while i < len(lines) and not DIVIDER.match(lines[i]):
        if HEAD.match(lines[i]) or UPDATED.match(lines[i]):
            raise EditError(f"Block {index}: expected a `=======` line after the SEARCH lines.")
        search.append(lines[i])
        i += 1
    if i >= len(lines):
        raise EditError(
            f"Block {index} is not closed: no `=======` line after `<<<<<<< SEARCH` "
            "(was the reply cut off? keep the edit small)."
        )
    i += 1
    replace = []
    while i < len(lines) and not UPDATED.match(lines[i]):
        if HEAD.match(lines[i]) or DIVIDER.match(lines[i]):
            raise EditError(f"Block {index}: expected a `>>>>>>> REPLACE` line to end the block.")
        replace.append(lines[i])
        i += 1
    if i >= len(lines):
        raise EditError(
            f"Block {index} is not closed: no `>>>>>>> REPLACE` line "
            "(was the reply cut off? keep the edit small)."
        )
    return EditBlock(_join(search), _join(replace), path, index), i + 1


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _filename_before(lines: list[str], head: int) -> str | None:
    """The filename on the up to 3 lines above a SEARCH marker, skipping fence lines."""
    for line in reversed(lines[max(0, head - 3) : head]):
        fence = FENCE.match(line)
        if fence:
            candidate = fence.group(2)  # ```train.py
            if _looks_like_path(candidate):
                return candidate
            continue
        candidate = _strip_decorations(line)
        return candidate if _looks_like_path(candidate) else None
    return None


def _strip_decorations(line: str) -> str:
    s = line.strip().rstrip(":").strip()
    s = re.sub(r"^(?:#+|[-*]\s)\s*", "", s)
    s = re.sub(r"^(?:file(?:name)?|path)\s*:\s*", "", s, flags=re.IGNORECASE)
    return s.strip("`*_'\"").strip()


def _looks_like_path(s: str) -> bool:
    return bool(s) and not any(c.isspace() for c in s) and ("." in s or "/" in s or "\\" in s)


def check_path(path: str, allowed=(TARGET,)) -> str | None:
    """None if `path` names one of the `allowed` edit files, else why it is refused."""
    raw = path.replace("\\", "/")
    if not raw:
        return "no file (put the file's path on the line before the block's fence)"
    if raw.startswith("/") or re.match(r"^[A-Za-z]:/", raw):
        return f"`{path}` is an absolute path"
    if ".." in raw.split("/"):
        return f"`{path}` leaves the repository"
    if posixpath.normpath(raw) not in allowed:
        return f"`{path}` is not {' or '.join(allowed)}"
    return None


def normal_path(path: str) -> str:
    return posixpath.normpath(path.replace("\\", "/"))


# ---------------------------------------------------------------------------
# Applying (strict)
# ---------------------------------------------------------------------------


def apply_blocks(source: str, blocks: list[EditBlock]) -> str:
    """Return train.py's `source` with every block applied in order; raises EditError, applying nothing."""
    return apply_file_blocks({TARGET: source}, blocks)[TARGET]


def apply_file_blocks(files: dict[str, str], blocks: list[EditBlock]) -> dict[str, str]:
    """Every edit file (path -> text) with the blocks applied in order, each to the file it
    names; raises EditError, applying nothing. `files` holds every edit file, edited or not."""
    allowed = tuple(files)
    names = " or ".join(allowed)
    if not blocks:
        raise EditError(
            "Your reply contained no SEARCH/REPLACE block. Reply with HYPOTHESIS:, DESCRIPTION: "
            f"and one or more blocks that edit {names}."
        )
    for block in blocks:
        refused = check_path(block.path, allowed)
        if refused:
            raise EditError(
                f"Block {block.index} edits {refused}. Only {', '.join(allowed)} may be edited; "
                f"send blocks for {names} only."
            )
    out = dict(files)
    by_file: dict[str, list[EditBlock]] = {}
    for block in blocks:
        by_file.setdefault(normal_path(block.path), []).append(block)
    for name, own in by_file.items():
        whole_file = [b for b in own if not b.search.strip()]
        if whole_file:
            if len(own) > 1:
                raise EditError(
                    f"Block {whole_file[0].index} has an empty SEARCH, which means 'replace the whole "
                    f"file', but the reply has other blocks for {name} too. Copy the lines to change into SEARCH."
                )
            if not own[0].replace.strip():
                raise EditError(f"Block {own[0].index} has an empty SEARCH and an empty REPLACE: that deletes {name}.")
            out[name] = own[0].replace
            continue
        for block in own:
            out[name] = _apply_one(out[name], block, len(blocks), name)
    return out


def apply_reply(source: str, text: str) -> tuple[Reply, str]:
    """Parse a reply and apply it to train.py; the new text must still be valid Python."""
    reply, new = apply_reply_files({TARGET: source}, text)
    return reply, new[TARGET]


def apply_reply_files(files: dict[str, str], text: str) -> tuple[Reply, dict[str, str]]:
    """Parse a reply and apply it to the edit files (path -> text); returns every edit file's
    new text. Something must change, and every changed .py file must still be valid Python."""
    default = next(iter(files)) if len(files) == 1 else ""
    reply = parse_reply(text, default)
    new = apply_file_blocks(files, reply.blocks)
    changed = [name for name in files if new[name] != files[name]]
    if not changed:
        raise EditError(f"The edit leaves {' and '.join(files)} unchanged. Propose a real change.")
    for name in changed:
        if name.endswith(".py"):
            check_syntax(new[name], name)
    return reply, new


def check_syntax(text: str, name: str = TARGET) -> None:
    try:
        ast.parse(text)
    except SyntaxError as err:
        lines = text.split("\n")
        lo, hi = max(0, (err.lineno or 1) - 3), min(len(lines), (err.lineno or 1) + 2)
        shown = "\n".join(lines[lo:hi])
        raise EditError(
            f"After the edit {name} is not valid Python: {err.msg} at line {err.lineno}:\n"
            f"```\n{shown}\n```\nFix the edit."
        ) from None


def _apply_one(text: str, block: EditBlock, total: int, name: str = TARGET) -> str:
    whole = text.split("\n")
    trailing_newline = text.endswith("\n")
    if trailing_newline:
        whole = whole[:-1]
    search, replace = _lines(block.search), _lines(block.replace)

    for matcher in (_exact, _loose, _loose_trimmed):
        starts, new_lines, length = matcher(whole, search, replace)
        if len(starts) == 1:
            i = starts[0]
            out = whole[:i] + new_lines + whole[i + length :]
            return "\n".join(out) + ("\n" if trailing_newline else "")
        if len(starts) > 1:
            where = ", ".join(str(s + 1) for s in starts[:6])
            raise EditError(
                f"{_name(block, total)} matches {len(starts)} places in {name} (lines {where}). "
                "Add surrounding lines to the SEARCH so that it matches exactly one place. "
                "No block was applied; send all blocks again."
            )
    raise EditError(_not_found_message(whole, block, total, name))


def _lines(text: str) -> list[str]:
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n") if text else []


def _name(block: EditBlock, total: int) -> str:
    first = next((line.strip() for line in block.search.split("\n") if line.strip()), "")
    return f"Block {block.index} of {total} (SEARCH starting `{first[:80]}`)"


def _exact(whole, search, replace):
    return _find(whole, search, lambda a, b: a == b), replace, len(search)


def _loose(whole, search, replace):
    """Equal but for trailing whitespace and one uniform indentation shift."""
    starts = []
    shifts = {}
    n = len(search)
    for i in range(len(whole) - n + 1):
        shift = _indent_shift(whole[i : i + n], search)
        if shift is not None:
            starts.append(i)
            shifts[i] = shift
    if len(starts) != 1:
        return starts, replace, n
    return starts, _reindent(replace, shifts[starts[0]]), n


def _loose_trimmed(whole, search, replace):
    """As _loose, after dropping blank lines at the edges of SEARCH and REPLACE."""
    s, r = _trim_blank(search), _trim_blank(replace)
    if not s or (s == search and r == replace):
        return [], replace, len(search)
    return _loose(whole, s, r)


def _trim_blank(lines: list[str]) -> list[str]:
    lo, hi = 0, len(lines)
    while lo < hi and not lines[lo].strip():
        lo += 1
    while hi > lo and not lines[hi - 1].strip():
        hi -= 1
    return lines[lo:hi]


def _find(whole, part, same) -> list[int]:
    n = len(part)
    if n == 0:
        return []
    return [i for i in range(len(whole) - n + 1) if all(same(whole[i + k], part[k]) for k in range(n))]


def _indent_shift(window: list[str], part: list[str]):
    """('+', s) if window == s + part on every non-blank line, ('-', s) if part == s + window."""
    adds, removes = set(), set()
    for w, p in zip(window, part):
        w, p = w.rstrip(), p.rstrip()
        if not w and not p:
            continue
        if w.lstrip() != p.lstrip() or not w or not p:
            return None
        wi, pi = w[: len(w) - len(w.lstrip())], p[: len(p) - len(p.lstrip())]
        if wi.endswith(pi):
            adds.add(wi[: len(wi) - len(pi)])
        else:
            adds.add(None)
        if pi.endswith(wi):
            removes.add(pi[: len(pi) - len(wi)])
        else:
            removes.add(None)
    if len(adds) == 1 and None not in adds:
        return ("+", adds.pop())
    if len(removes) == 1 and None not in removes:
        return ("-", removes.pop())
    if not adds:  # only blank lines
        return ("+", "")
    return None


def _reindent(lines: list[str], shift) -> list[str]:
    kind, s = shift
    out = []
    for line in lines:
        if not line.strip() or not s:
            out.append(line)
        elif kind == "+":
            out.append(s + line)
        else:
            out.append(line[len(s) :] if line.startswith(s) else line.lstrip(" \t"))
    return out


def _not_found_message(whole: list[str], block: EditBlock, total: int, name: str = TARGET) -> str:
    search = _lines(block.search)
    shown = "\n".join(search[:MAX_SHOWN_LINES]) + ("\n..." if len(search) > MAX_SHOWN_LINES else "")
    msg = [
        f"{_name(block, total)} was not found in {name}. Its SEARCH was:",
        f"```\n{shown}\n```",
    ]
    lo, hi = nearest_window(whole, search)
    if hi > lo:
        near = "\n".join(whole[lo:hi])
        msg.append(f"The nearest real lines of {name} (lines {lo + 1}-{hi}) are:\n```\n{near}\n```")
    replace_body = block.replace.strip("\n")
    if replace_body and replace_body in "\n".join(whole):
        msg.append(f"The REPLACE lines are already in {name}: is this block needed at all?")
    msg.append(
        f"The SEARCH lines must be copied exactly from the current {name}, including indentation "
        "and comments. No block was applied; send all blocks again, fixed."
    )
    return "\n".join(msg)


def nearest_window(whole: list[str], search: list[str], context: int = 2) -> tuple[int, int]:
    """[lo, hi) of the lines of `whole` most similar to `search`, with a little context.

    Windows as long as the SEARCH are ranked cheaply by shared word tokens, then the best few
    are compared character by character (difflib), so a miss costs milliseconds, not seconds."""
    probe = [line.strip() for line in search if line.strip()][:60]
    if not probe or not whole:
        return 0, 0
    n = min(len(search), len(whole), 60)
    want = Counter(t for line in probe for t in _tokens(line))
    if not want:
        return 0, 0
    line_tokens = [Counter(_tokens(line)) for line in whole]
    window = Counter()
    for tokens in line_tokens[:n]:
        window.update(tokens)
    scores = []
    for i in range(len(whole) - n + 1):
        if i:
            window.subtract(line_tokens[i - 1])
            window.update(line_tokens[i + n - 1])
        shared = sum(min(c, window[t]) for t, c in want.items())
        scores.append((shared, -i))
    target = "\n".join(probe)
    best, best_i = 0.0, 0
    for shared, neg_i in heapq.nlargest(5, scores):
        i = -neg_i
        text = "\n".join(line.strip() for line in whole[i : i + n] if line.strip())
        ratio = difflib.SequenceMatcher(None, text, target).ratio()
        if ratio > best:
            best, best_i = ratio, i
    if best < 0.3:
        return 0, 0
    return max(0, best_i - context), min(len(whole), best_i + n + context)


def _tokens(line: str) -> list[str]:
    return TOKEN.findall(line)
