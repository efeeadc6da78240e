import math
import zlib

import numpy as np
import pytest
import torch

from formers.text.corpus import load_corpus, stdlib_root
from formers.text.task import LMTask
from formers.text.tokenizer import ByteTokenizer


def test_byte_tokenizer_round_trip_and_specials():
    tok = ByteTokenizer()
    text = "déf f(x): return 'π' ✓"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos, *ids, tok.eos, tok.pad]) == text
    assert tok.decode([0xFF]) == "\ufffd"  # invalid UTF-8 never raises
    with pytest.raises(ValueError, match="259"):
        tok.decode([300])


def test_stdlib_corpus_split_rule_and_record():
    c = load_corpus()
    files = sorted(stdlib_root().glob("*.py"))
    val_files = [f for f in files if zlib.crc32(f.name.encode()) % 10 == 0]
    train_files = [f for f in files if f not in val_files]
    assert c.info["files"] == len(files)
    assert c.info["bytes"] == sum(f.stat().st_size for f in files)
    # the streams are the files joined by one newline each
    assert c.val.size == sum(f.stat().st_size for f in val_files) + len(val_files) - 1
    assert c.train.size == sum(f.stat().st_size for f in train_files) + len(train_files) - 1
    assert len(c.info["sha256"]) == 64
    assert 3.0 < c.unigram_entropy() < 8.0


def test_user_files_and_single_file_fallback(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n" * 50)
    c = load_corpus([tmp_path / "a.txt"])
    n = len("hello world\n" * 50)
    assert c.train.size == math.floor(0.9 * n) and c.val.size == n - math.floor(0.9 * n)
    assert bytes(c.train[:5]) == b"hello"


def test_unigram_entropy_hand_case(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"ab" * 100)
    c = load_corpus([tmp_path / "x.txt"])
    assert c.unigram_entropy() == pytest.approx(1.0, abs=1e-2)


def test_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no text files"):
        load_corpus([tmp_path / "empty"])
    (tmp_path / "z.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="no bytes"):
        load_corpus([tmp_path / "z.txt"])


def test_lm_task_batches_are_deterministic_windows(tmp_path):
    (tmp_path / "t.txt").write_bytes(bytes(range(256)) * 40)
    task = LMTask(seed=3, data=[str(tmp_path / "t.txt")], seq_len=16, d_model=16, n_layers=1, n_heads=2)
    b1, b2 = task.train_batch(5, 0, 4), task.train_batch(5, 0, 4)
    assert torch.equal(b1["ids"], b2["ids"]) and b1["ids"].shape == (4, 17)
    assert not torch.equal(b1["ids"], task.train_batch(5, 1, 4)["ids"])
    # each window is a contiguous slice of the training stream (consecutive bytes mod 256 here)
    d = (b1["ids"][:, 1:] - b1["ids"][:, :-1]) % 256
    assert torch.all((d == 1) | (b1["ids"][:, 1:] == ord("\n")) | (b1["ids"][:, :-1] == ord("\n")))
    other = LMTask(seed=4, data=[str(tmp_path / "t.txt")], seq_len=16)
    assert not torch.equal(b1["ids"], other.train_batch(5, 0, 4)["ids"])


def test_lm_eval_bpb_is_loss_over_ln2_and_uniform_model_scores_log2_vocab(tmp_path):
    (tmp_path / "t.txt").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    task = LMTask(data=[str(tmp_path / "t.txt")], seq_len=8, d_model=16, n_layers=1, n_heads=2)

    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 259)

    m = task.evaluate(Uniform(), 2, 4, torch.device("cpu"))
    assert m["val_loss"] == pytest.approx(math.log(259), rel=1e-6)
    assert m["val_bpb"] == pytest.approx(math.log2(259), rel=1e-6)


def test_lm_task_bad_input(tmp_path):
    (tmp_path / "s.txt").write_text("short " * 10)
    with pytest.raises(ValueError, match="seq_len"):
        LMTask(data=[str(tmp_path / "s.txt")], seq_len=64)
    with pytest.raises(ValueError, match="seq_len must be > 0"):
        LMTask(seq_len=0)
    with pytest.raises(ValueError, match="unknown model"):
        LMTask(data=[str(tmp_path / "s.txt")], seq_len=2, n_heads=2).model_config("nope")
