"""docs/fidelity.md is generated from the recipes and agrees with `plan`; the switches it names exist."""
from __future__ import annotations

import torch

from bench.ablation import plan
from bench.ablation.preview import plan_table
from bench.cli import ROOT, main
from bench.config import DataConfig, load_recipe, parse_override
from bench.engine.data.device_aug import DeviceAugment
from bench.report.fidelity import SETTINGS, fidelity_markdown, table6_specs


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
    assert "| precision | FP16 with an FP32 master copy (Section 3.1, Table 3) | model zoo command: --dtype float16 " \
           "(multi_precision) | bf16 |" in page
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
