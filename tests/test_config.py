import json

import pytest

from gliomaseg.config import Config, ConfigError, load_config


def test_round_trip_through_dict_is_identity():
    cfg = Config().replace(train={"lr": 3e-4}, data={"context": 2})
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        Config.from_dict({"train": {"learning_rate": 1e-3}})
    with pytest.raises(ConfigError, match="unknown"):
        Config.from_dict({"optimiser": {}})


def test_types_are_checked():
    with pytest.raises(ConfigError, match="expected true/false"):
        Config.from_dict({"train": {"bf16": "yes"}})
    with pytest.raises(ConfigError, match="expected int"):
        Config.from_dict({"train": {"batch_size": 3.5}})
    assert Config.from_dict({"train": {"lr": 1}}).train.lr == 1.0  # int accepted for float


def test_overrides_and_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"base_filters": 12}}))
    cfg = load_config(path, ["train.lr=0.01", "data.channels=rgb"])
    assert (cfg.model.base_filters, cfg.train.lr, cfg.data.channels) == (12, 0.01, "rgb")
    assert cfg.data.in_channels == 3 * (2 * Config().data.context + 1)  # 3 sequences per slice
    assert cfg.train.batch_size == Config().train.batch_size


@pytest.mark.parametrize("override", ["train.lr", "nosection=1", "data.size=100",
                                      "data.channels=t1", "post.threshold=1.5",
                                      "train.budget_clock=gpu", "post.tta_mirror=diagonal",
                                      "model.block=dense", "model.activation=gelu",
                                      "train.ema_decay=1", "train.ema_decay=-0.5",
                                      "train.focal_gamma=-1", "train.optimizer=rmsprop",
                                      "train.momentum=1", "train.grad_clip=-1",
                                      "augment.gamma_range=[0,1.5]",
                                      "augment.gamma_range=[1.5,0.7]", "augment.flip=3",
                                      "augment.gamma=-0.1", "augment.scale_range=1",
                                      "augment.rotate_degrees=-5", "augment.noise_std=-0.1",
                                      "augment.blur_sigma=[1,0.5]",
                                      "augment.low_resolution_zoom=[0.5,1.5]",
                                      "augment.low_resolution=2"])
def test_bad_overrides(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_deep_supervision_needs_a_quarter_resolution_level():
    with pytest.raises(ConfigError, match="depth >= 3"):
        load_config(None, ["model.depth=2", "model.deep_supervision=true"])
    assert load_config(None, ["model.depth=3", "model.deep_supervision=true"]).model.depth == 3


def test_in_channels_counts_context():
    assert Config().replace(data={"context": 2, "channels": "rgb"}).data.in_channels == 15
    assert Config().replace(data={"context": 1, "channels": "flair"}).data.in_channels == 3
