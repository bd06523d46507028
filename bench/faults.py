"""Fault campaign: outside-in runs of main.py, a catalogue of bad inputs, corrupt checkpoints and
kill -9 during training.

    .venv/bin/python -m bench.faults [--rounds 10] [--seed 0] [--workdir DIR] [--skip-kills]
        [--skip-cli] [--cli-only] [--cases REGEX] [--jobs 2]

The cases and the datasets they write live in tests/reliability/ (`catalogue.py`: the tiny
config, the bad-input and checkpoint cases; `cli_cases.py`: the outside-in cases), so the tests
use them without importing bench/. This file only runs them and prints the tables:

1. Outside-in: `main.py` as a subprocess (real exit code, real output, every run bounded by a
   timeout that counts as a hang) on datasets written as labelme2coco, CVAT, Roboflow and hand
   edits write them, val sets that disagree with the training json, predict folders with odd
   files, signals to the process group, two trainings on one workdir, a full disk, resume after
   a config change, bad config values. Each outcome is handled / wrong-error / hang /
   silently-wrong / lost / skipped (see tests/reliability/cli_cases.py).
2. Bad inputs: each catalogue case damages a small COCO dataset and loads it through the real
   train loader with `data.on_bad_*` = fail and = skip.
3. Checkpoint corruption: each must resume from the newest good checkpoint or stop with a clear
   error, never run code or lose a checkpoint.
4. kill -9: an uninterrupted reference run of the tiny deterministic config, then the same run
   killed with SIGKILL at random moments `--rounds` times (the first kill lands in the middle of
   a checkpoint write) and restarted after each kill; the newest complete checkpoint must load
   after every kill and the finished run must end bitwise equal to the reference.

Prints one table per part and a summary; exits 1 when something was not handled.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python -m bench.faults` from elsewhere, or `python bench/faults.py`
    sys.path.insert(0, REPO)

from tests.reliability import cli_cases  # noqa: E402
from tests.reliability.catalogue import (  # noqa: E402
    _quiet,
    _table,
    bad_input_catalogue,
    checkpoint_cases,
    child_env,
    die_in_save_argv,
    inspect_workdir,
    main_argv,
    resumed_at,
    spawn,
    states_equal,
    tiny_config,
    tmp_leftovers,
    wait_for_line,
    wait_for_write,
)

# --------------------------------------------------------------------------- 1. kill -9
@dataclasses.dataclass
class KillRound:
    n: int
    how: str  # "in-save": inside torch.save; random: startup, 1st step, in write, training
    delay_s: float
    killed: bool  # False: the run ended (finished or crashed) before the kill
    returncode: int | None = None
    resumable_from: int = -1  # newest complete checkpoint after the kill (-1: none)
    during_save: bool = False  # a temporary checkpoint file was left behind
    resumed_at: int | None = None  # where the next run says it resumed
    lost: bool = False  # a complete checkpoint was gone or unreadable after the kill

    @property
    def survived(self) -> bool:
        want = None if self.resumable_from < 0 else self.resumable_from
        return self.killed and not self.lost and self.resumed_at == want


def run_reference(root: str, workdir: str, max_iter: int, env: dict[str, str]) -> dict[str, float]:
    """Runs the tiny config uninterrupted; returns its timings: startup_s (start to the training
    loop), first_step_s (the first step, with its one-time warm-up) and step_s (the median of
    the others, each with its checkpoint write), seen by polling the log."""
    log_path = os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".out")
    t0 = time.monotonic()
    proc = spawn(main_argv(root, workdir, max_iter), log_path, env)
    wait_for_line(proc, log_path, r"training from iteration", 600)
    seen = [time.monotonic()]
    for it in range(1, max_iter + 1):
        wait_for_line(proc, log_path, rf"iter: {it} ", 600)
        seen.append(time.monotonic())
    if proc.wait(600) != 0:
        raise RuntimeError(f"the reference run failed, see {log_path}")
    steps = sorted(b - a for a, b in zip(seen[1:-1], seen[2:]))
    return {
        "startup_s": seen[0] - t0,
        "first_step_s": seen[1] - seen[0],
        "step_s": steps[len(steps) // 2],
    }


def kill_campaign(
    work: str, rounds: int, seed: int = 0, threads: int = 2, report: Callable = print
) -> dict[str, Any]:
    """Reference run, then `rounds` SIGKILLs with restarts, then the run to the end.

    Returns rounds (KillRound list), identical (bool), lost (int), leftover_tmp (files left
    after the final run), bad_jsonl (unparsable metrics.jsonl lines), max_iter.
    """
    from mrcnn.engine import checkpoint
    from mrcnn.data import ensure_shapes_dataset

    rng = random.Random(seed)
    env = child_env(threads)
    root = os.path.join(work, "data")
    max_iter = 3 * rounds + 3  # a run lives ~2 steps before its kill: room for every round
    with _quiet():
        ensure_shapes_dataset(tiny_config(root))  # generated once, outside the timed runs
    ref = os.path.join(work, "reference")
    timing = run_reference(root, ref, max_iter, env)
    report(
        f"reference run: start-up {timing['startup_s']:.1f} s, first step "
        f"{timing['first_step_s']:.1f} s, then {timing['step_s']:.2f} s/step"
    )
    ref_state = checkpoint.load(os.path.join(ref, checkpoint.checkpoint_name(max_iter)))

    w = os.path.join(work, "killed")
    os.makedirs(w, exist_ok=True)
    argv = main_argv(root, w, max_iter)
    out: list[KillRound] = []
    pending: list[KillRound] = []  # kills whose restart has not yet reached training
    best = -1

    def confirm(text: str) -> None:
        # A run that reached the training loop says where it resumed; a run killed during
        # start-up says nothing, so the kills before it wait for the next run.
        if re.search(r"training from iteration", text):
            for r in pending:
                r.resumed_at = resumed_at(text)
            pending.clear()

    for n in range(rounds):
        log_path = os.path.join(work, f"killed.round{n}.out")
        tmp_before = set(tmp_leftovers(w))
        if n == 0:
            # Dies half-way through its second checkpoint file: model_0000001 is complete.
            how, delay = "in-save", 0.0
            proc = spawn(die_in_save_argv(2, argv), log_path, env)
            proc.wait(600)
            killed = proc.returncode == -signal.SIGKILL
        else:
            proc = spawn(argv, log_path, env)
            # Kills land in start-up, in the first step (warm-up, resume), in the steady steps,
            # or right after a checkpoint write has begun (it takes a few milliseconds).
            u = rng.random()
            if u < 0.15:
                how, delay = "startup", rng.uniform(0, timing["startup_s"])
                time.sleep(delay)
            elif u < 0.35:
                how, delay = "1st step", rng.uniform(0, timing["first_step_s"])
                if wait_for_line(proc, log_path, r"training from iteration", 600):
                    time.sleep(delay)
            elif u < 0.65:
                how, delay = "in write", rng.uniform(0, 0.005)
                if wait_for_write(proc, w, 600):
                    time.sleep(delay)
            else:
                how, delay = "training", rng.uniform(0, 2.5 * timing["step_s"])
                if wait_for_line(proc, log_path, r"iter: \d+ ", 600):
                    time.sleep(delay)
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
            proc.wait(600)
        confirm(open(log_path, errors="replace").read())
        state = inspect_workdir(w)
        # A temporary file that was not there before this run: the kill cut a write.
        cut = bool(set(state["tmp"]) - tmp_before)
        r = KillRound(n, how, delay, killed, proc.returncode, state["iteration"], cut)
        r.lost = state["iteration"] < best or not state["pointer_ok"]
        best = max(best, state["iteration"])
        out.append(r)
        report(
            f"  round {n}: {how:8s} kill after {delay:4.2f} s -> resumable from iteration "
            f"{r.resumable_from}{' (a checkpoint write was cut)' if r.during_save else ''}"
            + ("" if killed else f" (the run ended first, exit code {proc.returncode})")
        )
        if not killed:
            break
        pending.append(r)
    log_path = os.path.join(work, "killed.final.out")
    proc = spawn(argv, log_path, env)
    rc = proc.wait(600)
    confirm(open(log_path, errors="replace").read())
    final = os.path.join(w, checkpoint.checkpoint_name(max_iter))
    identical = (
        rc == 0 and os.path.isfile(final) and states_equal(ref_state, checkpoint.load(final))
    )
    bad_jsonl = 0
    for line in open(os.path.join(w, "metrics.jsonl")):
        try:
            json.loads(line)
        except ValueError:
            bad_jsonl += 1
    return {
        "rounds": out,
        "identical": identical,
        "lost": sum(r.lost for r in out),
        "leftover_tmp": tmp_leftovers(w),
        "bad_jsonl": bad_jsonl,
        "max_iter": max_iter,
    }



def cli_table(outcomes: list) -> str:
    """The outside-in cases as a markdown table: case, expected, observed class, what was seen."""
    return _table(
        ["#", "case", "expected", "outcome", "seen", "s"],
        [
            [i + 1, o.case.name, o.case.expected, o.cls, cli_cases._short(o.detail, 120),
             f"{o.wall_s:.0f}"]
            for i, o in enumerate(outcomes)
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10, help="kill -9 rounds")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    p.add_argument("--workdir", default="", help="where runs go (default: a temporary folder)")
    p.add_argument("--skip-kills", action="store_true", help="no kill -9 rounds")
    p.add_argument("--skip-cli", action="store_true", help="no outside-in main.py cases")
    p.add_argument("--cli-only", action="store_true", help="only the outside-in main.py cases")
    p.add_argument("--cases", default="", help="regex: only the outside-in cases it matches")
    p.add_argument("--jobs", type=int, default=3, help="outside-in cases run at a time")
    p.add_argument("--json", default="", help="also write the outside-in outcomes here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = args.workdir or tempfile.mkdtemp(prefix="faults-")
    os.makedirs(work, exist_ok=True)
    t0 = time.monotonic()
    summary: list[list[str]] = []
    failed = False

    if not args.skip_cli:
        print("## Outside-in: main.py as a subprocess (every run bounded; a timeout is a hang)\n",
              flush=True)
        chosen = [c for c in cli_cases.cases() if re.search(args.cases, c.name)]
        outcomes = cli_cases.run_cases(os.path.join(work, "cli"), chosen, args.jobs,
                                       report=lambda s: print(s, flush=True))
        print()
        print(cli_table(outcomes))
        counts = cli_cases.by_class(outcomes)
        print("\nfailing commands (run from the repository root):")
        for o in outcomes:
            if o.cls not in ("handled", "skipped"):
                print(f"- {o.case.name} [{o.cls}]: {o.command}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump([{"case": o.case.name, "expected": o.case.expected, "class": o.cls,
                            "seen": o.detail, "wall_s": round(o.wall_s, 1),
                            "command": o.command} for o in outcomes], f, indent=1,
                          ensure_ascii=False)
        tried = len(outcomes) - counts["skipped"]
        summary.append(["outside-in main.py cases tried / handled",
                        f"{tried} / {counts['handled']}"])
        summary.append(["  by class", ", ".join(f"{k} {v}" for k, v in counts.items() if v)])
        failed |= counts["handled"] < tried
        print(f"\n({time.monotonic() - t0:.0f} s so far)\n", flush=True)
    if args.cli_only:
        print(_table(["figure", "value"], summary))
        return 1 if failed else 0

    print("## Bad inputs (loaded through the train loader; data.on_bad_* = fail / skip)\n")
    cat = bad_input_catalogue(work)
    rows = []
    for name, r in cat:
        for mode, outcome, ok in r:
            rows.append([name if mode == "fail" else "", mode, outcome, "yes" if ok else "NO"])
    print(_table(["case", "mode", "outcome", "handled"], rows))
    inputs_ok = sum(all(ok for _, _, ok in r) for _, r in cat)

    print("\n## Checkpoint corruption (a workdir holding checkpoints 1 and 2)\n")
    ck = checkpoint_cases(work)
    print(
        _table(
            ["case", "expected", "got", "handled"],
            [[n, e, g, "yes" if ok else "NO"] for n, e, g, ok in ck],
        )
    )
    ck_ok = sum(ok for *_, ok in ck)

    kills = None
    if not args.skip_kills:
        print(f"\n## kill -9 campaign ({args.rounds} rounds, seed {args.seed})\n")
        kills = kill_campaign(work, args.rounds, args.seed, args.threads)
        print()
        print(
            _table(
                [
                    "round",
                    "kill",
                    "after (s)",
                    "resumable from",
                    "cut a write",
                    "resumed at",
                    "survived",
                ],
                [
                    [
                        r.n,
                        r.how if r.killed else f"{r.how} (finished first)",
                        f"{r.delay_s:.3f}",
                        r.resumable_from,
                        "yes" if r.during_save else "",
                        r.resumed_at,
                        "yes" if r.survived else "NO",
                    ]
                    for r in kills["rounds"]
                ],
            )
        )
        print(
            "\n(after: seconds after the start (startup), the training loop's first line (1st "
            "step), a checkpoint write's start (in write) or a step's log line (training))"
        )

    print("\n## Summary\n")
    summary += [
        ["bad inputs tried / handled", f"{len(cat)} / {inputs_ok}"],
        ["checkpoint corruption cases tried / handled", f"{len(ck)} / {ck_ok}"],
    ]
    failed |= inputs_ok < len(cat) or ck_ok < len(ck)
    if kills is not None:
        delivered = [r for r in kills["rounds"] if r.killed]
        survived = sum(r.survived for r in delivered)
        summary += [
            [
                "kills survived",
                f"{survived} / {len(delivered)} "
                f"({sum(r.during_save for r in delivered)} during a checkpoint write)",
            ],
            ["checkpoints lost", str(kills["lost"])],
            [
                "final weights identical to the uninterrupted run",
                "yes" if kills["identical"] else "NO",
            ],
            [
                "temporary files left / unparsable metrics.jsonl lines",
                f"{len(kills['leftover_tmp'])} / {kills['bad_jsonl']}",
            ],
        ]
        failed |= (
            survived < len(delivered)
            or kills["lost"] > 0
            or not kills["identical"]
            or bool(kills["leftover_tmp"])
            or kills["bad_jsonl"] > 0
        )
    print(_table(["figure", "value"], summary))
    print(f"\n{time.monotonic() - t0:.0f} s; runs in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

