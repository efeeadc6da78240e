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
    ("t,x\n0,1\n1,nan\n2,3\n", "NaN"),
    ("t,x\n0,1\n2,2\n1,3\n", "strictly increasing"),
    ("t,x\n0,1\n", "at least 2"),
    ("t,a,b\n0,1,1\n1,2,2\n2,3,3\n", "max_dimension = 1"),
    ("t,x\n0,1\n1,abc\n", "not a number"),
    ("t\n0\n1\n", "state column"),
])
def test_cli_bad_input_is_a_clear_error_before_work(memorised, tmp_path, capsys, rows, match, monkeypatch):
    _, folder = memorised
    csv = tmp_path / "bad.csv"
    csv.write_text(rows)
    monkeypatch.setattr(predict, "fit_system", lambda *a, **k: pytest.fail("decoding started"))
    assert main(["ode", "fit", str(csv), "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_readable_equations_fold_constants_in_column_names():
    N, c = expr.Node, (lambda v: expr.Node("const", value=v))
    x0, x1, t = N("x_0"), N("x_1"), N("t")
    decoded = [N("mul", (c(0.4545), N("mul", (c(0.54), N("mul", (c(2.0), x1)))))),  # as a model emits it
               N("add", (N("mul", (x0, x1)), N("add", (N("mul", (x1, x0)), N("mul", (c(-3.0), t))))))]
    assert expr.to_str(decoded).splitlines()[0] == "x_0' = (0.4545 * (0.54 * (2 * x_1)))"
    got = fitmod.readable_equations(decoded, ["time", "prey", "pred"])
    assert got == ["dprey/dt = 0.4909*pred", "dpred/dt = 2*pred*prey - 3.0*time"]
    assert fitmod.readable_equations(expr.parse("0.123456*x_0"), ["t", "x"]) == ["dx/dt = 0.1235*x"]


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
