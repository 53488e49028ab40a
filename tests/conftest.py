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

# README runs the suite in two pytest-xdist workers on two cores, so two nnU-Net subprocesses often
# share the cores. OpenMP threads that spin while they wait for work then burn the other worker's
# time (the one_thread fixture below measured 7 s against 180 s for the same steps); passive waiting
# gives the core back. Only the tests' processes see it (children inherit it); the package does not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# nnU-Net's helper pools (fingerprint, validation export, prediction) spawn fresh interpreters that
# import torch and nnU-Net (~4-8 s of CPU each) to work on cases that take milliseconds here: one
# worker per pool for every test and the commands it runs (they inherit it), unless the caller's
# environment sets another value.
os.environ.setdefault("nnUNet_def_n_proc", "1")


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


#: test files in decreasing measured time (`--durations`, 2026-12-03). With `-n 2 --dist loadfile`
#: xdist hands out whole files in collection order, so the longest ones start first and the many short
#: files fill the gaps at the end (longest-first scheduling). Not shown to be faster: the one clean run
#: with it took 27 min 17 s of pytest against 25 min 39 s in collection order (README).
LONGEST_FIRST = ["test_nnunet_e2e.py", "test_gpu_kit.py", "test_bench_benefit.py", "test_chaos_study.py",
                 "test_pretrain_bad_input.py", "test_demo.py", "test_bench_overhead.py", "test_pretrain_3d.py",
                 "test_pretrain_export.py", "test_nnunet_bad_input.py", "test_compare_objectives.py",
                 "test_pretrain_train.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
