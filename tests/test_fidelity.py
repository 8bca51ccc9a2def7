"""docs/fidelity.md is generated from the recipes and agrees with `plan`; the switches it names exist."""
from __future__ import annotations

import re

import pytest
import torch

from bench.ablation import plan
from bench.ablation.preview import plan_table, plan_totals, table3_rates
from bench.cli import ROOT, main
from bench.config import DataConfig, load_recipe, parse_override
from bench.engine.data.device_aug import DeviceAugment
from bench.fidelity import SETTINGS, fidelity_markdown, table6_specs
from bench.report.frames import load_paper


def test_the_committed_page_is_the_generated_one():
    committed = (ROOT / "docs" / "fidelity.md").read_text()
    assert committed == fidelity_markdown(table6_specs(ROOT)), \
        "docs/fidelity.md is stale: run `python run_ablation.py fidelity`"


def test_plan_shows_the_values_of_the_page():
    specs = table6_specs(ROOT)
    table = plan_table(specs)
    for s in SETTINGS:   # every value the `plan` column shows is on the page
        shown = sorted({f"{v:g}" if isinstance(v, float) else str(v) for v in table[s.plan_column]}) if s.plan_column else []
        assert [v for v in shown if v not in s.ours(specs)] == [], s.name
    assert {s.plan_column for s in SETTINGS} >= {"global_batch", "bn_batch", "peak_lr", "warmup_epochs", "epochs", "precision"}


def test_a_recipe_change_changes_the_page():
    path = ROOT / "recipes" / "table6.yaml"
    changed = plan(load_recipe(path), where=str(path), overrides=(parse_override("efficient.precision=bf16"),
                                                                 parse_override("distill.hard_weight=0.5")))
    page, before = fidelity_markdown(changed), fidelity_markdown(table6_specs(ROOT))
    assert page != before
    assert "(FP32 master weights); no loss scaling | bf16 | neither |" in page
    assert "| hard_weight 0.5 |" in page and "| Eq. 6 |" in before


def test_every_disagreement_names_the_key_that_switches():
    for s in SETTINGS:
        if s.follows != "both":
            assert s.why and "`" in s.why, s.name
    page = fidelity_markdown(table6_specs(ROOT))
    for key in ("data.color_jitter_hue: true", "label_smoothing.form: uniform", "distill.hard_weight: 0.5"):
        assert key in page


def test_colour_jitter_gluoncv_by_default_and_the_papers_hue_by_a_key():
    gluon = DeviceAugment(DataConfig(dataset="imagenet"), torch.device("cpu"))
    assert gluon.ops == ["brightness", "contrast", "saturation"] and gluon.jitter == 0.4   # factors U[0.6, 1.4]
    paper = DeviceAugment(DataConfig(dataset="imagenet", color_jitter_hue=True), torch.device("cpu"))
    assert paper.ops == ["brightness", "saturation", "hue"] and paper.jitter == 0.4
    # the hue factor U[0.6, 1.4] is a shift of (f − 1)/2: ±0.2 of the colour circle = ±0.4π rad, as HueJitterAug(0.4)
    image = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    image[:, 0] = 255   # pure red, hue 0
    shifted = paper._apply("hue", image.float() / 255, torch.tensor([1.4]))
    assert torch.allclose(shifted[0, :, 0, 0], torch.tensor([0.8, 1.0, 0.0]), atol=1e-5)   # red → hue 0.2, 72°


def test_the_command_writes_the_page(tmp_path, capsys):
    out = tmp_path / "fidelity.md"
    assert main(["fidelity", "--out", str(out)]) == 0
    assert out.read_text() == (ROOT / "docs" / "fidelity.md").read_text()


def test_the_pages_cost_arithmetic_adds_up_to_the_plans_total():
    """Each row of the Table 6 cost: epochs × 1,281,024 images / its rate / 3,600, the rate as its
    formula reads (student, or 1 / (1/student + 1/(3 × teacher))); the rows add to the total."""
    page = fidelity_markdown(table6_specs(ROOT))
    section = page[page.index("## plan: what Table 6 costs"):]
    rows = [line.split(" | ") for line in section.splitlines() if re.match(r"\| \d+ \(", line)]
    assert len(rows) == 7   # the teachers, and per model: without and with a teacher
    hours = []
    for cells in rows:
        epochs, formula, shown = int(cells[4]), cells[5], float(cells[6].rstrip(" |").replace(",", ""))
        left, rate = formula.rsplit(" = ", 1)
        numbers = [float(x) for x in re.findall(r"\d+\.\d+|\d+", left)]
        if left.startswith("1 / ("):   # 1 / (1 / student + 1 / (3 × teacher))
            expected = 1 / (1 / numbers[2] + 1 / (numbers[4] * numbers[5]))
        else:                          # reference rate × its GFLOPs / the model's
            expected = numbers[0] * numbers[1] / numbers[2]
        assert float(rate) == pytest.approx(expected, rel=2e-3)   # the GFLOPs shown to 2 decimals
        assert shown == pytest.approx(epochs * 1_281_024 / float(rate) / 3600, rel=1e-3)
        hours.append(shown)
    total = float(re.search(r"\*\*([\d,]+) V100-hours\*\*", section).group(1).replace(",", ""))
    assert sum(hours) == pytest.approx(total, abs=1)
    assert total == pytest.approx(plan_totals(plan_table(table6_specs(ROOT), table3_rates(load_paper("table3"))))["device_hours"], abs=0.5)
