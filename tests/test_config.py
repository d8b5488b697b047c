import re

import pytest
import yaml
from conftest import ROOT, compose_params

from pipeline import config


def test_params_yaml_is_the_composed_conf(tmp_path):
    """params.yaml must be exactly what DVC's Hydra composition writes from conf/."""
    (tmp_path / "conf").symlink_to(ROOT / "conf")
    compose_params(tmp_path, [])

    assert (tmp_path / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()


def test_committed_params_load_with_the_documented_defaults():
    cfg = config.load(ROOT / "params.yaml")

    assert cfg.model.hidden_dims == [50]
    assert cfg.preprocess.mode == config.Mode.mean_image
    assert (cfg.data.num_train, cfg.data.num_val, cfg.data.num_test) == (49000, 1000, 10000)
    assert cfg.data.md5["official"] == "c58f30108f718f92721af3b95e74349a"


@pytest.mark.parametrize("group", ["mean_image", "per_channel"])
def test_every_preprocess_option_composes(tmp_path, group):
    (tmp_path / "conf").symlink_to(ROOT / "conf")
    compose_params(tmp_path, [f"preprocess={group}"])

    cfg = config.load(tmp_path / "params.yaml")
    assert cfg.preprocess.mode.value == group


@pytest.mark.parametrize("override, key", [
    (["train.lr=-1"], "train.lr"),
    (["train.bogus=1"], "train.bogus"),
    (["preprocess.mode=zca"], "preprocess.mode"),
    (["model.hidden_dims=[0]"], "model.hidden_dims[0]"),
    (["model.hidden_dims=[]"], "model.hidden_dims"),
    (["train.epochs=many"], "train.epochs"),
    (["search.coarse.lr=[1e-1,1e-5]"], "search.coarse.lr"),
    (["data.num_train=49990"], "data.num_train + data.num_val"),
    (["data.md5.official=xyz"], "data.md5.official"),
    (["optim.momentum=1.5"], "optim.momentum"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(config.ConfigError, match=re.escape(key)):
        config.load(ROOT / "params.yaml", override)


def test_unknown_top_level_key_is_refused(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["trian"] = {"lr": 1e-3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))

    with pytest.raises(config.ConfigError, match="unknown config key 'trian'"):
        config.load(tmp_path / "params.yaml")


def test_stage_entry_exits_with_the_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())

    with pytest.raises(SystemExit, match="train.lr must be > 0"):
        config.from_argv(["train.lr=-0.5"])


def test_flatten_gives_dotted_keys():
    flat = config.flatten(config.load(ROOT / "params.yaml"))

    assert flat["optim.momentum"] == "0.9"
    assert flat["preprocess.mode"] == "mean_image"
    assert flat["search.coarse.trials"] == "30"
