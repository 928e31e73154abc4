from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))


def drive_arrays(model, q_scale: float = 6.0, kv_scale: float = 3.0):
    """Scale a converted model's per-head maps so a random tiny model really drives the arrays.

    With random weights q, k, v sit near 0 and 0.45 V, every score rounds to zero and the attention output reads out
    as exactly 0; tests of the analog path must not pass on such a model.
    """
    from gaincell.model import head_maps

    with torch.no_grad():
        for m in head_maps(model):
            m.q_scale.fill_(q_scale)
            m.k_scale.fill_(kv_scale)
            m.v_scale.fill_(kv_scale)
    return model
