"""Test set-up shared by the whole suite: import from the repository root (and shared test helpers
such as `eval_fixtures` from this folder), two CPU threads.

Test folders mirror the source tree and have no __init__.py, so every test file's name must be
unique across the suite."""

import os
import sys

import torch

_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_TESTS))
sys.path.insert(1, _TESTS)
torch.set_num_threads(2)
