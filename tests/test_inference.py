"""gradwell.inference.fold_run and gradwell.run_folder.load_run: a trained run folded, checked, reloaded."""

import pytest
import torch

from gradwell import config as configs
from gradwell import inference, job
from gradwell.errors import CheckpointError, GradwellError
from gradwell.fold import fold_batchnorm
from gradwell.norm import BatchNorm
from gradwell.run_folder import load_run


def train_run(directory, batchnorm="before"):
    config = configs.load(None, [
        "data.name=digits", "model.depth=3", "model.width=24", f"model.batchnorm={batchnorm}",
        "train.epochs=1", f"output.dir={directory}", "output.name=run", "output.progress=false",
    ])  # fmt: skip
    return job.run(config)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("runs"))


def test_load_run_rebuilds_the_trained_model(trained):
    loaded = load_run(trained.run_dir)
    assert loaded.config == configs.load(trained.run_dir / "config.toml")
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor.cpu()), name


def test_fold_run_writes_weights_that_reload_folded_and_compute_the_same(trained, tmp_path):
    out = tmp_path / "folded.safetensors"
    result = inference.fold_run(trained.run_dir, out=out, min_run_time=0.01)
    assert result.path == out and result.folded == ["hidden1.norm", "hidden2.norm", "hidden3.norm"]
    assert result.left == []
    assert result.stored_numbers[1] < result.stored_numbers[0]
    assert result.test[0]["accuracy"] == pytest.approx(result.test[1]["accuracy"], abs=1e-3)
    assert result.latency[0] > 0 and result.latency[1] > 0

    reloaded = load_run(trained.run_dir, weights=str(out))  # any path
    assert not any(isinstance(m, BatchNorm) for m in reloaded.model.modules())
    x = trained.dataset.test.x.cpu()
    model = trained.model.cpu().eval()
    with torch.no_grad():
        expected = model(x)
        assert result.max_difference == pytest.approx(
            float((fold_batchnorm(model)(x) - expected).abs().max())
        )
        assert (reloaded.model.eval()(x) - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_a_fold_that_changes_the_outputs_writes_nothing(trained, tmp_path, monkeypatch):
    def broken(model):
        folded = fold_batchnorm(model)
        with torch.no_grad():
            folded[-1].bias.add_(1e-2)
        return folded

    monkeypatch.setattr(inference, "fold_batchnorm", broken)
    out = tmp_path / "folded.safetensors"
    with pytest.raises(GradwellError, match=r"outputs differ .* by up to 0\.01.*nothing was written"):
        inference.fold_run(trained.run_dir, out=out, min_run_time=0.01)
    assert not out.exists()


def test_a_run_without_batchnorm_folds_nothing_and_says_so(tmp_path):
    plain = train_run(tmp_path, batchnorm="none")
    result = inference.fold_run(plain.run_dir, min_run_time=0.01)
    assert result.folded == [] and result.max_difference == 0.0
    assert result.stored_numbers[0] == result.stored_numbers[1]


def test_load_run_names_what_is_missing(trained, tmp_path):
    with pytest.raises(CheckpointError, match=r"needs config\.toml and model\.safetensors"):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match=r"needs config\.toml and other\.safetensors"):
        load_run(trained.run_dir, weights="other.safetensors")


def test_diagnose_probes_a_run_folders_trained_model(trained):
    from gradwell.cli import main
    from gradwell.diagnose import diagnose_run, probe_split

    model = trained.model.cpu()
    expected = probe_split(model, trained.dataset.train, "cross_entropy", seed=0).to_dict()
    assert diagnose_run(trained.run_dir).to_dict()["layers"] == expected["layers"]
    assert main(["diagnose", str(trained.run_dir), "--epochs", "2"]) == 2  # a trained run is probed as it is
