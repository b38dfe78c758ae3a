import pytest

from scoreinv import config as C
from scoreinv.errors import ScoreinvError


def test_presets_exist_and_match_the_paper():
    assert {"lidc320", "brats240", "ldct512", "ct64", "mri64"} <= set(C.preset_names())
    b = C.load_config("brats240")
    assert (b.data.image_size, b.model.nf, list(b.model.ch_mult), b.model.num_res_blocks,
            list(b.model.attn_resolutions), b.train.ema_rate, b.train.batch_size) == (240, 32, [1, 1, 2, 2, 2], 2, [30], 0.999, 64)
    d = C.load_config("ldct512")
    assert (d.model.nf, list(d.model.ch_mult), d.model.num_res_blocks, d.train.ema_rate, d.train.batch_size) == \
        (16, [1, 2, 4, 8, 16, 32, 32], 1, 0.9999, 16)
    assert b.model.sigma_max == 128.0 and b.model.preconditioning == "paper" and b.train.warmup == 5000


def test_overrides_and_unknown_keys():
    c = C.load_config("ct64", ["model.nf=16", "train.batch_size=4"])
    assert c.model.nf == 16 and c.train.batch_size == 4
    with pytest.raises(ScoreinvError, match="model.nff"):
        C.load_config("ct64", ["model.nff=16"])
    with pytest.raises(ScoreinvError, match="train.batch_size"):
        C.load_config("ct64", ["train.batch_size=abc"])
    with pytest.raises(ScoreinvError, match="unknown preset"):
        C.load_config("nope")
    with pytest.raises(ScoreinvError, match="model.sde"):
        C.load_config("ct64", ["model.sde=xx"])
    with pytest.raises(ScoreinvError, match="divisible"):
        C.load_config("ct64", ["data.image_size=60"])


def test_yaml_file_with_unknown_key_is_rejected(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  nf: 8\n  colour: red\n")
    with pytest.raises(ScoreinvError, match="colour"):
        C.load_config(str(f))


def test_round_trip_through_dict():
    c = C.load_config("mri64")
    assert C.to_dict(C.from_dict(C.to_dict(c))) == C.to_dict(c)


def test_data_options_reach_the_dataset_and_are_checked_against_it(tmp_path):
    from scoreinv.data.registry import build_dataset
    c = C.load_config("ct64", ["data.options.n_train=7", "data.options.n_val=3"])
    assert len(build_dataset(c.data.dataset, "train", 16, **C.data_options(c.data))) == 7
    assert len(build_dataset(c.data.dataset, "val", 16, **C.data_options(c.data))) == 3
    f = tmp_path / "c.yaml"         # and from a config file, kept through a saved config
    f.write_text("data:\n  dataset: mri-mix\n  options:\n    real_fraction: 0.25\n")
    c = C.from_dict(C.to_dict(C.load_config(str(f))))
    assert C.data_options(c.data)["real_fraction"] == 0.25
    with pytest.raises(ScoreinvError, match="data.options: unknown option.*real_fraction.*phantoms"):
        C.load_config("ct64", ["data.options.real_fraction=0.5"])
    with pytest.raises(ScoreinvError, match="set data.hu_min instead"):
        C.load_config("ct64", ["data.options.hu_min=0"])
