"""`[[sites]]` in the config file: what is read, and every mistake named with file, line and fix."""

import textwrap
from pathlib import Path

import pytest

from ecoq.config import load_settings
from ecoq.errors import ConfigError
from ecoq.site_config import SiteConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "ecoq.example.toml"


def _load(tmp_path: Path, text: str) -> tuple[SiteConfig, ...]:
    path = tmp_path / "ecoq.toml"
    path.write_text(textwrap.dedent(text))
    return load_settings(config_file=path, env={"HOME": str(tmp_path)}).sites


def test_sites_are_read_with_defaults_and_slurm_keys(tmp_path: Path) -> None:
    sites = _load(
        tmp_path,
        """
        [site]
        name = "box-de"

        [[sites]]
        name = "box-de"
        zone = "DE"
        gpus = 8

        [[sites]]
        name = "hpc-fr"
        kind = "slurm"
        zone = "FR"
        slots = 100
        pue = 1.2
        partition = "gpu"
        sbatch_args = ["--mem=8G"]
        """,
    )
    de, fr = sites
    assert (de.name, de.kind, de.zone, de.gpus, de.slots, de.pue) == (
        "box-de",
        "local",
        "DE",
        8,
        None,
        1.0,
    )
    assert de.idle_w_per_gpu == 50.0 and de.slurm == {} and de.line == 5
    assert (fr.kind, fr.zone, fr.gpus, fr.slots, fr.pue, fr.line) == (
        "slurm",
        "FR",
        None,
        100,
        1.2,
        10,
    )
    assert fr.slurm == {"partition": "gpu", "sbatch_args": ["--mem=8G"]}


def test_no_sites_by_default_and_the_example_file_has_none_active() -> None:
    assert load_settings(env={"HOME": "/nonexistent"}).sites == ()
    assert load_settings(config_file=EXAMPLE, env={"HOME": "/nonexistent"}).sites == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'name = "a"\n',
            r"ecoq.toml:1: \[\[sites\]\] #1 'a': zone is missing: must be a non-empty string",
        ),
        (
            'name = "a"\nzone = "DE"\nkind = "cloud"\n',
            r"kind = 'cloud' is not one of local, remote, slurm",
        ),
        (
            'name = "a"\nzone = "DE"\ngpus = -1\n',
            r"ecoq.toml:4: .*gpus = -1 must be a whole number >= 0",
        ),
        ('name = "a"\nzone = "DE"\nslots = true\n', r"slots = True must be a whole number"),
        ('name = "a"\nzone = "DE"\npue = 0.9\n', r"pue = 0.9 must be at least 1"),
        (
            'name = "a"\nzone = "DE"\nidle_w_per_gpu = "x"\n',
            r"idle_w_per_gpu = 'x' must be a number",
        ),
        (
            'name = "a"\nzone = "DE"\ncolour = 1\n',
            r"unknown key 'colour'; valid keys are name, kind",
        ),
        ('name = "a"\nzone = "DE"\npartition = "gpu"\n', r"unknown key 'partition' \(a Slurm key"),
        (
            'name = "a"\nzone = "DE"\nkind = "slurm"\nsbatch_args = ["--hold"]\n',
            r"sbatch_args may not set --hold",
        ),
        (
            'name = "a"\nzone = "DE"\nkind = "slurm"\ntimeout_s = "x"\n',
            r"timeout_s = 'x' must be a number",
        ),
    ],
)
def test_mistakes_name_file_line_site_key_and_fix(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        _load(tmp_path, "[[sites]]\n" + body)
    assert "Fix: edit" in str(caught.value)


def test_duplicate_names_and_a_sites_table_that_is_not_an_array(tmp_path: Path) -> None:
    twice = '[[sites]]\nname = "a"\nzone = "DE"\n[[sites]]\nname = "a"\nzone = "FR"\n'
    with pytest.raises(ConfigError, match=r":4: \[\[sites\]\] #2 'a': the name 'a' is used twice"):
        _load(tmp_path, twice)
    with pytest.raises(ConfigError, match="'sites' must be an array of tables"):
        _load(tmp_path, '[sites]\nname = "a"\n')


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    text = (
        '[[sites]]\nname = "a"\n[[sites]]\nname = "b"\nzone = "DE"\npue = 0\n'
        "[planner]\nmin_saving = 3\n"
    )
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    message = str(caught.value)
    assert "zone is missing" in message and "pue = 0" in message and "min_saving" in message
