"""Data loading, literature splits, scaler and the MSE/MAE protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from formers.timeseries import data as D
from formers.timeseries.protocol import Windows, evaluate_windows, persistence

from .helpers import SHARED, write_csv

needs_etth1 = pytest.mark.skipif(not SHARED.is_file(), reason=f"{SHARED} not present")


def test_ett_hour_borders_are_the_literatures():
    b = D.split_borders(17420, 512, 96, "ett_hour")
    assert b == {"train": (0, 8640), "val": (8640 - 512, 11520), "test": (11520 - 512, 14400)}
    m = D.split_borders(69680, 96, 96, "ett_minute")
    assert m == {"train": (0, 34560), "val": (34560 - 96, 46080), "test": (46080 - 96, 57600)}
    r = D.split_borders(1000, 10, 5, "ratio")
    assert r == {"train": (0, 700), "val": (690, 800), "test": (790, 1000)}
    with pytest.raises(ValueError, match="needs 14400 rows"):
        D.split_borders(10000, 96, 96, "ett_hour")


@needs_etth1
def test_etth1_split_windows_and_train_only_scaler():
    fd = D.prepare(SHARED, look_back=512, horizon=96, target="OT", split="ett_hour")
    assert [fd.train.shape[0], fd.val.shape[0] - 512, fd.test.shape[0] - 512] == [8640, 2880, 2880]
    assert fd.n_windows("test") == 2785 and fd.n_windows("val") == 2785  # 2880 - 96 + 1
    assert fd.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    # the scaler is fitted on training rows: they are standardised, the test rows are not exactly
    assert np.allclose(fd.train.mean(0), 0, atol=1e-5) and np.allclose(fd.train.std(0), 1, atol=1e-5)
    assert not np.allclose(fd.test.mean(0), 0, atol=1e-2)
    assert fd.info["sha256"] == D.DATASETS["ETTh1"].sha256  # read unmodified


def test_any_csv_with_target_and_features(tmp_path):
    p = write_csv(tmp_path / "my.csv", n_rows=300, n_cols=3, names=["a", "OT", "b"])
    fd = D.prepare(p, look_back=24, horizon=6, target="OT", split="ratio")
    assert fd.columns == ["a", "b", "OT"]  # the target moves last (features M)
    s = D.prepare(p, look_back=24, horizon=6, target="a", features="S", split="ratio")
    assert s.columns == ["a"] and s.train.shape == (210, 1)


@pytest.mark.parametrize("case,match", [
    ("missing", "missing value in data row 3, column 'x'"),
    ("text", "column 'x' is not numeric"),
    ("short", "too few rows for look_back \\+ horizon"),
    ("target", "unknown target column 'nope'"),
])
def test_bad_csv_is_refused_before_training(tmp_path, case, match):
    p = tmp_path / "bad.csv"
    rows = ["date,x,OT"] + [f"2020-01-01 {i:02d}:00,{i},{i * 2}" for i in range(100)]
    target = "OT"
    if case == "missing":
        rows[3] = "2020-01-01 02:00,,4"
    elif case == "text":
        rows[5] = "2020-01-01 04:00,high,8"
    elif case == "short":
        rows = rows[:40]
    else:
        target = "nope"
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=match):
        D.prepare(p, look_back=24, horizon=12, target=target, split="ratio")


def test_missing_file_names_the_folders_and_the_address(tmp_path, monkeypatch):
    monkeypatch.setenv("FORMERS_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(D, "repo_shared_data", lambda: None)

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as e:
        D.find_dataset("ETTh1")
    msg = str(e.value)
    assert str(tmp_path) in msg and "ETTh1.csv" in msg and "raw.githubusercontent.com" in msg
    assert "network unreachable" in msg and not (tmp_path / "cache" / "formers" / "data" / "ETTh1.csv").exists()
    with pytest.raises(ValueError, match="unknown dataset"):
        D.find_dataset("nosuch")


def test_download_checks_the_sha256(tmp_path):
    src = write_csv(tmp_path / "src.csv", n_rows=50)
    good = D.DatasetSpec("X", "X.csv", src.as_uri(), D.sha256_file(src), "ratio")
    assert D.download(good, tmp_path / "dl").read_bytes() == src.read_bytes()
    bad = D.DatasetSpec("Y", "Y.csv", src.as_uri(), "0" * 64, "ratio")
    with pytest.raises(ValueError, match="sha256"):
        D.download(bad, tmp_path / "dl")
    assert not (tmp_path / "dl" / "Y.csv").exists() and not list((tmp_path / "dl").glob(".*part*"))


def test_metrics_cover_every_window_and_drop_last_reproduces_pathformer():
    series = torch.randn(2880 + 96, 2)  # a test split of 2880 target rows with L = 96 in front
    w = Windows(series, 96, 96)
    assert len(w) == 2785
    full = evaluate_windows(lambda x: persistence(x, 96), w, 128)
    assert full["windows"] == 2785 and full["look_back"] == 96 and full["horizon"] == 96
    dropped = evaluate_windows(lambda x: persistence(x, 96), w, 128, drop_last=True)
    assert dropped["windows"] == 2688  # Pathformer's loader: 21 full batches of 128
    # all windows, batch-size independent, equal to a direct computation
    x, y = w.batch(torch.arange(len(w)))
    ref = (persistence(x, 96) - y).double()
    assert full["mse"] == pytest.approx(float(ref.pow(2).mean()), rel=1e-9)
    assert full["mae"] == pytest.approx(float(ref.abs().mean()), rel=1e-9)
    assert evaluate_windows(lambda x: persistence(x, 96), w, 7)["mse"] == pytest.approx(full["mse"], rel=1e-12)
