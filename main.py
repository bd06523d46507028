"""The one entry point: train, eval, predict, bench, export, browse or analyze a config.

    python main.py --config=configs/r50_fpn_1x.py --mode=train --workdir=runs/x \
        --config.solver.base_lr=0.02

Any `--config.a.b=value` overrides a key; a key that does not exist is an error naming it.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

MODES = ["train", "eval", "predict", "bench", "export", "browse", "analyze"]
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an argument: configs/x.py:runlocal", lock_config=True
)
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to run.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (default runs/<config name>); see WORKSPACE.md."
)
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imported here so that `--help` and flag errors answer before torch loads.
    from mrcnn.engine import runner

    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("runs", config.name)
    try:
        runner.run(_MODE.value, config, workdir)
    except runner.UserError as e:
        # Bad input (config value, dataset, weights file): one clear line, no traceback.
        logging.getLogger("mrcnn").error("%s: %s", type(e).__name__, e)
        sys.exit(2)
    except KeyboardInterrupt:
        # Ctrl-C outside training (which saves and exits 0): what was written is complete
        # (every file is written atomically); say so in one line, with the shell's code.
        logging.getLogger("mrcnn").error("interrupted (--mode=%s); files already written in %s "
                                         "are complete", _MODE.value, workdir)
        sys.exit(130)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, plus one-line errors where absl would print a traceback:
    - an override of a config key that does not exist (ml_collections raises AttributeError /
      KeyError, which absl does not catch): exit 1, as absl's own flag errors;
    - a config file that raises while building its config (e.g. `configs/shapes.py:tinyy`, an
      unknown config argument): its last line, naming the --config value, exit 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = str(e)
        if "Error whilst parsing config file" in text:
            last = [ln.strip() for ln in text.splitlines() if ln.strip()][-1]
            value = next((a for a in argv if a.startswith("--config=")), "--config")
            sys.stderr.write(f"FATAL {value}: {last}\n")
            sys.exit(2)
        sys.stderr.write(f"FATAL Flags parsing error: {text}\nPass --helpshort or --helpfull to "
                         "see help on flags.\n")
        sys.exit(1)
    except (AttributeError, KeyError) as e:
        while isinstance(e, (AttributeError, KeyError)) and e.args and isinstance(
                e.args[0], BaseException):
            e = e.args[0]
        why = e.args[0] if e.args else e
        sys.stderr.write(f"FATAL Flags parsing error: no such config key {why}\n")
        sys.exit(1)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        app.run(main, flags_parser=_parse_flags)
    except SystemExit as e:
        # absl exits 1 after printing --help; asking for help is not an error.
        if e.code == 1 and {"-h", "--help", "--helpshort", "--helpfull"} & set(sys.argv[1:]):
            sys.exit(0)
        raise
