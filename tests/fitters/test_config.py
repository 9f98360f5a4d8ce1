"""FitConfig: the command-line choices are the registries, presets nest the field like the flags do."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import tyro
import yaml

from fitters import memory
from fitters.bench import BenchConfig, parse_optims
from fitters.build import check_fits
from fitters.config import (
    LOG_COST_SHARE,
    UNLIMITED_STEPS,
    FitConfig,
    fit_to_signal,
    flatten,
    load_preset,
    record_flags,
    resolve,
    to_dict,
    with_log_interval,
)
from fitters.signals import SIGNAL_MODULES, signal_kind
from fitters.signals.defaults import DEFAULTS
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


# -- defaults per signal type ----------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def preset_field(name: str) -> FieldConfig:
    return load_preset(REPO / "configs" / name).field


@pytest.mark.parametrize(
    ("path", "optim", "preset"),
    [
        ("speech.flac", "lbfgs", "audio/paper1-sine-lbfgs.yaml"),
        ("bunny.obj", "adam", "occupancy/paper1-sine-adam.yaml"),
        ("clip.avi", "lbfgs", "video/paper1-sine-lbfgs.yaml"),
        ("photo.png", "lbfgs", "image/paper1-sine-lbfgs.yaml"),
    ],
)
def test_a_bare_config_gets_the_papers_settings_for_its_signal(path: str, optim: str, preset: str) -> None:
    """The paper presets (configs/) hold the papers' numbers: a bare command must train the same field for the same
    steps and batch, and say so in its provenance."""
    kind = signal_kind(Path(path))
    resolved = resolve(FitConfig(path=Path(path), optim=optim))
    expected = load_preset(REPO / "configs" / preset)
    architecture = lambda field: (field.activation, field.hidden, field.layers, field.omega0)  # noqa: E731
    assert architecture(resolved.field) == architecture(expected.field)
    assert (resolved.steps, resolved.batch_size) == (expected.steps, expected.batch_size)
    assert resolved.lr == OPTIMIZERS[optim].lr  # these presets keep the registry's lr
    assert resolved.provenance["field.hidden"] == resolved.provenance["steps"] == f"{kind} default"
    assert resolved.provenance["lr"] == f"{optim} default"


def test_bare_adam_on_audio_trains_a_narrower_field_than_the_paper_preset() -> None:
    """Paper 1's 4x256 audio SIREN takes too few full-batch Adam steps in a short budget (bare_commands.md): Adam's
    default is 4x128 with the same per-layer w0, full batch and steps; the preset keeps the paper's 4x256."""
    bare = resolve(FitConfig(path=Path("speech.wav"), optim="adam"))
    preset = load_preset(REPO / "configs" / "audio" / "paper1-sine-adam.yaml")
    assert (bare.field.hidden, preset.field.hidden) == (128, 256)
    assert (bare.field.omega0, bare.steps, bare.batch_size) == (preset.field.omega0, preset.steps, preset.batch_size)
    assert bare.provenance["field.hidden"] == "audio default"
    assert resolve(FitConfig(path=Path("speech.wav"), optim="esgd")).field.hidden == 256


def test_video_and_occupancy_defaults_beyond_the_field() -> None:
    video = resolve(FitConfig(path=Path("clip.mp4")))
    assert (video.signal.max_side, video.lr, video.sampler) == (160, 1e-3, "random")  # paper 1: 160 wide; Adam 1e-3
    assert video.batch_size > 0 and video.signal.max_samples > 0
    assert video.provenance["signal.max_side"] == video.provenance["lr"] == "video default"
    occupancy = resolve(FitConfig(path=Path("bunny.ply"), optim="esgd", field=FieldConfig(activation="gauss")))
    assert occupancy.field.sigma == 0.09 and occupancy.signal.num_points == 100_000  # paper 2's σ, paper 1's points
    assert occupancy.lr == 0.15 and occupancy.provenance["field.activation"] == "given"
    assert resolve(FitConfig(path=Path("song.wav"), field=FieldConfig(activation="gauss"))).field.sigma == 0.01


def test_flags_presets_and_code_win_over_the_signal_defaults(tmp_path: Path) -> None:
    flagged = record_flags(FitConfig(path=Path("speech.wav")), ["speech.wav", "--hidden", "64", "--steps=10"])
    flagged = dataclasses.replace(flagged, steps=10)
    resolved = resolve(flagged)
    assert (resolved.field.hidden, resolved.steps) == (64, 10)  # --hidden 64 is FitConfig's own default, and wins
    assert resolved.provenance["field.hidden"] == resolved.provenance["steps"] == "flag"
    assert resolved.field.omega0 == (3000.0, 3000.0, 30.0, 30.0) and resolved.provenance["field.omega0"] == "audio default"

    preset = tmp_path / "preset.yaml"
    preset.write_text("field:\n  hidden: 32\nbatch-size: 128\n")
    from_preset = resolve(dataclasses.replace(load_preset(preset), path=Path("speech.wav"), config=preset))
    assert (from_preset.field.hidden, from_preset.batch_size, from_preset.field.layers) == (32, 128, 4)
    assert from_preset.provenance["field.hidden"] == from_preset.provenance["batch_size"] == "preset"

    in_code = resolve(FitConfig(path=Path("speech.wav"), field=FieldConfig(hidden=128, layers=3)))
    assert in_code.field.hidden == 128 and in_code.provenance["field.layers"] == "given"
    assert in_code.field.omega0 == (3000.0, 3000.0, 30.0)  # the per-layer default follows --layers 3


def test_a_time_budget_lifts_the_step_limit_and_bounds_the_wall_time() -> None:
    timed = resolve(FitConfig(path=Path("speech.wav"), time_budget=45.0))
    assert timed.steps == UNLIMITED_STEPS and timed.wall_budget == 1.5 * 45.0
    assert timed.provenance["steps"].startswith("derived") and timed.provenance["wall_budget"].startswith("derived")
    assert resolve(FitConfig(path=Path("speech.wav"), time_budget=45.0, steps=20)).steps == 20
    cosine = resolve(FitConfig(path=Path("speech.wav"), time_budget=45.0, lr_schedule="cosine", lr_min=0.0))
    assert cosine.steps == 3000  # the schedule needs a length: the signal's default
    assert resolve(FitConfig(path=Path("speech.wav"))).wall_budget is None


def test_resolved_config_with_provenance_round_trips_through_config_yaml(tmp_path: Path) -> None:
    resolved = resolve(FitConfig(path=Path("clip.mp4"), out=tmp_path / "run"))
    written = tmp_path / "config.yaml"
    written.write_text(yaml.safe_dump(to_plain_dict(resolved)))
    again = load_preset(written)
    assert again.provenance == resolved.provenance and again.field == resolved.field
    assert resolve(dataclasses.replace(again, resume=True)).provenance == resolved.provenance  # nothing re-defaulted


def to_plain_dict(config: FitConfig) -> dict:
    """config.yaml's content: tuples as lists, paths as text (what the run folder writes)."""
    def plain(value):
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(item) for item in value]
        return str(value) if isinstance(value, Path) else value

    return plain(to_dict(config))


def test_every_default_names_a_real_setting_and_help_lists_them() -> None:
    keys = set(flatten(FitConfig()))
    for kind, defaults in DEFAULTS.items():
        assert kind in {module.rsplit(".", 1)[-1] for module in SIGNAL_MODULES.values()}
        for optim in OPTIMIZERS:
            assert set(defaults.for_optimizer(optim)) <= keys
            resolve(FitConfig(path=Path(f"x{next(s for s, m in SIGNAL_MODULES.items() if m.endswith(kind))}"), optim=optim))
    assert "audio: field.activation sine, field.hidden 256" in (FitConfig.__doc__ or "")


# -- the log interval and the memory guard -------------------------------------------------------------------------


def test_log_interval_keeps_evaluation_a_bounded_share_of_training() -> None:
    resolved = resolve(FitConfig(path=Path("photo.png"), steps=100_000))
    mini = with_log_interval(resolved, 256 * 256).log_every  # batch 512: a log measures 65536 pixels
    assert 3 * 512 * mini * LOG_COST_SHARE >= 256 * 256
    full = with_log_interval(dataclasses.replace(resolved, batch_size=0, sampler="full"), 256 * 256).log_every
    assert 3 * full * LOG_COST_SHARE >= 1 and full <= 5  # a full-batch step costs ~3 forward passes of the photo
    huge = with_log_interval(dataclasses.replace(resolved, batch_size=0, sampler="full"), 4096 * 4096).log_every
    assert huge == 1  # a full batch of 16M pixels costs far more than a log of the 65536-pixel progress subset
    assert with_log_interval(resolved, 256 * 256).provenance["log_every"].startswith("derived")


class FakeSignal:
    """What the memory guard reads of a signal: its kind, size and coordinate dimension."""

    kind, in_features, device = "video", 3, torch.device("cpu")

    def __init__(self, num_samples: int):
        self.num_samples = num_samples


def test_memory_guard_picks_a_batch_when_the_full_batch_was_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "memory_available", lambda device: 2**30)  # pretend a machine with 1 GiB
    signal = FakeSignal(10_000_000)
    resolved = resolve(FitConfig(path=Path("clip.mp4"), optim="lbfgs"))
    assert (resolved.batch_size, resolved.sampler) == (0, "full")
    guarded = fit_to_signal(resolved, signal)
    per_point = memory.batch_bytes(1, resolved.field, 3)
    assert guarded.sampler == "random" and guarded.batch_size & (guarded.batch_size - 1) == 0  # a power of two
    assert guarded.batch_size * per_point <= memory.BATCH_MEMORY_SHARE * 2**30 < 2 * guarded.batch_size * per_point
    assert guarded.provenance["batch_size"].startswith("memory guard")
    small = fit_to_signal(resolved, FakeSignal(1000))
    assert (small.batch_size, small.sampler) == (0, "full")  # fits: left alone


def test_memory_guard_names_the_flag_when_the_full_batch_was_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "memory_available", lambda device: 2**30)
    chosen = resolve(FitConfig(path=Path("clip.mp4"), optim="lbfgs", batch_size=0))
    assert fit_to_signal(chosen, FakeSignal(10_000_000)).batch_size == 0  # the user asked for it: not changed
    with pytest.raises(ValueError) as error:
        check_fits(chosen, FakeSignal(10_000_000))
    safe = memory.safe_batch_size(FakeSignal(10_000_000), chosen.field, torch.device("cpu"))
    message = str(error.value)
    assert f"--batch-size {safe}" in message and "--kilo" in message and "\n" not in message
    audio = dataclasses.replace(chosen, path=Path("long.wav"))
    with pytest.raises(ValueError, match=r"--batch-size \d+$"):  # no tiles for audio: only the mini-batch
        check_fits(audio, type("Long", (FakeSignal,), {"kind": "audio", "in_features": 1})(10_000_000))
