"""Does a request draw the same tokens alone and inside a batch? ``python tools/batch_invariance.py``.

A server batches unrelated requests and promises each the image it gets alone: every request
draws from its own generator (runtime/sampling.py), so what is left to differ is the engine's
float rounding, which may depend on a row's position and on the batch size (ONNX Runtime's CPU
kernels do: a row's logits move by ~1e-5). A token then differs only where a draw sits on a knife
edge: a top-p cut whose cumulative mass lies within that rounding of ``1 - top_p`` keeps a token
in one run and drops it in the other. After one different token the rest of the image differs.

This measures it on the trained demo model: batches of requests (labels and seeds drawn at
random, plus the known knife-edge request class 16 / seed 102000 at an odd position), each
request then alone; per request whether its tokens are the same, the largest logit difference
(its rows in the batch vs alone, up to the first different token), and for a request whose tokens
differ, the gap of that token's cut alone (runtime/knife_edge.py). A gap far above the logit
difference would mean the rows mix (a bug); a gap below it is the knife edge. JSON + markdown go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from varrt.runtime.bench import provenance, provenance_lines, write_results
from varrt.runtime.knife_edge import ROW_ROUNDING, LogitRecorder, cut_gaps
from varrt.runtime.pipeline import Pipeline
from varrt.runtime.weights import Weights

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
#: a request whose draw at scale 3 sits on the top-p edge (found by tools/serve_load.py)
KNIFE_EDGE = (16, 102000)


def rows_of(logits: torch.Tensor, row: int, batch: int) -> torch.Tensor:
    """A sample's rows of a full-plan call: its conditional and unconditional rows (CFG on)."""
    return logits[[row, batch + row]] if logits.shape[0] == 2 * batch else logits[[row]]


def measure(backend: str, batch: int, batches: int, seed: int) -> dict:
    pipe = Pipeline.from_weights(Weights.demo_model(), backend, batch=batch, buckets=True)
    recorder = pipe.engine = LogitRecorder(pipe.engine)
    sampling, progress = pipe.sampling(None), pipe.engine.var_config.schedule.progress
    rng = random.Random(seed)
    rows = []
    for n in range(batches):
        requests = [(rng.randrange(len(pipe.classes)), rng.randrange(10**6)) for _ in range(batch)]
        if n == 0 and batch > 1:
            requests[1] = KNIFE_EDGE
        together = pipe.generate([c for c, _ in requests], seed=[s for _, s in requests])
        batch_logits = recorder.take()
        for row, (label, s) in enumerate(requests):
            alone = pipe.generate([label], seed=[s])
            alone_logits = recorder.take()
            differs = [
                si
                for si, (a, b) in enumerate(zip(together.indices, alone.indices))
                if a is not None and not torch.equal(a[row], b[0])
            ]
            first = differs[0] if differs else None
            upto = len(alone_logits) if first is None else first + 1
            deviation = max(
                float((rows_of(x, row, batch) - y).abs().max()) for x, y in zip(batch_logits[:upto], alone_logits)
            )
            entry = {"class": label, "seed": s, "batch": n, "row": row, "same_tokens": first is None}
            entry["max_logit_diff"] = deviation
            if first is not None:
                position = int((together.indices[first][row] != alone.indices[first][0]).nonzero()[0])
                entry.update(first_scale=first, position=position)
                gaps = cut_gaps(alone_logits[first], sampling, sampling.guidance(progress(first)))
                entry["cut_gap"] = float(gaps[position])
            rows.append(entry)
        print(f"{backend}: batch {n + 1}/{batches}: {sum(not r['same_tokens'] for r in rows)} differ", file=sys.stderr)
    return {"backend": backend, "label": pipe.label, "sampling": vars(pipe.sampling(None)), "requests": rows}


def markdown(report: dict) -> str:
    lines = [
        "# A request alone vs inside a batch (demo model, trained weights)",
        "",
        *provenance_lines(report),
        f"- batches of {report['batch']} random requests (labels, seeds), each request then alone (batch 1); "
        f"the first batch holds class {KNIFE_EDGE[0]} / seed {KNIFE_EDGE[1]} at row 1",
        "",
        "| backend | requests | same tokens | max logit diff (batch vs alone) "
        "| differing: first scale, cut gap of the differing token alone |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        reqs = r["requests"]
        differing = [x for x in reqs if not x["same_tokens"]]
        detail = "; ".join(
            f"class {x['class']} seed {x['seed']} row {x['row']}: scale {x['first_scale']}, gap {x['cut_gap']:.2g}"
            for x in differing
        )
        worst = max(x["max_logit_diff"] for x in reqs)
        same = len(reqs) - len(differing)
        lines.append(f"| {r['backend']} | {len(reqs)} | {same} | {worst:.2g} | {detail or '-'} |")
    lines += [
        "",
        "A differing request drew on a knife edge if the gap of its first differing token's cut (top-k / "
        "top-p, in raw-logit units: runtime/knife_edge.py `cut_gaps`) is below the logit difference: the "
        "engine's float rounding at another batch position tipped the cut, so a token was kept in one run "
        f"and not in the other (`ROW_ROUNDING` = {ROW_ROUNDING:g} is what tools/serve_load.py accepts as "
        "rounding). Rows that mixed would show logit differences of order 1.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", action="append", choices=("ort", "torch"), help="default: ort and torch")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="batch-invariance-demo")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.batch < 2 or args.batches < 1:
        print("--batch must be >= 2 and --batches >= 1", file=sys.stderr)
        return 2
    backends = args.backend or ["ort", "torch"]
    results = [measure(b, args.batch, args.batches, args.seed) for b in backends]
    report = {**provenance(0, 1), "batch": args.batch, "batches": args.batches, "results": results}
    text = markdown(report)
    out = write_results(args.out_dir / args.name, {".json": json.dumps(report, indent=1), ".md": text})
    print(text)
    print("wrote " + ", ".join(str(x) for x in out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
