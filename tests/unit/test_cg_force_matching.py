"""Force matching on a 2-D toy whose PMF is known exactly recovers the mean force, entropy term included."""

from __future__ import annotations

import numpy as np
import torch

from cgflow.training.force_matching import ForceMatching, model_forces

kT = 2.494
K0 = 50.0


def U1(x):
    return 5.0 * (x**2 - 1) ** 2


def mean_force(x):
    # PMF(x) = U1(x) + kT/2 ln k(x), k(x) = K0 (1 + x^2): an entropic term FM must also learn
    return -20.0 * x * (x**2 - 1) - kT * x / (1 + x**2)


class RBFEnergy(torch.nn.Module):
    """U(x) = sum_k c_k exp(-(x - x_k)^2 / 2w^2): a flexible CG energy that trains fast."""

    def __init__(self):
        super().__init__()
        self.register_buffer("centres", torch.linspace(-2.2, 2.2, 23, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.zeros(23, dtype=torch.float64))

    def forward(self, x):
        return (self.c * torch.exp(-((x - self.centres) / 0.2) ** 2 / 2)).sum(-1)


def test_force_matching_recovers_the_exact_mean_force(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    grid = np.linspace(-2.2, 2.2, 20001)
    pmf = U1(grid) + kT / 2 * np.log(K0 * (1 + grid**2))
    cdf = np.cumsum(np.exp(-(pmf - pmf.min()) / kT))
    x = np.interp(rng.uniform(size=10000), cdf / cdf[-1], grid)
    k = K0 * (1 + x**2)
    y = rng.normal(size=x.size) * np.sqrt(kT / k)  # exact conditional sample of the hidden coordinate
    f_x = -20.0 * x * (x**2 - 1) - K0 * x * y**2  # instantaneous FG force on x = the mapped force
    trainer = ForceMatching(RBFEnergy(), x[:, None], f_x[:, None], batch_size=1000, lr=0.5, max_epochs=150,
                            patience=10, checkpoint=tmp_path / "fm.pt", seed=0).fit()
    xs = np.linspace(-1.3, 1.3, 53)
    pred = model_forces(trainer.model, torch.as_tensor(xs[:, None]), create_graph=False).numpy()[:, 0]
    exact = mean_force(xs)
    rmse = np.sqrt(np.mean((pred - exact) ** 2))
    noise = np.std(f_x - mean_force(x))
    entropic = np.sqrt(np.mean((kT * xs / (1 + xs**2)) ** 2))  # what a PMF = U1 model would miss
    assert rmse < 0.25 * entropic, (rmse, entropic)
    assert noise > 2 * rmse  # each mapped force is noisier than the learnt mean force
    assert (tmp_path / "fm.pt").exists()


def test_trainer_resumes_from_its_checkpoint_and_stops_on_divergence(tmp_path):
    import pytest

    from cgflow.training.trainer import TrainingDiverged

    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(400, 1))
    f = -20.0 * x * (x**2 - 1)
    make = lambda epochs, lr=0.5: ForceMatching(RBFEnergy(), x, f, batch_size=100, lr=lr, max_epochs=epochs,  # noqa: E731
                                                patience=50, checkpoint=tmp_path / "c.pt", seed=0)
    first = make(3).fit()
    resumed = make(5).fit()
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3, 4]
    assert resumed.history[:3] == first.history
    straight = ForceMatching(RBFEnergy(), x, f, batch_size=100, lr=0.5, max_epochs=5, patience=50, seed=0).fit()
    assert [h["val_loss"] for h in straight.history] == pytest.approx([h["val_loss"] for h in resumed.history])
    with pytest.raises(TrainingDiverged, match="learning rate"):
        ForceMatching(RBFEnergy(), x, f * 1e200, batch_size=100, lr=1e300, max_epochs=5, seed=0).fit()


def test_an_early_stopped_trainer_resumed_trains_no_further_and_other_data_starts_afresh(tmp_path):
    """A job killed after force matching stopped early (e.g. in its CG MD) must give the same
    model when rerun; a checkpoint written for other data or settings must not be resumed."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(400, 1))
    f = -20.0 * x * (x**2 - 1) + rng.normal(scale=5.0, size=x.shape)

    def make(signature="data-a", forces=f):
        return ForceMatching(RBFEnergy(), x, forces, batch_size=100, lr=0.5, max_epochs=400, patience=3,
                             checkpoint=tmp_path / "c.pt", seed=0, signature=signature)

    first = make().fit()
    assert first.stopped and len(first.history) < 400
    again = make().fit()
    assert again.history == first.history
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    other = make("data-b", 2 * f).fit()  # other forces: trained from the start, on them
    assert other.history[0]["epoch"] == 0 and other.history[0]["val_loss"] != first.history[0]["val_loss"]


def test_long_training_logs_its_progress(monkeypatch, caplog):
    import cgflow.training.trainer as trainer

    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", 0.0)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(200, 1))
    with caplog.at_level("INFO", logger="cgflow.training.trainer"):
        ForceMatching(RBFEnergy(), x, -20.0 * x * (x**2 - 1), batch_size=100, lr=0.5, max_epochs=4, patience=50,
                      seed=0).fit()
    epochs = [r.getMessage().split()[2] for r in caplog.records if " epoch " in r.getMessage()]
    assert epochs == ["1/4:", "2/4:", "3/4:"]
