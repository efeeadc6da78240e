import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def shared_data(name: str):
    """Path of a file in ../shared/data (or $FORMERS_DATA); skip with the reason when absent."""
    from pathlib import Path

    roots = [os.environ.get("FORMERS_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for r in roots:
        if r and (Path(r) / name).is_file():
            return Path(r) / name
    pytest.skip(f"{name} not found in $FORMERS_DATA or ../shared/data")
