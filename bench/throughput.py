"""How much of the night the GPU trains: speculative proposals against --no-speculate.

The real loop (autoresearch.loop.run) with the real openai proposer (the openai SDK) against a
scripted Chat Completions server of this bench's own on 127.0.0.1 that answers after L seconds,
and a stand-in train.py that sleeps B seconds and reports val_bpb = 1 + the sum of its twelve
knobs K0..K11. Each reply moves one knob (seeded): down with probability 1/6 (a keep), up
otherwise, so ideas mostly touch other lines than the last kept one and can be rebased.
For several (B, L) pairs, each mode in turn, in one run:

    experiments/hour, the fraction of wall time spent training (from the run_seconds and
    gpu_idle_seconds columns), and the ratio to the limit 3600 / (mean run_seconds), i.e. to
    a GPU that trains without a gap (B + process start + eval of the stand-in)

    python bench/throughput.py                       # B, L in (2, 0.5) (2, 2) (3, 3) (2, 4); 12 experiments
    python bench/throughput.py --pairs 2:1 5:5 --experiments 20
"""

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from autoresearch.loop import RunConfig, run
from autoresearch.live import View
from autoresearch.proposers import get_proposer
from autoresearch.proposers.base import ProposerOptions
from autoresearch.records import ResultsFile

KNOBS = 12
TRAIN_PY = '''\
"""Bench stand-in: sleeps BENCH_B seconds, val_bpb = 1 + the knobs."""
import os
import time

''' + "".join(f"K{i} = 0.0\n" for i in range(KNOBS)) + '''
time.sleep(float(os.environ.get("BENCH_B", "2")))
val = 1.0 + ''' + " + ".join(f"K{i}" for i in range(KNOBS)) + '''
print("---")
print(f"val_bpb:          {val:.6f}")
print("training_seconds: 1.0")
print("peak_vram_mb:     1.0")
'''
PREPARE_PY = '"""Bench stub."""\nMAX_SEQ_LEN = 64\nTIME_BUDGET = 2\n\n\ndef evaluate_bpb(model, tokenizer, batch_size):\n    return 1.0\n'
KNOB = re.compile(r"^(K\d+) = (-?[0-9.]+)$", re.M)


class Server:
    """Answers every chat completion after `latency` seconds with one knob moved."""

    def __init__(self, latency: float, seed: int):
        self.latency, self.rng, self.lock = latency, random.Random(seed), threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return "http://%s:%d/v1" % self.httpd.server_address[:2]

    def reply(self, prompt: str) -> str:
        knobs = KNOB.findall(prompt)[-KNOBS:]  # the best train.py's lines, as the prompt shows them
        with self.lock:
            name, value = knobs[self.rng.randrange(len(knobs))]
            step = -0.01 if self.rng.random() < 1 / 6 else 0.01
        new = round(float(value) + step, 6)
        return (f"HYPOTHESIS: moving {name} helps\nDESCRIPTION: {name} {value} -> {new}\n\ntrain.py\n```\n"
                f"<<<<<<< SEARCH\n{name} = {value}\n=======\n{name} = {new}\n>>>>>>> REPLACE\n```\n")

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
                time.sleep(server.latency)
                payload = json.dumps({
                    "id": "bench", "object": "chat.completion", "created": 0, "model": body.get("model", "bench"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": server.reply(prompt)}}],
                    "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
                }).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def make_lab(folder: Path) -> Path:
    root = folder / "lab"
    root.mkdir(parents=True)
    for name, text in {"train.py": TRAIN_PY, "prepare.py": PREPARE_PY, "program.md": "# bench\n",
                       ".gitignore": "results/\n.autoresearch/\n"}.items():
        (root / name).write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench lab"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def measure(budget: float, latency: float, speculate: bool, experiments: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        root = make_lab(Path(tmp))
        server = Server(latency, seed)
        try:
            proposer = get_proposer("openai", ProposerOptions(base_url=server.url, api_key="bench", model="bench",
                                                              timeout=60, api_retries=0))
            config = RunConfig(repo_root=root, tag="b", profile="cpu", time_budget=budget, timeout=budget + 60,
                               keep_rule="greedy", baseline_repeats=1, max_experiments=experiments,
                               speculate=speculate, extra_env={"BENCH_B": f"{budget:g}"})
            started = time.monotonic()
            run(config, proposer=proposer, view=View("b", quiet=True))
            wall = time.monotonic() - started
        finally:
            server.close()
        rows = ResultsFile(root / "results/b/results.tsv").rows()
    busy = sum(r.run_seconds for r in rows)
    idle = sum(r.gpu_idle_seconds for r in rows)
    per_run = busy / len(rows)
    rate = len(rows) / wall * 3600
    ways = {}
    for r in rows:
        if r.speculation:
            ways[r.speculation] = ways.get(r.speculation, 0) + 1
    return {"B": budget, "L": latency, "mode": "speculate" if speculate else "sequential", "experiments": len(rows),
            "kept": sum(r.status == "keep" for r in rows) - 1, "per_hour": rate, "training": busy / (busy + idle),
            "limit": 3600 / per_run, "ratio": rate / (3600 / per_run), "ways": ways}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=["2:0.5", "2:2", "3:3", "2:4"], help="B:L pairs, seconds")
    parser.add_argument("--experiments", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("| B s | L s | mode | experiments | kept | exp/hour | GPU trained | limit exp/hour | ratio | how ideas came |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pair in args.pairs:
        budget, latency = (float(x) for x in pair.split(":"))
        for speculate in (True, False):
            m = measure(budget, latency, speculate, args.experiments, args.seed)
            ways = ", ".join(f"{k} {v}" for k, v in sorted(m["ways"].items()))
            print(f"| {m['B']:g} | {m['L']:g} | {m['mode']} | {m['experiments']} | {m['kept']} | {m['per_hour']:.0f} "
                  f"| {100 * m['training']:.1f}% | {m['limit']:.0f} | {m['ratio']:.3f} | {ways} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
