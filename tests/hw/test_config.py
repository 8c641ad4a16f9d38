import json

import pytest

from hw.config import AccelConfig, ConfigError


def test_defaults_are_valid_and_derived_widths():
    cfg = AccelConfig()
    assert cfg.count_bits == cfg.max_k.bit_length()
    assert cfg.dot_bits == cfg.count_bits + 1
    assert cfg.product_bits == cfg.scale_bits + cfg.dot_bits
    assert cfg.macs_per_cycle == cfg.rows * cfg.cols * cfg.word_bits
    assert cfg.acc_max == 2 ** (cfg.acc_bits - 1) - 1


@pytest.mark.parametrize("field, value, message", [
    ("rows", 0, "rows (array rows (output channels per tile)) must be an integer from 1 to 64, not 0"),
    ("cols", 65, "cols (array columns (output pixels per tile)) must be an integer from 1 to 64, not 65"),
    ("word_bits", 2.0, "word_bits (bits each processing element consumes per cycle) must be an integer "
                       "from 1 to 1024, not 2.0"),
    ("max_wbases", True, "must be an integer from 1 to 8, not True"),
    ("scale_frac", 16, "scale_frac must be less than scale_bits (16), not 16"),
    ("acc_bits", 20, "acc_bits must be at least scale_bits + dot_bits = 30"),
    ("out_depth", 2, "out_depth must be at least rows (4)"),
])
def test_invalid_fields_name_the_field_and_range(field, value, message):
    with pytest.raises(ConfigError) as info:
        AccelConfig(**{field: value})
    assert message in str(info.value)


def test_json_round_trip_and_fingerprint():
    cfg = AccelConfig(rows=8, cols=2, word_bits=64, max_k=1000)
    again = AccelConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.fingerprint() == cfg.fingerprint()
    assert cfg.replace(rows=4).fingerprint() != cfg.fingerprint()


def test_unknown_field_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="Unknown config field 'colums'"):
        AccelConfig.from_dict({"colums": 4})
    with pytest.raises(ConfigError, match="not valid JSON"):
        AccelConfig.from_json("{rows: 4")
    with pytest.raises(ConfigError, match="must be a JSON object, not list"):
        AccelConfig.from_json("[1, 2]")
    with pytest.raises(ConfigError, match="Cannot read config file"):
        AccelConfig.load(tmp_path / "missing.json")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"rows": 2, "cols": 2}))
    assert AccelConfig.load(path).rows == 2
