"""Per-trial overhead of running training through a Ray actor instead of in the harness.

A train.py that prints its summary at once is run N times each way, the three ways interleaved:
`run_training` in a folder (what the loop does today), `LocalTrainer.run` (scratch folder,
files written, log and artefacts read back) and `RayTrainerPool` with one actor on a local Ray
instance (submit -> result, the job and the output pickled through Ray). The differences are
the cost per trial of each layer; the training itself (a Python start) is in all three.
One-time costs (ray.init, starting the actor) are printed apart.

    python bench/ray_overhead.py              # 30 trials each
    python bench/ray_overhead.py --trials 100 --artefact-mb 50
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.runner import run_training, training_env
from autoresearch.trainers import LocalTrainer, TrainJob

TRAIN_PY = '''\
import os
size = int(os.environ.get("BENCH_ARTEFACT_BYTES", "0"))
if size:
    with open(os.path.join(os.environ.get("AUTORESEARCH_OUTPUT_DIR", "."), "model.bin"), "wb") as f:
        f.write(os.urandom(size))
print("---")
print("val_bpb:          1.000000")
print("num_steps:        1")
'''


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def row(name: str, times: list[float], base: float | None = None) -> str:
    med = statistics.median(times)
    p90 = sorted(times)[int(0.9 * (len(times) - 1))]
    extra = "" if base is None else f"{(med - base) * 1000:+9.1f}"
    return f"{name:<26} {med * 1000:9.1f} {p90 * 1000:9.1f} {extra:>9}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--artefact-mb", type=float, default=0.0, help="size of a file each run sends back")
    args = parser.parse_args()
    env = {"BENCH_ARTEFACT_BYTES": str(int(args.artefact_mb * 2**20))}
    job = TrainJob(1, 0, TRAIN_PY, {"prepare.py": "TIME_BUDGET = 1\n"}, env, timeout=60)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lab = tmp / "lab"
        lab.mkdir()
        (lab / "train.py").write_text(TRAIN_PY)
        direct_env = training_env(os.environ, {**env, "AUTORESEARCH_OUTPUT_DIR": str(tmp)})
        trainer = LocalTrainer("bench", scratch_root=tmp / "scratch")

        import ray

        from autoresearch.ray_pool import RayTrainerPool

        t0 = time.perf_counter()
        ray.init(num_cpus=2, num_gpus=1, object_store_memory=max(80 << 20, int(4 * args.artefact_mb * 2**20)),
                 include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pool = RayTrainerPool(workers=1, scratch_root=str(tmp / "ray-scratch"))
        pool.workers()
        actor_s = time.perf_counter() - t0
        first = timed(lambda: pool.result(pool.submit(job)))
        # Interleaved, so that a noisy neighbour or a warming cache hits all three alike.
        direct, local, through_ray = [], [], []
        for _ in range(args.trials):
            direct.append(timed(lambda: run_training(lab, tmp / "run.log", 60, direct_env)))
            local.append(timed(lambda: trainer.run(job)))
            through_ray.append(timed(lambda: pool.result(pool.submit(job))))
        pool.close()
        ray.shutdown()

    base = statistics.median(direct)
    print(f"{args.trials} trials each, artefact {args.artefact_mb:g} MiB, python {sys.version.split()[0]}, ray {ray.__version__}")
    print(f"{'per trial (ms)':<26} {'median':>9} {'p90':>9} {'vs direct':>9}")
    print(row("run_training (today)", direct))
    print(row("LocalTrainer.run", local, base))
    print(row("RayTrainerPool, 1 actor", through_ray, base))
    print(f"one-time: ray.init {init_s:.2f} s, first actor ready {actor_s:.2f} s, first trial {first * 1000:.0f} ms")


if __name__ == "__main__":
    main()
