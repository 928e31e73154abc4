"""Session settings for every test: no network, at most two CPU threads, and ``tests/`` on ``sys.path`` so tests can
``from helpers import ...``.  Helper functions live in ``helpers.py``, not here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))
