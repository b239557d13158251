"""score: the scoring job (local Ray: CPU extract pool -> one model actor -> Parquet) on the
sample corpus, against a bound computed from each stage's cost measured alone in the same
run (one thread, as one actor has): min(actors / CPU stage, 1 / model stage, cores / both).
Steady-state clips/s come from two runs (a quarter of the clips and all of them), so the
fixed start-up (Ray Data planning, actors loading models) is shown apart; pipeline
efficiency = steady state / bound (target >= 0.85). Peak RSS per actor kind is sampled
from /proc while the job runs. 1 vs 2 CPU actors. Model: random-init heads over
EfficientNet-Lite0 (scene), log-mel (audio) and face (cost does not depend on the values).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from benchmarks.harness import ActorMemory, random_package


def bench_score(args: argparse.Namespace) -> dict[str, float]:
    """End-to-end scoring clips/s vs the bound from each stage's cost in isolation."""
    import os
    import shutil

    import torch

    from emotiw.io.corpus import write_sample_corpus
    from emotiw.io.storage import list_video_objects, read_bytes, video_id
    from emotiw.jobs.pipeline import ensure_ray
    from emotiw.jobs.score import ScoreConfig, run_score
    from emotiw.models.features import ClipFeatureExtractor, ModalityConfigs, rows_to_table
    from emotiw.models.inference import ClipScorer, ModelRef

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    configs = ModalityConfigs.preset("cpu-smoke")
    work = tempfile.mkdtemp(prefix="emotiw-bench-score-")
    corpus = f"{work}/clips"
    print(f"writing {args.n} sample clips and a random-init-heads model to {work} ...")
    write_sample_corpus(corpus, args.n, args.seed)
    package = random_package(f"{work}/model", configs)
    objects = list_video_objects(corpus)

    # each stage alone, in this process (one core each, as one actor gets)
    torch.set_num_threads(1)
    extractor = ClipFeatureExtractor(configs)
    start = time.perf_counter()
    rows = []
    for o in objects:
        row = extractor(o.uri, video_id(o.uri), read_bytes(o.uri), None, "bench")
        rows.append({**row, "etag": o.etag, "size_bytes": o.size})  # the listing's columns
    t_cpu = (time.perf_counter() - start) / len(objects)
    table = rows_to_table(rows)
    scorer = ClipScorer(package, ModelRef(str(package), "bench", None), device="cpu")
    scorer(table.slice(0, args.batch), "warm-up")
    start = time.perf_counter()
    for i in range(0, table.num_rows, args.batch):
        scorer(table.slice(i, args.batch), "bench")
    t_model = (time.perf_counter() - start) / table.num_rows
    cores = os.cpu_count() or 1
    print(
        f"in isolation (1 thread): CPU stage (read+decode+extract) {t_cpu * 1000:.0f} ms/clip, "
        f"model stage (heads+fusion, batch {args.batch}) {t_model * 1000:.0f} ms/clip; "
        f"{cores} cores"
    )
    torch.set_num_threads(cores)

    ensure_ray()
    results: dict[str, float] = {}
    small = objects[: max(2, len(objects) // 4)]
    for actors in args.actors:
        timings = {}
        for label, subset in (("small", small), ("all", objects)):
            manifest = f"{work}/manifest-{label}.txt"
            with open(manifest, "w") as f:
                f.write("\n".join(o.uri for o in subset))
            out = f"{work}/scores-{actors}-{label}"
            cfg = ScoreConfig(
                manifest=manifest, output=out, model=str(package), extract_actors=actors,
                model_batch_size=args.batch,
            )  # fmt: skip
            with ActorMemory() as memory:
                start = time.perf_counter()
                summary = run_score(cfg)
                timings[label] = time.perf_counter() - start
            assert summary.scored == len(subset), summary
            shutil.rmtree(out, ignore_errors=True)
        # one model actor; `actors` CPU actors; all share `cores` cores
        bound = min(actors / t_cpu, 1 / t_model, cores / (t_cpu + t_model))
        overall = len(objects) / timings["all"]
        marginal = (len(objects) - len(small)) / max(timings["all"] - timings["small"], 1e-9)
        fixed = timings["small"] - len(small) / marginal
        results[f"efficiency_{actors}"] = marginal / bound
        peaks = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(memory.peak.items()))
        print(
            f"{actors} CPU actor(s) + 1 model actor: {len(objects)} clips in "
            f"{timings['all']:.1f} s = {overall:.2f} clips/s overall; steady state "
            f"{marginal:.2f} clips/s (from {len(small)} vs {len(objects)} clips; fixed start-up "
            f"~{fixed:.0f} s); bound {bound:.2f} clips/s -> pipeline efficiency "
            f"{marginal / bound:.2f}; peak RSS per actor: {peaks}",
            flush=True,
        )
        results[f"clips_per_s_{actors}"] = marginal
    if len(args.actors) > 1:
        a, b = args.actors[0], args.actors[-1]
        ratio = results[f"clips_per_s_{b}"] / results[f"clips_per_s_{a}"]
        print(f"{b} CPU actors = {ratio:.2f}x {a} (steady state)")
    shutil.rmtree(work, ignore_errors=True)
    return results
