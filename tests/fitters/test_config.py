"""FitConfig: the command-line choices are the registries, presets nest the field like the flags do."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import tyro

from fitters.bench import BenchConfig, parse_optims
from fitters.config import FitConfig, load_preset
from fitters.curvature import CurvatureConfig, network_specs
from nf_precond.nn import ACTIVATIONS, INITS, FieldConfig
from nf_precond.optim import OPTIMIZERS
from nf_precond.sampling.schedules import INTERVAL_SCHEDULES, RATIO_SCHEDULES


def actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from actions(sub)


def cli_choices(cls: type) -> dict[str, tuple[str, ...]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        parser = tyro.extras.get_parser(cls)
    return {
        action.option_strings[0]: tuple(choice for choice in action.choices if choice != "None")
        for action in actions(parser)
        if action.choices and action.option_strings
    }


@pytest.mark.parametrize("cls", [FitConfig, BenchConfig])
def test_every_cli_choice_list_equals_its_registry(cls: type) -> None:
    choices = cli_choices(cls)
    assert set(choices["--optim"]) == set(OPTIMIZERS)
    assert set(choices["--activation"]) == set(ACTIVATIONS)
    assert set(choices["--init"]) == set(INITS)
    assert set(choices["--int-ratio"]) == set(RATIO_SCHEDULES)
    assert set(choices["--int-interval"]) == set(INTERVAL_SCHEDULES)


def test_nf_bench_and_nf_curvature_accept_exactly_the_registries() -> None:
    assert [spec.optim for spec in parse_optims(",".join(OPTIMIZERS))] == list(OPTIMIZERS)
    with pytest.raises(ValueError, match="unknown optimizer"):
        parse_optims("adam,not-an-optimizer")
    specs = network_specs(CurvatureConfig(path=Path("x.png"), activations=tuple(ACTIVATIONS)))
    assert [spec.activation for spec in specs] == list(ACTIVATIONS)


def test_field_flags_and_preset_section_build_the_same_field(tmp_path: Path) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text("field:\n  hidden: 32\n  layers: 3\n  activation: gauss\n  sigma: 0.1\n")
    from_preset = load_preset(preset)
    from_flags = tyro.cli(FitConfig, args=["--hidden", "32", "--layers", "3", "--activation", "gauss", "--sigma", "0.1"])
    assert from_preset.field == from_flags.field == FieldConfig(hidden=32, layers=3, activation="gauss", sigma=0.1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hidden: 32\n", "unknown setting 'hidden'"),  # field settings live under field:
        ("field:\n  width: 3\n", "unknown field setting"),
        ("field:\n  layers: 0\n", "layers must be an integer >= 1"),
        ("field: 3\n", "must be a mapping"),
    ],
)
def test_bad_field_section_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_preset(preset)
