import dataclasses
import tomllib
from pathlib import Path

import pytest

from feed.config import Config, ConfigError, load_config

DEFAULT = Path(__file__).parents[1] / "configs" / "default.toml"


def test_default_file_lists_every_setting_with_its_default() -> None:
    data = tomllib.loads(DEFAULT.read_text())
    config = Config()
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        listed = data[section.name]
        for setting in dataclasses.fields(values):
            expected = getattr(values, setting.name)
            assert setting.name in listed, f"{section.name}.{setting.name} missing"
            value = listed[setting.name]
            assert (tuple(value) if isinstance(value, list) else value) == expected
        assert set(listed) == {f.name for f in dataclasses.fields(values)}
    assert load_config(DEFAULT) == config


def test_default_file_comments_every_setting() -> None:
    lines = DEFAULT.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ("[servr]\nport = 1\n", "[servr]"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nport = \"80\"\n", "server.port"),
        ("[client]\nmax_queued_bytes = 0\n", "client.max_queued_bytes"),
        ("[compression]\nenabled = 1\n", "compression.enabled"),
        ("[feed]\nspeed = \"fast\"\n", "feed.speed"),
        ("[feed]\nfiles = \"a.ticks\"\n", "feed.files"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_overrides_are_checked_too() -> None:
    config = Config().with_overrides({"server.port": 0, "feed.speed": "max"})
    assert config.server.port == 0 and config.feed.speed == "max"
    with pytest.raises(ConfigError, match="server.port"):
        Config().with_overrides({"server.port": -1})
