"""``platform: auto`` takes the platform with the most steps/s on the real system and skips
GPU platforms that are built in but have no device."""

from __future__ import annotations

import time

import pytest

from cgflow.sampling import platform as plat


class _FakeIntegrator:
    def __init__(self, seconds_per_step: float):
        self.seconds_per_step = seconds_per_step

    def step(self, n: int) -> None:
        time.sleep(n * self.seconds_per_step)


class _FakeContext:
    def getState(self, **_):
        return None


def _chooser(seconds_per_step: dict, unusable=()):
    def make_context(name):
        if name in unusable:
            raise RuntimeError(f"{name}: no usable device")
        return _FakeContext(), _FakeIntegrator(seconds_per_step[name])

    return make_context


@pytest.mark.parametrize("speeds, unusable, expected", [
    ({"CUDA": 2e-5, "CPU": 1e-3, "Reference": 1e-4}, (), "CUDA"),
    ({"CUDA": 5e-4, "CPU": 1e-3, "Reference": 1e-4}, (), "Reference"),  # a tiny molecule: the GPU loses
    ({"CUDA": 1e-6, "CPU": 1e-4, "Reference": 5e-4}, ("CUDA",), "CPU"),
])
def test_auto_takes_the_fastest_usable_platform(monkeypatch, speeds, unusable, expected):
    monkeypatch.setattr(plat, "available_platforms", lambda: list(speeds))
    assert plat.choose_platform("auto", _chooser(speeds, unusable), trial_steps=100) == expected


def test_a_named_platform_is_taken_as_is_or_refused_with_what_is_available(monkeypatch):
    monkeypatch.setattr(plat, "available_platforms", lambda: ["Reference", "CPU"])
    assert plat.choose_platform("CPU", _chooser({})) == "CPU"
    with pytest.raises(RuntimeError, match="'CUDA' is not available here; available: Reference, CPU"):
        plat.choose_platform("CUDA", _chooser({}))


def test_a_failing_cpu_platform_is_an_error_not_a_skip(monkeypatch):
    monkeypatch.setattr(plat, "available_platforms", lambda: ["CPU", "Reference"])
    with pytest.raises(RuntimeError, match="CPU: no usable device"):
        plat.choose_platform("auto", _chooser({"Reference": 1e-4}, unusable=("CPU",)))


def test_each_sampling_process_is_pinned_to_a_core_no_other_holds(monkeypatch, tmp_path):
    """Cores come from the process's affinity mask (a SLURM job's cores, not the node's), one per
    process by a lock file; with every allowed core held, processes share them."""
    import fcntl

    from cgflow.sampling import platform

    pinned = []
    monkeypatch.setattr(platform.os, "sched_getaffinity", lambda pid: {3, 5})
    monkeypatch.setattr(platform.os, "sched_setaffinity", lambda pid, cores: pinned.append(set(cores)))
    monkeypatch.setattr(platform.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(platform, "_held_lock", None)
    lock_dir = tmp_path / f"cgflow-cores-{platform.os.getuid()}"
    lock_dir.mkdir()
    with open(lock_dir / "core-3.lock", "w") as other:  # another cgflow process holds core 3
        fcntl.flock(other, fcntl.LOCK_EX)
        assert platform.pin_to_free_core() == 5 and pinned == [{5}]
        with open(lock_dir / "core-5.lock", "w") as third:
            platform._held_lock.close()  # this process lets go of core 5, a third takes it
            fcntl.flock(third, fcntl.LOCK_EX)
            shared = platform.pin_to_free_core()
    assert shared in (3, 5) and pinned[-1] == {shared}
