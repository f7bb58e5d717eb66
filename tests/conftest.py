import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # hydra_plugins is found from the repo root
    sys.path.insert(0, str(ROOT))

# each pytest worker gets its share of the cores, and so do the processes its tests start (sweeps, trials, DDP
# ranks): two workers each running torch on every core spend a quarter of the suite's CPU time waiting on each other
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
