import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
# the harness (benchmarks/) is not installed: APPEND the repo root, so that an installed
# nnunet_mosmos/pretrain (CI's non-editable install) still wins over the checkout's copies
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
from tiny_text_encoder import make_tiny_text_encoder  # noqa: E402


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory):
    """Folder of a tiny random BERT; also exported as MOSMOS_TEXT_ENCODER for the whole session."""
    folder = make_tiny_text_encoder(tmp_path_factory.mktemp("tiny_bert"))
    before = os.environ.get("MOSMOS_TEXT_ENCODER")
    os.environ["MOSMOS_TEXT_ENCODER"] = str(folder)
    yield folder
    if before is None:  # leave the environment as the session found it
        os.environ.pop("MOSMOS_TEXT_ENCODER", None)
    else:
        os.environ["MOSMOS_TEXT_ENCODER"] = before


@pytest.fixture
def one_thread():
    """One intra-op thread (use with ``pytest.mark.usefixtures("one_thread")``): on a shared 2-core CI
    box, OpenMP spin-waiting under contention made the same 60 steps take 7 s or 180 s; with one
    thread the time stays predictable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
