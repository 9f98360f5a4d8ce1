"""The REPRODUCTION.md generator: loud failures on bad results files, figures computed from the data, and the
committed REPRODUCTION.md matching the committed results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import reproduction
from benchmarks.reproduction import NOT_YET, ResultsError, load_results, render


def nf_bench_report(name: str, runs: list[tuple[str, str, list[tuple[float, float]]]]) -> dict:
    """A minimal nf-bench report; each run is (label, optim, [(time_s, psnr), ...]) logged at steps 0, 1, 2, ..."""
    return {
        "name": name, "metric": "psnr", "target": 30.0, "command": f"nf-bench x.png --name {name}",
        "plots": [f"{name}_psnr_vs_time.png"],
        "runs": [
            {"label": label, "optim": optim, "time_s": curve[-1][0], "steps": len(curve) - 1,
             "ms_per_step": 1000 * curve[-1][0] / (len(curve) - 1), "final": {"psnr": curve[-1][1]},
             "curve": [{"step": step, "time_s": t, "psnr": p} for step, (t, p) in enumerate(curve)]}
            for label, optim, curve in runs
        ],
    }  # fmt: skip


def write(folder: Path, stem: str, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def row_of(markdown: str, claim_text: str) -> str:
    return next(line for line in markdown.splitlines() if claim_text in line)


def test_committed_reproduction_md_is_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "REPRODUCTION.md"
    assert reproduction.main(["--out", str(out)]) == 0
    committed = reproduction.OUTPUT.read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == committed, (
        "REPRODUCTION.md is stale: run `python -m benchmarks.reproduction` and commit it with the results"
    )


def test_every_claim_says_not_measured_without_results(tmp_path: Path) -> None:
    markdown = render(load_results(tmp_path))
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| paper |")]
    assert len(rows) == len(reproduction.CLAIMS)
    assert all(NOT_YET in line for line in rows)


@pytest.mark.parametrize(
    ("stem", "content", "message"),
    [
        ("image_paper2_gauss", "{not json", "not valid JSON"),
        ("image_paper2_gauss", "[1, 2]", "JSON object"),
        ("image_paper2_gauss", {"name": "x", "metric": "psnr", "target": 1.0, "command": "c", "plots": [], "runs": []},
         "'runs' is empty"),
        ("image_paper2_gauss", {"name": "x", "metric": "psnr", "target": "high", "command": "c", "plots": [],
                                "runs": []}, "'target' should be a int or float"),
        ("curvature_camera", {"command": "c", "plot": "p.png", "networks": [{"activation": "relu", "layers": 4}]},
         "missing 'networks.0.hidden'"),
        ("surprise_results", {"anything": 1}, "no reader for this results file"),
    ],
)
def test_malformed_or_unknown_results_fail_loudly(
    stem: str, content: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "benchmarks" / "results"
    write(results, stem, content)
    with pytest.raises(ResultsError, match=message) as info:
        load_results(results)
    assert f"{stem}.json" in str(info.value)
    out = tmp_path / "R.md"
    assert reproduction.main(["--results", str(results), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("reproduction: error:") and "\n" not in error
    assert not out.exists()


def test_a_run_missing_its_final_metric_is_malformed(tmp_path: Path) -> None:
    report = nf_bench_report("image_paper1_x", [("adam", "adam", [(0, 10), (1, 20)]), ("lbfgs", "lbfgs", [(0, 10), (1, 25)])])
    del report["runs"][1]["final"]["psnr"]
    write(tmp_path, "image_paper1_x", report)
    with pytest.raises(ResultsError, match=r"missing 'runs\.1\.final\.psnr'"):
        load_results(tmp_path)


def test_lbfgs_speedup_comes_from_the_curves(tmp_path: Path) -> None:
    # Adam climbs linearly 10 -> 30 dB over 10 s; L-BFGS reaches 30 dB at 2 s: a 5x speed-up, the paper's figure.
    adam = [(float(t), 10.0 + 2.0 * t) for t in range(11)]
    lbfgs = [(0.0, 10.0), (1.0, 20.0), (2.0, 30.0), (3.0, 32.0)]
    write(tmp_path, "image_paper1_demo", nf_bench_report("image_paper1_demo", [("adam@1e-4", "adam", adam),
                                                                                ("lbfgs", "lbfgs", lbfgs)]))
    line = row_of(render(load_results(tmp_path)), "L-BFGS vs Adam, image")
    assert "5.00x to its 30.00 psnr" in line
    assert "| 1.00 | reproduced |" in line
    assert "image_paper1_demo_psnr_vs_time.png" in line


def test_a_slower_method_does_not_reproduce_and_gives_the_reason(tmp_path: Path) -> None:
    adam = [(0.0, 10.0), (1.0, 30.0)]
    lbfgs = [(0.0, 10.0), (1.0, 20.0), (2.0, 25.0), (4.0, 30.0)]
    write(tmp_path, "image_paper1_demo", nf_bench_report("image_paper1_demo", [("adam", "adam", adam),
                                                                                ("lbfgs", "lbfgs", lbfgs)]))
    line = row_of(render(load_results(tmp_path)), "L-BFGS vs Adam, image")
    assert "0.25x" in line and "**did not reproduce**" in line
    assert reproduction.CLAIMS[0].reason in line


def curvature_report(zero: dict[str, float]) -> dict:
    networks = [
        {"label": f"{act} 4x16 {init}", "activation": act, "layers": 4, "hidden": 16, "init": init,
         "summary": {"zero_fraction": fraction, "smallest_abs": 1e-3, "hvp_sparsity": fraction}}
        for act, fraction in zero.items()
        for init in ["siren" if act == "sine" else "kaiming"]
    ]  # fmt: skip
    return {"command": "nf-curvature camera.png", "plot": "curvature_demo.png", "networks": networks}


@pytest.mark.parametrize(
    ("zero", "reproduced"),
    [
        ({"sine": 0.0, "gauss": 0.0, "relu": 0.2, "relu-pe": 0.3}, True),
        ({"sine": 0.0, "gauss": 0.01, "relu": 0.2, "relu-pe": 0.3}, False),
        ({"sine": 0.0, "gauss": 0.0, "relu": 0.0, "relu-pe": 0.3}, False),
    ],
)
def test_hessian_rows_follow_the_theory(zero: dict[str, float], reproduced: bool, tmp_path: Path) -> None:
    write(tmp_path, "curvature_demo", curvature_report(zero))
    markdown = render(load_results(tmp_path))
    spectrum = row_of(markdown, "Hessian spectrum, 4x16:")
    sparsity = row_of(markdown, "HVP sparsity")
    for line in (spectrum, sparsity):
        assert ("| reproduced |" in line) is reproduced
        assert "[curvature_demo.png](benchmarks/results/curvature_demo.png)" in line
    assert f"| {zero['relu'] / 0.28:.2f} |" in spectrum  # ReLU zero fraction over the paper's 28%
    assert NOT_YET in row_of(markdown, "Hessian spectrum, 4x64:")  # no such network measured


def test_committed_results_all_have_readers() -> None:
    """Every results file in the repository is one the generator knows (else the up-to-date test could not run)."""
    load_results(reproduction.RESULTS_DIR)


def test_other_measurements_are_listed(tmp_path: Path) -> None:
    shutil.copy(reproduction.RESULTS_DIR / "batched_mlp.json", tmp_path / "batched_mlp.json")
    assert "[batched_mlp.md](benchmarks/results/batched_mlp.md)" in render(load_results(tmp_path))


def test_says_there_are_no_gpu_figures_until_the_gpu_suite_wrote_some(tmp_path: Path) -> None:
    assert "No GPU figures yet" in render(load_results(tmp_path))
    (tmp_path / "gpu_suite.json").write_text(json.dumps({"machine": {"device": "cuda"}, "steps": []}))
    assert "No GPU figures yet" not in render(load_results(tmp_path))


@pytest.mark.parametrize(("time_saved", "psnr_change", "reproduced"), [(0.4, -0.5, True), (0.5, -3.0, False), (0.05, 0.0, False)])
def test_int_rows_need_the_saving_and_the_quality(
    time_saved: float, psnr_change: float, reproduced: bool, tmp_path: Path
) -> None:
    """INT paper Table 2, image: 38.9% less time with < 1 dB lost (Sec. 5)."""
    runs = [{"label": "no INT", "time_s": 10.0, "time_saved": 0.0, "metric_change": 0.0},
            {"label": "INT step-incremental", "time_s": 10.0 * (1 - time_saved), "time_saved": time_saved,
             "metric_change": psnr_change}]  # fmt: skip
    write(tmp_path, "int_image", {"case": "image", "results": [{"case": "image", "metric": "psnr", "runs": runs}]})
    line = row_of(render(load_results(tmp_path)), "INT Table 2: image")
    assert ("| reproduced |" in line) is reproduced
    assert f"| {time_saved / (1 - 211.04 / 345.22):.2f} |" in line
    assert "[int_image_image.png](benchmarks/results/int_image_image.png)" in line
