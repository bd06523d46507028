"""The fast subset of the outside-in campaign (tests/reliability/cli_cases.py): `main.py` run as
a user runs it, a subprocess with its real exit code and output, each case asserting its
expected outcome: a bad config value, workdir or json is one line with exit 2 that names the
key, path or line, before any work. The whole campaign (`python -m bench.faults --cli-only`)
adds the cases that train, evaluate and predict."""

from __future__ import annotations

import pytest

from tests.reliability import cli_cases

FAST = [c for c in cli_cases.cases() if c.fast]
# Cases that fail on main today, with what is seen (issue 12); a fix makes them XPASS: then
# delete the entry so the case holds from there on.
KNOWN_FAILING: dict[str, str] = {}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return cli_cases.Ctx(str(tmp_path_factory.mktemp("cli")))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """All of the fast cases, two at a time (each is a main.py start-up: ~5-10 s)."""
    got = cli_cases.run_cases(str(tmp_path_factory.mktemp("fast")), FAST, jobs=2)
    return {o.case.name: o for o in got}


def test_the_fast_subset_is_small_and_covers_configs_workdirs_and_json():
    groups = {c.group for c in FAST}
    assert {"config", "workdir", "exporters"} <= groups
    assert 8 <= len(FAST) <= 14
    assert all(not c.needs_model for c in FAST)  # nothing here trains


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(reason=KNOWN_FAILING[c.name], strict=False))
        if c.name in KNOWN_FAILING else c
        for c in FAST
    ],
    ids=[cli_cases._slug(c.name) for c in FAST],
)
def test_main_py_case(case, outcomes):
    o = outcomes[case.name]
    if o.cls == "skipped":
        pytest.skip(o.detail)
    assert o.cls == "handled", f"{case.expected}; got {o.cls}: {o.detail}\n{o.command}"


def test_classification_of_outcomes(ctx, tmp_path):
    """The classes the campaign reports, on made-up results."""
    err = cli_cases.CliCase("e", "config", "error", run=None, needles=("solver.base_lr",))
    runs = cli_cases.CliCase("r", "config", "runs", run=None, needles=("warmup_iters",))
    R = cli_cases.Result
    one_line = "12:00:00 ERROR mrcnn: UserError: config.solver.base_lr=-1: must be > 0"
    tb = "Traceback (most recent call last):\n  File x\nKeyError: 'momentum'"
    cases = [
        (err, R(2, one_line, 1.0), "handled"),
        (err, R(2, "12:00:00 ERROR mrcnn: UserError: bad value", 1.0), "wrong-error"),
        (err, R(1, tb, 1.0), "wrong-error"),
        (err, R(0, "", 1.0), "silently-wrong"),
        (err, R(None, "", 60.0, timed_out=True), "hang"),
        (runs, R(0, "WARNING solver.warmup_iters=100 exceeds max_iter=40", 1.0), "handled"),
        (runs, R(0, "done", 1.0), "silently-wrong"),
        (runs, R(2, "ERROR mrcnn: UserError: warmup_iters=100 exceeds max_iter", 1.0),
         "wrong-error"),
        (runs, R(0, "warmup_iters", 1.0, problems=[("lost", "model_0000001.pth is gone")]),
         "lost"),
    ]
    for case, res, want in cases:
        got, detail = cli_cases.classify(case, ctx, str(tmp_path), res)
        assert got == want, (case.name, res, detail)
