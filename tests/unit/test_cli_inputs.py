"""A file or argument that is not what a ``cgflow`` command needs (missing, another kind of file,
another campaign's) stops it with one line naming the file, before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from cgflow.cli import main

SAMPLING = {"walkers": 2, "steps": 400, "report_interval": 100, "equilibration": 0, "platform": "Reference",
            "pin_cpu": False}


def _config(path, seed=1, **extra):
    cfg = {"campaign": "inputs", "seed": seed, "system": {"type": "toy", "potential": "double_well"},
           "sampling": SAMPLING, "analysis": {"peers": []}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two campaigns that differ only in their seed, each with an unbiased round 0."""
    root = tmp_path_factory.mktemp("inputs")
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        config = _config(root / f"{name}.yaml", seed)
        assert main(["sample", "--config", config, "--round", "0", "--out-dir", str(root / name / "round-00")]) == 0
        out[name] = (config, root / name / "round-00" / "samples.parquet")
    assert main(["reweight", "--config", out["b"][0], "--samples", str(out["b"][1]), "--biases", "none",
                 "--out", str(root / "b" / "weights.parquet")]) == 0
    return root, out


def _fails(capsys, argv, *expected):
    """The command exits 2 with one stderr line holding every ``expected`` text."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(text in err[0] for text in expected), err
    return err[0]


def _bias_on_y(path):
    from cgflow.guidance.bias import BiasGrid

    BiasGrid(("y",), (-1.0,), (1.0,), (False,), np.zeros(11), {}).save(path)
    return str(path)


def test_a_bias_on_other_cvs_is_refused(made, capsys, tmp_path):
    root, out = made
    config, _ = out["a"]
    _fails(capsys, ["sample", "--config", config, "--round", "1", "--out-dir", str(tmp_path / "r1"),
                    "--bias", _bias_on_y(tmp_path / "bias.npz")], "bias on the CVs ['y']", "['x']")
    _fails(capsys, ["sample", "--config", config, "--round", "1", "--out-dir", str(tmp_path / "r1"),
                    "--bias", str(out["a"][1])], "samples.parquet is not a cgflow bias.npz")
    assert not (tmp_path / "r1").exists()


def test_a_cg_model_on_other_cvs_is_refused(made, capsys, tmp_path):
    from cgflow.models.cv_energy import CVEnergyEnsemble, save

    root, out = made
    config, samples = out["b"]
    model = tmp_path / "cg.pt"
    save(CVEnergyEnsemble((-1.0,), (1.0,), (False,), hidden=(4,), members=2, seed=0), model, {"cv_names": ["y"]})
    argv = ["guide", "--config", config, "--round", "0", "--samples", str(samples), "--weights",
            str(root / "b" / "weights.parquet"), "--bias", str(tmp_path / "bias.npz"), "--starts",
            str(tmp_path / "starts.npz"), "--report", str(tmp_path / "guide.json")]
    _fails(capsys, [*argv[:5], "--model", str(model), *argv[5:]], "CG model on the CVs ['y']")
    _fails(capsys, [*argv[:5], "--model", str(samples), *argv[5:]], "is not a cgflow cg.pt")
    assert not list(tmp_path.glob("*.npz"))


def test_another_campaigns_samples_or_weights_are_refused(made, capsys, tmp_path):
    from cgflow.analysis.reweight import attach_weights
    from cgflow.config import load_config
    from cgflow.io import InputError

    root, out = made
    (config_a, samples_a), (_, samples_b) = out["a"], out["b"]
    weights = str(tmp_path / "weights.parquet")
    _fails(capsys, ["reweight", "--config", config_a, "--samples", str(samples_b), "--biases", "none", "--out", weights],
           "is not a samples.parquet of this campaign")
    _fails(capsys, ["reweight", "--config", config_a, "--samples", str(root / "b" / "weights.parquet"), "--biases",
                    "none", "--out", weights], "is not a samples.parquet (it has no sampling provenance)")
    import pandas as pd

    frames = pd.read_parquet(samples_a).assign(round=0)
    with pytest.raises(InputError, match="weights of another campaign"):
        attach_weights(load_config(config_a), frames, root / "b" / "weights.parquet")
    assert not (tmp_path / "weights.parquet").exists()


def test_biases_that_do_not_match_the_rounds_are_refused(made, capsys, tmp_path):
    _, out = made
    config, samples = out["a"]
    weights = str(tmp_path / "weights.parquet")
    _fails(capsys, ["reweight", "--config", config, "--samples", str(samples), "--biases", "none", "none",
                    "--out", weights], "1 samples files but 2 biases")
    _fails(capsys, ["reweight", "--config", config, "--samples", str(samples), "--biases",
                    _bias_on_y(tmp_path / "bias.npz"), "--out", weights], "was sampled without a bias")


def test_missing_files_wrong_kinds_and_missing_sections_are_one_line(made, capsys, tmp_path):
    root, out = made
    config, samples = out["a"]
    _fails(capsys, ["reweight", "--config", config, "--samples", str(tmp_path / "nope.parquet"), "--biases", "none",
                    "--out", str(tmp_path / "w.parquet")], "nope.parquet")
    _fails(capsys, ["plot", "--config", config, "--fes", str(samples), "--samples", str(samples), "--out-dir",
                    str(tmp_path)], "is not a fes.csv")
    (tmp_path / "fes.csv").write_text("phi,F_kJmol\n0,1\n")
    _fails(capsys, ["plot", "--config", config, "--fes", str(tmp_path / "fes.csv"), "--samples", str(samples),
                    "--out-dir", str(tmp_path)], "has no column x")
    _fails(capsys, ["cg-sample", "--config", config, "--out", str(tmp_path / "fg.npz")], "has no cg: section")
    _fails(capsys, ["reconstruct", "--config", config, "--out-dir", str(tmp_path)], "has no ccg: section")
    with pytest.raises(SystemExit) as stop:
        main(["sample", "--config", config, "--round", "-3", "--out-dir", str(tmp_path)])
    assert stop.value.code == 2 and "it must be an integer >= 0" in capsys.readouterr().err
