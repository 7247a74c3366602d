"""The learnability summary: per-arm means and 95 % t-intervals over seeds, checked independently.

- `t_critical_95` is the 0.975 quantile of Student's t: the t density integrated numerically (numpy,
  no table) up to it gives 0.975, for small and large degrees of freedom;
- `summarise` over a run folder of known values (eval.json accuracies, probe.json measures) gives, per
  arm and measure, the mean and mean ± q·sd/sqrt(n) with q found by bisection on that integral;
- base (one run) has a value and no interval; an unfinished run is left out and the table says so;
  summary.json, summary.png and the command's last JSON line are written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from rcsd.recipes.compare.config import CompareConfig
from rcsd.recipes.compare.summary import main as summary_main
from rcsd.recipes.compare.summary import summarise, table_lines
from rcsd.recipes.stats import t_critical_95, t_interval


def _t_cdf(x: float, df: int) -> float:
    """P(T <= x) for x > 0: 0.5 + the density integrated from 0 to x (Simpson, log-gamma constant)."""
    grid = np.linspace(0.0, x, 200_001)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = np.exp(log_c - (df + 1) / 2 * np.log1p(grid**2 / df))
    h = grid[1] - grid[0]
    simpson = h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
    return 0.5 + float(simpson)


def _quantile_975(df: int) -> float:
    low, high = 0.0, 50.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_cdf(mid, df) < 0.975 else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("df", [1, 2, 3, 5, 12, 30, 31, 60])
def test_t_critical_value_is_the_975_quantile(df):
    assert _t_cdf(t_critical_95(df), df) == pytest.approx(0.975, abs=2e-5)


def _write_run_folder(out: Path) -> tuple[CompareConfig, dict[str, dict[str, list[float]]]]:
    config = CompareConfig.model_validate(
        {
            "name": "known",
            "output_dir": str(out),
            "rollouts_per_step": 2,
            "seeds": [0, 1, 2],
            "train": {"steps": 1, "data": ["learnability_train"]},
            "arms": [{"name": "base", "method": "base"}, {"name": "rcsd", "method": "rcsd"}],
            "eval": {"data": ["learnability_train", "learnability_heldout"]},
            "measure": {"data": ["learnability_train", "learnability_heldout"]},
        }
    )
    out.mkdir(parents=True)
    (out / "compare.yaml").write_text(config.to_yaml())
    rng = np.random.default_rng(7)
    known: dict[str, dict[str, list[float]]] = {}
    probes: dict[str, dict[str, dict[str, float]]] = {"learnability_train": {}, "learnability_heldout": {}}
    for run in config.runs():
        folder = out / "arms" / run.name
        folder.mkdir(parents=True)
        values = {f"accuracy/{s}": float(rng.integers(0, 17)) / 16 for s in probes}
        values |= {
            f"{m}/{s}": float(rng.normal(-2, 0.5)) for m in ("reference_logprob", "topk_kl") for s in probes
        }
        results = [{"data": s, "temperature": 0.0, "accuracy": values[f"accuracy/{s}"]} for s in probes]
        results.append({"data": "learnability_train", "temperature": 1.0, "accuracy": 0.99})  # not greedy
        (folder / "eval.json").write_text(json.dumps({"results": results}))
        (folder / "DONE").write_text("x\n")
        for s in probes:
            probes[s][run.name] = {m: values[f"{m}/{s}"] for m in ("reference_logprob", "topk_kl")}
            probes[s][run.name]["sampled_kl"] = 9.0  # recorded, not summarised
        for key, value in values.items():
            known.setdefault(run.group or run.name, {}).setdefault(key, []).append(value)
    for s, recorded in probes.items():
        (out / "measures" / s).mkdir(parents=True)
        (out / "measures" / s / "probe.json").write_text(json.dumps(recorded))
    return config, known


def test_summary_matches_an_independent_t_interval(tmp_path, capsys):
    out = tmp_path / "run"
    config, known = _write_run_folder(out)
    summaries = {s.arm: s for s in summarise(config, out)}
    assert summaries["rcsd"].seeds == [0, 1, 2] and summaries["base"].seeds == [0]
    q = _quantile_975(2)
    for key, values in known["rcsd"].items():
        interval = summaries["rcsd"].measures[key]
        mean = sum(values) / 3
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
        assert interval.values == values
        assert interval.mean == pytest.approx(mean, abs=1e-12)
        assert (interval.low, interval.high) == pytest.approx(
            (mean - q * sd / math.sqrt(3), mean + q * sd / math.sqrt(3)), abs=1e-5
        )
    assert set(summaries["rcsd"].measures) == set(known["rcsd"])  # no sampled_kl, no T=1 accuracy
    base = summaries["base"].measures["accuracy/learnability_heldout"]
    assert base.values == known["base"]["accuracy/learnability_heldout"] and math.isnan(base.low)
    assert t_interval([1.0])[0] == 1.0

    assert summary_main([str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1])["means"]["rcsd"]["topk_kl/learnability_train"] == pytest.approx(
        sum(known["rcsd"]["topk_kl/learnability_train"]) / 3
    )
    assert (out / "summary.png").stat().st_size > 0
    saved = json.loads((out / "summary.json").read_text())
    assert [a["arm"] for a in saved["arms"]] == ["base", "rcsd"]

    (out / "arms" / "rcsd.seed2" / "DONE").unlink()  # a run still going: left out, and said
    partial = {s.arm: s for s in summarise(config, out)}
    assert partial["rcsd"].seeds == [0, 1]
    assert (
        partial["rcsd"].measures["topk_kl/learnability_train"].values
        == known["rcsd"]["topk_kl/learnability_train"][:2]
    )
    assert "**Partial:**" in "\n".join(table_lines(config, list(partial.values())))
    assert yaml.safe_load((out / "compare.yaml").read_text())["seeds"] == [0, 1, 2]
