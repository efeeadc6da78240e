"""Symbolic inference and ``formers ode fit``: candidates re-ranked by R² in the data's units, the
exact inverse rescaling end to end, the CLI's files, and clear errors for bad trajectories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from formers.cli import main
from formers.nn.io import save_model
from formers.sciml.ode import expr, metrics, predict, tokens
from formers.sciml.ode import fit as fitmod
from formers.sciml.ode.codec import Rescaling
from formers.sciml.ode.model import ODEFormer, variant_config

LAW = expr.parse("-0.5*x_0")


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """A tiny ODEFormer trained to always answer x_0' = -0.5 x_0 (a few dozen Adam steps)."""
    torch.manual_seed(0)
    m = ODEFormer(variant_config("odeformer-tiny", max_dimension=1, max_output_len=16))
    tgt = torch.tensor([tokens.encode_system(LAW, 1)])
    t = np.linspace(1, 10, 30)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for step in range(60):
        x = np.exp(-0.5 * t)[:, None] * (1 + step % 3)
        pts = torch.from_numpy(tokens.encode_points(t, x, 1))[None]
        loss = torch.nn.functional.cross_entropy(m(pts, tgt[:, :-1])[0], tgt[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path_factory.mktemp("model")
    save_model(m.eval(), folder)
    return m, folder


def test_candidates_reranked_by_r2_in_data_units(monkeypatch):
    t = np.linspace(0, 18, 60)
    x = 2 * np.exp(-0.25 * t)[:, None]  # x' = -0.25 x; after rescaling y' = -0.5 y
    scaled = [expr.parse("-0.1*x_0"), expr.parse("-0.5*x_0"), expr.parse("0.3*x_0")]
    monkeypatch.setattr(predict, "_candidates", lambda model, points, dim, cfg: scaled)

    class Stub(torch.nn.Module):
        cfg = variant_config("odeformer-tiny", max_dimension=1)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    fit = predict.fit_system(Stub(), t, x, predict.DecodeConfig(method="sampling", beam_size=3))
    sc = Rescaling.fit(t, x)
    want = [metrics.r2_zero(x, expr.integrate(sc.unscale_system(s), x[0], t)) for s in scaled]
    assert [r for _, r in fit.candidates] == pytest.approx(want)
    assert fit.r2 == pytest.approx(max(want)) and fit.r2 > 0.999 and max(want) > sorted(want)[-2] + 0.1
    assert np.allclose(expr.evaluate(fit.system, x), -0.25 * x)  # back in the data's units


def test_beam_and_sampling_recover_memorised_law_through_rescaling(memorised):
    model, _ = memorised
    t = np.linspace(0, 18, 40)
    x = 2 * np.exp(-0.25 * t)
    for cfg in (predict.DecodeConfig(method="beam", beam_size=1),
                predict.DecodeConfig(method="sampling", beam_size=4, temperature=0.5)):
        fit = predict.fit_system(model, t, x, cfg)
        assert fit.r2 > 0.999
        assert np.allclose(expr.evaluate(fit.system, x[:, None]), -0.25 * x[:, None], rtol=1e-6)


def test_cli_fit_writes_files(memorised, tmp_path, capsys):
    _, folder = memorised
    t = np.linspace(0, 18, 40)
    csv = tmp_path / "traj.csv"
    csv.write_text("time,population\n" + "".join(f"{a},{b}\n" for a, b in zip(t, 2 * np.exp(-0.25 * t))))
    out = tmp_path / "out"
    assert main(["ode", "fit", str(csv), "--out", str(out), "--model", str(folder), "--beam-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "x_0' =" in printed and "R2" in printed and "population" in printed
    assert "dpopulation/dt = -0.25*population" in printed  # simplified, in the CSV's names
    rec = json.loads((out / "fit.json").read_text())
    assert rec["r2"] > 0.999 and rec["columns"] == ["time", "population"]
    assert rec["readable"] == ["dpopulation/dt = -0.25*population"]
    assert "x_0' =" in (out / "equations.txt").read_text()
    assert (out / "fit.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("rows,match", [
    ("t,x\n0,1\n1,nan\n2,3\n", "line 3, column 2 ('x'): 'nan' is not a finite number"),
    ("t,x\n0,1\n2,2\n1,3\n", "strictly increasing"),
    ("t,x\n0,1\n", "at least 2"),
    ("t,a,b\n0,1,1\n1,2,2\n2,3,3\n", "max_dimension = 1"),
    ("t,x\n0,1\n1,abc\n", "not a number"),
    ("t\n0\n1\n", "state column"),
    ("t,x\n0,1\n1,\n2,3\n", "line 3, column 2 ('x'): the cell is empty"),
    ("t,x\n0,1\n1,1e400\n", "line 3, column 2 ('x'): '1e400' is not a finite number"),
    ("t,x\n0,1\n1,2\n1,3\n", "line 4: time must be strictly increasing; t = 1 follows 1 on line 3"),
    ("t,x\n", "0 point(s)"),
    ("t;x\n0;1\n1;2\n", "separated by semicolons"),
    ("t\tx\n0\t1\n1\t2\n", "separated by tabs"),
    ("\ufefft,x\n0,1\n1,nan\n", "line 3, column 2 ('x')"),  # a byte-order mark is not part of the name
    (b"\xff\xfe\x00t", "is not UTF-8 text"),
])
def test_cli_bad_input_is_a_clear_error_before_work(memorised, tmp_path, capsys, rows, match, monkeypatch):
    _, folder = memorised
    csv = tmp_path / "bad.csv"
    if isinstance(rows, bytes):
        csv.write_bytes(rows)
    else:
        csv.write_text(rows, encoding="utf-8")
    monkeypatch.setattr(predict, "fit_system", lambda *a, **k: pytest.fail("decoding started"))
    assert main(["ode", "fit", str(csv), "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert match in err and str(csv) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_bom_header_reads_as_plain_names(tmp_path):
    csv = tmp_path / "bom.csv"
    csv.write_bytes("\ufefftime,pop\n0,1\n1,2\n".encode("utf-8"))
    t, x, names = fitmod.read_trajectory(csv)
    assert names == ["time", "pop"] and t.tolist() == [0, 1] and x[:, 0].tolist() == [1, 2]
    with pytest.raises(FileNotFoundError, match="is a folder"):
        fitmod.read_trajectory(tmp_path)


def test_more_columns_than_the_run_was_trained_on_is_refused(memorised, tmp_path, capsys, monkeypatch):
    """A laws run (task max_dim 1) keeps a model of max_dimension 2: a 2-D trajectory must not
    reach it (it never saw a 2-D system), whether --model names the run or its ckpt/ folder."""
    import shutil

    import yaml

    _, folder = memorised
    run = tmp_path / "run"
    shutil.copytree(folder, run / "ckpt")
    cfg = json.loads((run / "ckpt" / "config.json").read_text())
    cfg.update(max_dimension=2, vocab_size=tokens.output_vocab_size(2))
    (run / "ckpt" / "config.json").write_text(json.dumps(cfg))
    (run / "config.yaml").write_text(yaml.safe_dump({"task": {"task": "ode", "options": {"max_dim": 1}}}))
    csv = tmp_path / "lv.csv"
    csv.write_text("t,prey,pred\n0,1,1\n1,2,1\n2,3,2\n")
    monkeypatch.setattr(predict, "fit_system", lambda *a, **k: pytest.fail("decoding started"))
    for model in (run, run / "ckpt"):
        assert main(["ode", "fit", str(csv), "--model", str(model), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "2 state columns" in err and "dimension <= 1 (task option max_dim = 1)" in err
        assert not (tmp_path / "o").exists()
    assert fitmod.trained_max_dim_of(run) == 1 and fitmod.trained_max_dim_of(folder) is None


def test_readable_equations_fold_constants_in_column_names():
    N, c = expr.Node, (lambda v: expr.Node("const", value=v))
    x0, x1, t = N("x_0"), N("x_1"), N("t")
    decoded = [N("mul", (c(0.4545), N("mul", (c(0.54), N("mul", (c(2.0), x1)))))),  # as a model emits it
               N("add", (N("mul", (x0, x1)), N("add", (N("mul", (x1, x0)), N("mul", (c(-3.0), t))))))]
    assert expr.to_str(decoded).splitlines()[0] == "x_0' = (0.4545 * (0.54 * (2 * x_1)))"
    got = fitmod.readable_equations(decoded, ["time", "prey", "pred"])
    assert got == ["dprey/dt = 0.4909*pred", "dpred/dt = 2*pred*prey - 3.0*time"]
    assert fitmod.readable_equations(expr.parse("0.123456*x_0"), ["t", "x"]) == ["dx/dt = 0.1235*x"]


def test_readable_equations_never_merge_two_variables_into_one_name():
    lv = expr.parse("0.5*x_0*x_1 | -x_1")
    # a repeated column name (or a state named like the time column) would turn x_0*x_1 into x**2
    assert fitmod.readable_equations(lv, ["t", "x", "x"]) == ["dx_0/dt = 0.5*x_0*x_1", "dx_1/dt = -1.0*x_1"]
    assert fitmod.readable_equations(expr.parse("0.5*t*x_0"), ["t", "t"]) == ["dx_0/dt = 0.5*t*x_0"]
    assert fitmod.readable_equations(lv, ["t", "", "y"])[0] == "dx_0/dt = 0.5*x_0*x_1"
    # names that are not identifiers are bracketed, so "x (m)" does not read as a product
    assert fitmod.readable_equations(lv, ["time (s)", "x (m)", "y"]) == ["d[x (m)]/dt = 0.5*[x (m)]*y",
                                                                        "dy/dt = -1.0*y"]
    assert fitmod.readable_equations(lv, ["t", "x_1", "x_0"]) == ["dx_1/dt = 0.5*x_0*x_1", "dx_0/dt = -1.0*x_0"]


def test_model_of_another_family_or_out_file_is_a_clear_error(memorised, tmp_path, capsys, monkeypatch):
    _, folder = memorised
    csv = tmp_path / "ok.csv"
    csv.write_text("0,1\n1,2\n2,4\n")
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"arch": "decoder", "vocab_size": 259}))
    monkeypatch.setattr(predict, "fit_system", lambda *a, **k: pytest.fail("decoding started"))
    assert main(["ode", "fit", str(csv), "--model", str(lm)]) == 2
    err = capsys.readouterr().err
    assert "is not an ODEFormer model" in err and "'arch': 'decoder'" in err and "vocab_size" not in err
    (tmp_path / "afile").write_text("")
    assert main(["ode", "fit", str(csv), "--model", str(folder), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_missing_model_names_the_training_command(tmp_path, capsys):
    csv = tmp_path / "ok.csv"
    csv.write_text("0,1\n1,2\n2,4\n")
    assert main(["ode", "fit", str(csv), "--model", str(tmp_path / "none")]) == 2
    assert "formers train ode" in capsys.readouterr().err


def test_bfgs_refinement_recovers_an_off_constant():
    t = np.linspace(0, 5, 40)
    x = 1.5 * np.exp(-0.5 * t)[:, None]
    refined = predict.refine_constants(expr.parse("-0.4*x_0"), t, x)
    (c,) = [n.value for n in [refined[0].children[0]] if n.op == "const"]
    assert c == pytest.approx(-0.5, abs=1e-3)
    assert predict.refine_constants(expr.parse("x_0"), t, x) == expr.parse("x_0")  # no constants


def test_no_rescale_flag_reaches_the_decoder(memorised, tmp_path, monkeypatch):
    _, folder = memorised
    csv = tmp_path / "ok.csv"
    csv.write_text("t,x\n0,1\n1,2\n2,4\n")
    seen = []

    def stop(model, t, x, cfg):
        seen.append(cfg.rescale)
        raise ValueError("stop here")

    monkeypatch.setattr(predict, "fit_system", stop)
    for flags, want in (([], True), (["--no-rescale"], False), (["--rescale"], True)):
        assert main(["ode", "fit", str(csv), "--model", str(folder), "--out", str(tmp_path / "o"), *flags]) == 2
        assert seen[-1] is want

