"""The command line: ``python -m benchmarks`` (``--help`` for the flags).

Runs the sections in order, prints each one's table as it finishes, then the
goals block; ``--json PATH`` writes every measurement, raw times included.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from . import cuda, e2e, linear, lora, machine, quantize
from .system import cpu_snapshot, environment, format_others, loadavg, others_cores
from .tables import format_goals, format_section
from .timing import Config, SectionResult


@dataclass
class Section:
    name: str
    help: str
    run: Callable[[Config], SectionResult]


SECTIONS: List[Section] = [
    Section("machine", "the machine's ceilings: int8 peak on every thread, DRAM read and copy "
            "bandwidth, single-core instruction peaks", machine.section_machine),
    Section("per_tensor", "quantize/dequantize/choose_qparams per tensor vs torch and fp32 copy",
            quantize.section_per_tensor),
    Section("per_token", "quantize_per_token vs the same quantizer composed of torch ops",
            quantize.section_per_token),
    Section("isa", "per-tensor and per-token quantize with each supported ISA vs the best",
            quantize.section_isa),
    Section("linear", "QuantLinear (W8A8, packed weights) vs fp32, quantize_dynamic, "
            "torch._int_mm and torchao at LLM shapes", lambda cfg: linear.section_linear(cfg)),
    Section("e2e", "SmolLM2-135M decode and prefill tokens/s: fp32, ours, quantize_dynamic, "
            "torchao (skipped without the model package)", lambda cfg: e2e.section_e2e(cfg)),
    Section("lora", "a LoRA training step (peft) on SmolLM2-135M, int8 base vs fp32 base, and "
            "the perplexity 100 steps reach (skipped without peft or the model)",
            lambda cfg: lora.section_lora(cfg)),
    Section("cuda", "the CUDA kernels vs a device copy and bf16 cuBLAS (skipped without a GPU)",
            cuda.section_cuda),
]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    names = [s.name for s in SECTIONS]
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Speed of torch_quant's ops and models against PyTorch baselines, as "
        "ratios of medians measured in this run (run from the repository root).",
        epilog="sections: " + "; ".join(f"{s.name}: {s.help}" for s in SECTIONS),
    )
    p.add_argument("--only", metavar="SECTION", action="append",
                   help=f"run only these sections ({', '.join(names)}); "
                   "repeat the flag or separate names with commas")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="timed repetitions per candidate (default 21; linear: 11 at M <= 16, "
                   "5 above, fewer for the slow baselines; e2e: 5)")
    p.add_argument("--warmup", type=int, default=3, metavar="N",
                   help="untimed calls per candidate first (default 3)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch.set_num_threads(N) (default: torch's default)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and few repetitions: a smoke test of the code, "
                   "not a measurement")
    p.add_argument("--json", metavar="PATH", help="also write all measurements as JSON")
    args = p.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    selected: List[str] = []
    for item in args.only or []:
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name not in names:
                p.error(f"unknown section {name!r}; choose from {', '.join(names)}")
            if name not in selected:
                selected.append(name)
    args.sections = [s for s in SECTIONS if not selected or s.name in selected]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 21)
    cfg = Config(repeat=repeat, warmup=min(args.warmup, 1) if args.quick else args.warmup,
                 repeat_given=args.repeat is not None or args.quick, quick=args.quick)
    env = environment()

    print("torch_quant benchmarks" + (" (--quick: tiny sizes, not a measurement)"
                                      if args.quick else ""))
    print(f"torch {env['torch']}, torch_quant {env['torch_quant']}, python {env['python']}")
    print(f"cpu: {env['cpu_model']} ({env['cpus_available']} cpus available, "
          f"L3 {env['l3_cache'] or '?'}), threads: {env['threads']}")
    print(f"cpu isa: {env['cpu_isa']} (supported: {', '.join(env['supported_isas'])})")
    print(f"memory: transparent_hugepage {env['transparent_hugepage'] or '?'}, "
          f"THP_MEM_ALLOC_ENABLE={env['THP_MEM_ALLOC_ENABLE'] or 'unset'}")
    if env["loadavg"] is not None:
        # Another busy process makes the multi-threaded ops wait for a core.
        print("load average before the run: "
              + " / ".join(f"{v:.2f}" for v in env["loadavg"]) + " (1 / 5 / 15 min)")
    print(f"timing: median of {cfg.repeat} interleaved repetitions after {cfg.warmup} "
          f"warm-up calls; IQR = q3 - q1"
          + ("" if cfg.repeat_given else
             " (linear: 11 at M <= 16, 5 above, fewer for slow baselines; e2e: 5)"))
    print(flush=True)

    results: List[SectionResult] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for sec in args.sections:
            t0 = time.perf_counter()
            snap0 = cpu_snapshot()
            res = sec.run(cfg)
            res.others = others_cores(snap0, cpu_snapshot())
            results.append(res)
            print(format_section(res))
            print(f"   ({time.perf_counter() - t0:.1f} s{format_others(res.others)})", flush=True)
            print()
    goals = [g for r in results for g in r.goals]
    print(format_goals(goals))
    total = time.perf_counter() - start
    load = loadavg()
    print(f"\ntotal {total:.1f} s"
          + ("" if load is None else f", load average after: {load[0]:.2f} (1 min)"))

    if args.json:
        payload = {
            "environment": env,
            "config": {"repeat": cfg.repeat, "warmup": cfg.warmup, "quick": cfg.quick,
                       "sections": [s.name for s in args.sections], "argv": sys.argv[1:]},
            "sections": [
                {"name": r.name, "title": r.title, "ratio_meaning": r.ratio_meaning,
                 "notes": r.notes, "rows": [row.to_json() for row in r.rows],
                 "goals": [g.to_json() for g in r.goals], "extra": r.extra,
                 "other_processes_cores": None if r.others is None else r.others[0],
                 "steal_cores": None if r.others is None else r.others[1]}
                for r in results
            ],
            "goals": [g.to_json() for g in goals],
            "total_s": total,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {args.json}")
    return 0
