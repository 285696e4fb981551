"""A small LZ77 compressor: the file autoresearch edits (bench.py is fixed).

`compress(data) -> bytes` and `decompress(blob) -> bytes` must round-trip exactly; bench.py
prints the compressed size over the original (`ratio`, lower is better). The format: groups of
up to 8 tokens, each group led by a flag byte (bit i set: token i is a match). A literal is one
byte; a match is two bytes, a 12-bit distance back and a 4-bit length - MIN_MATCH. A match is
only used when it saves bytes. The search is naive: every position of the window is tried.
"""

WINDOW = 64  # how far back a match may start (the 12-bit distance allows up to 4095)
MIN_MATCH = 3  # shorter repeats are sent as literals
MAX_MATCH = 10  # longest match (the 4-bit length allows up to MIN_MATCH + 15)


def compress(data: bytes) -> bytes:
    out = bytearray()
    flags_at, flags, count = 0, 0, 8
    i = 0
    while i < len(data):
        if count == 8:  # start a new group of 8 tokens
            flags_at, flags, count = len(out), 0, 0
            out.append(0)
        distance, length = _longest(data, i)
        if length >= MIN_MATCH:
            code = (distance << 4) | (length - MIN_MATCH)
            out += bytes((code >> 8, code & 0xFF))
            flags |= 1 << count
            i += length
        else:
            out.append(data[i])
            i += 1
        count += 1
        out[flags_at] = flags
    return bytes(out)


def _longest(data: bytes, i: int) -> tuple[int, int]:
    best_distance, best_length = 0, 0
    limit = min(MAX_MATCH, len(data) - i)
    for start in range(max(0, i - WINDOW), i):
        length = 0
        while length < limit and data[start + length] == data[i + length]:
            length += 1
        if length > best_length:
            best_distance, best_length = i - start, length
    return best_distance, best_length


def decompress(blob: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(blob):
        flags = blob[i]
        i += 1
        for bit in range(8):
            if i >= len(blob):
                break
            if flags >> bit & 1:
                code = blob[i] << 8 | blob[i + 1]
                i += 2
                distance, length = code >> 4, (code & 0xF) + MIN_MATCH
                for _ in range(length):
                    out.append(out[-distance])
            else:
                out.append(blob[i])
                i += 1
    return bytes(out)
