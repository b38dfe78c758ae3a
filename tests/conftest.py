"""Tests run single-threaded: small tensors gain nothing from threads, and on a shared 2-core
machine torch's thread pool makes them much slower."""
import torch

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Work directory of a 16x16 score model trained for one step (deterministic weights)."""
    from tinymodel import train_tiny
    return train_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session", autouse=True)
def private_data_cache(tmp_path_factory):
    """Every test's scoreinv cache ($SCOREINV_DATA: fetched scans, out-of-distribution references
    computed for models without one) is a fresh folder, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCOREINV_DATA", str(tmp_path_factory.mktemp("scoreinv-data")))
        yield
