"""The shipped recipe configs (the original hyper-parameters) and ``--set`` / ``--config``."""

from __future__ import annotations

import pytest
from conftest import run_main

from ast_audio.errors import ConfigError
from ast_audio.recipes import RECIPES, config_path, read_config, resolve_config
from ast_audio.train.config import DATASETS, resolve_train_config

# SPEC §5: pretrain, lr, epochs, batch, freqm, timem, mixup, frames, loss, metric, lr schedule, others
ORIGINAL = {
    ("esc50", ""): dict(audioset_pretrain=True, lr=1e-5, n_epochs=25, batch_size=48, freqm=24, timem=96, mixup=0.0,
                        audio_length=512, loss="CE", metrics="acc", lrscheduler_start=5, lrscheduler_step=1,
                        lrscheduler_decay=0.85, dataset_mean=-6.6268077, dataset_std=5.358466),
    ("speechcommands", ""): dict(audioset_pretrain=False, imagenet_pretrain=True, lr=2.5e-4, n_epochs=30,
                                 batch_size=128, freqm=48, timem=48, mixup=0.6, audio_length=128, loss="BCE",
                                 metrics="acc", lrscheduler_start=5, lrscheduler_step=1, lrscheduler_decay=0.85,
                                 noise=True, dataset_mean=-6.845978, dataset_std=5.5654526),
    ("audioset", "full"): dict(audioset_pretrain=False, imagenet_pretrain=True, lr=1e-5, n_epochs=5, batch_size=12,
                               freqm=48, timem=192, mixup=0.5, audio_length=1024, loss="BCE", metrics="mAP",
                               lrscheduler_start=2, lrscheduler_step=1, lrscheduler_decay=0.5, bal=True, warmup=True,
                               wa=True, wa_start=1, wa_end=5, dataset_mean=-4.2677393, dataset_std=4.5689974),
    ("audioset", "balanced"): dict(audioset_pretrain=False, imagenet_pretrain=True, lr=5e-5, n_epochs=25,
                                   batch_size=12, freqm=48, timem=192, mixup=0.5, audio_length=1024, loss="BCE",
                                   metrics="mAP", lrscheduler_start=10, lrscheduler_step=5, lrscheduler_decay=0.5,
                                   bal=False, warmup=True, wa=True, wa_start=6, wa_end=25),
    ("csv", ""): dict(audioset_pretrain=True, lr=1e-5, n_epochs=10, batch_size=30, freqm=24, timem=96, mixup=0.0,
                      audio_length=512, loss="CE", metrics="acc", lrscheduler_start=5, lrscheduler_step=1,
                      lrscheduler_decay=0.85),
}  # fmt: skip


@pytest.mark.parametrize(("name", "variant"), list(ORIGINAL))
def test_shipped_configs_hold_the_original_hyper_parameters(name, variant):
    train, options = read_config(config_path(name, variant))
    assert train["dataset"] in DATASETS  # the config names a preset instead of copying its numbers
    cfg = resolve_train_config(train, {"data_train": "x", "data_val": "x", "label_csv": "x"})
    assert {k: getattr(cfg, k) for k in ORIGINAL[name, variant]} == ORIGINAL[name, variant]
    assert (cfg.model_size, cfg.fstride, cfg.tstride) == ("base384", 10, 10)
    cfg.check()


def test_every_recipe_has_its_config_shipped():
    for recipe in RECIPES.values():
        for variant in recipe.configs:
            assert config_path(recipe.name, variant).is_file()


def test_set_coerces_to_each_settings_type():
    train, options, user = resolve_config("esc50", [
        "model_size=tiny224", "imagenet_pretrain=False", "audioset_pretrain=/data/audioset_10_10_0.4593.pth",
        "n_epochs=3", "lr=2e-4", "noise=true", "device=none", "folds=1,3", "batch-size=16",
    ])  # fmt: skip
    assert train["imagenet_pretrain"] is False and train["audioset_pretrain"] == "/data/audioset_10_10_0.4593.pth"
    assert (train["n_epochs"], train["lr"], train["noise"], train["device"], train["batch_size"]) == (3, 2e-4, True, None, 16)
    assert options["folds"] == [1, 3]
    assert user == {"model_size", "imagenet_pretrain", "audioset_pretrain", "n_epochs", "lr", "noise", "device",
                    "folds", "batch_size"}  # fmt: skip


def test_audioset_variants():
    train, options, _ = resolve_config("audioset")
    assert options["variant"] == "balanced" and train["lr"] == 5e-5
    for sets in (["full"], ["variant=full"]):
        train, options, _ = resolve_config("audioset", sets)
        assert options["variant"] == "full" and train["bal"] is True and train["wa_end"] == 5


@pytest.mark.parametrize(("item", "message"), [
    ("epochs=3", "--set epochs: unknown setting"),
    ("n_epochs=three", "--set n_epochs=three: expected an integer"),
    ("noise=maybe", "--set noise=maybe: expected true or false"),
    ("lr=fast", "--set lr=fast: expected a number"),
    ("folds=1,x", "--set folds=1,x: expected a comma-separated list like 1,2"),
    ("data_train=my.json", "set by the esc50 recipe itself"),
    ("tiny", "--set expects key=value, got 'tiny'"),
    ("model_size=huge", "unknown model_size 'huge'"),
    ("loss=MSE", "loss must be 'BCE' or 'CE'"),
])  # fmt: skip
def test_bad_set_items_are_one_clear_error(item, message):
    with pytest.raises(ConfigError, match=None) as err:
        resolve_config("esc50", [item])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_file_is_layered_over_the_shipped_one(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text('[train]\nn_epochs = 2\nmodel_size = "tiny224"\n\n[recipe]\nfolds = [5]\n')
    train, options, user = resolve_config("esc50", ["n_epochs=4"], config=mine)
    assert (train["n_epochs"], train["model_size"], train["freqm"], options["folds"]) == (4, "tiny224", 24, [5])
    assert user == {"n_epochs", "model_size", "folds"}  # the recipe derives none of these
    mine.write_text("[recipe]\nfold = [5]\n")
    with pytest.raises(ConfigError, match="unknown option 'fold'"):
        resolve_config("esc50", config=mine)


def test_cli_reports_a_bad_setting_in_one_line(tmp_path):
    out = run_main("recipe", "esc50", "--root", tmp_path, "--exp-dir", tmp_path / "exp", "--set", "n_epoch=3")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ast-audio: error: --set n_epoch: unknown setting"), out.stderr
    out = run_main("recipe", "esc50", "--root", tmp_path / "nowhere", "--exp-dir", tmp_path / "exp")
    assert out.returncode == 2 and "dataset folder not found" in out.stderr


def test_a_registered_recipe_brings_its_prepare_flags_and_report(tmp_path, monkeypatch, capsys):
    """Adding a recipe is registering it: the CLI has no code per recipe."""
    from ast_audio.cli.main import main
    from ast_audio.recipes import Recipe, flag

    seen = {}

    def prepare(source, out, *, level=1, workers=None, force=False):
        seen.update(source=source, out=out, level=level, workers=workers, force=force)
        return {"clips": 3, "label_csv": "labels.csv", "bad_files": 0, "report": "bad_files.txt"}

    def run(ctx):
        return {"deliverable": str(ctx.exp_dir / "toy.csv"), "score": 0.5}

    toy = Recipe("toy", "a toy dataset", prepare, run, {"": "csv.toml"}, prepare_help="a toy layout",
                 prepare_flags=(flag("--source", required=True), flag("--level", type=int, default=1)))  # fmt: skip
    monkeypatch.setitem(RECIPES, "toy", toy)
    out = tmp_path / "prepared"
    assert main(["prepare", "toy", "--source", "here", "--level", "4", "--out", str(out), "-w", "2"]) == 0
    assert seen == {"source": "here", "out": str(out), "level": 4, "workers": 2, "force": True}
    printed = capsys.readouterr().out
    assert "clips: 3" in printed and "bad files: 0 (listed in bad_files.txt)" in printed
    assert main(["recipe", "toy", "--root", str(tmp_path), "--exp-dir", str(tmp_path / "exp")]) == 0
    assert capsys.readouterr().out.splitlines() == ["score: 0.5", f"deliverable: {tmp_path / 'exp' / 'toy.csv'}"]
    with pytest.raises(SystemExit):
        main(["prepare", "toy", "--out", str(out)])  # --source is required
