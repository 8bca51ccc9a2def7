"""Recipes: strict validation with one-line errors, cumulative steps, --set, derived values."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.ablation import plan
from bench.config import RunConfig, apply_override, load_recipe, model_names, parse_override, resolve_step, smoke_config
from bench.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def error_of(write_recipe, text: str) -> str:
    path = write_recipe(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_default_recipe_has_the_papers_six_rows():
    recipe = load_recipe(ROOT / "recipes" / "default.yaml")
    assert [s.name for s in recipe.steps] == ["efficient", "cosine", "label_smoothing", "distill", "mixup", "distill_mixup"]
    cfg = {s.name: resolve_step(recipe, "resnet18d", s.name) for s in recipe.steps}
    assert cfg["efficient"].schedule.kind == "step" and cfg["efficient"].label_smoothing is None
    assert cfg["cosine"].schedule.kind == "cosine"
    assert cfg["label_smoothing"].label_smoothing.eps == 0.1 and cfg["label_smoothing"].mixup is None
    assert cfg["distill"].distill.teacher == "teacher" and cfg["distill"].mixup is None
    # siblings on top of label smoothing: mixup alone, then mixup with distillation
    assert cfg["mixup"].distill is None and cfg["mixup"].mixup.alpha == 0.2
    assert cfg["distill_mixup"].distill.teacher == "teacher_mixup" and cfg["distill_mixup"].mixup is not None
    assert cfg["mixup"].schedule.epochs > cfg["label_smoothing"].schedule.epochs  # mixup trains longer


def test_null_switches_a_trick_off(write_recipe, tiny_cfg):
    path = write_recipe("""
        name: t
        base: {label_smoothing: {eps: 0.1}}
        steps: [{name: a}, {name: b, set: {label_smoothing: null}}]
    """)
    recipe = load_recipe(path)
    assert resolve_step(recipe, "resnet18d", "a").label_smoothing.eps == 0.1
    assert resolve_step(recipe, "resnet18d", "b").label_smoothing is None


def test_peak_lr_is_derived_from_the_global_batch():
    cfg = RunConfig.model_validate({"data": {"global_batch_size": 1024}, "optim": {"lr_per_256": 0.1}})
    assert cfg.peak_lr() == pytest.approx(0.4)


def test_unknown_key_names_the_key_a_suggestion_and_the_file(write_recipe):
    msg = error_of(write_recipe, """
        name: t
        base: {label_smoothin: {eps: 0.1}}
        steps: [{name: a}]
    """)
    assert "unknown key 'label_smoothin'" in msg and "did you mean 'label_smoothing'" in msg


def test_unknown_nested_key_in_a_step(write_recipe):
    msg = error_of(write_recipe, """
        name: t
        steps: [{name: a, set: {mixup: {alpah: 0.2}}}]
    """)
    assert "step 'a'" in msg and "mixup" in msg and "'alpah'" in msg and "did you mean 'alpha'" in msg


def test_unknown_top_level_key(write_recipe):
    assert "unknown key 'step'" in error_of(write_recipe, "name: t\nstep: [{name: a}]\nsteps: [{name: a}]\n")


@pytest.mark.parametrize("setting, fragment", [
    ("optim: {lr_per_256: -0.1}", "optim.lr_per_256 = -0.1"),
    ("label_smoothing: {eps: 1.0}", "label_smoothing.eps = 1.0"),
    ("label_smoothing: {eps: -0.1}", "label_smoothing.eps = -0.1"),
    ("mixup: {alpha: 0}", "mixup.alpha = 0"),
    ("schedule: {epochs: ten}", "schedule.epochs = 'ten'"),
    ("schedule: {kind: linear}", "schedule.kind = 'linear'"),
    ("efficient: {precision: fp8}", "efficient.precision = 'fp8'"),
    ("optim: {lr_per_256: .inf}", "optim.lr_per_256 = inf: Input should be a finite number"),
    ("mixup: {alpha: .inf}", "mixup.alpha = inf: Input should be a finite number"),
    ("optim: {weight_decay: .nan}", "optim.weight_decay = nan: Input should be a finite number"),
    ("schedule: {epochs: 1000000000000}", "schedule.epochs = 1000000000000: Input should be less than or equal to 100000"),
    ("data: {global_batch_size: 10000000000}", "data.global_batch_size = 10000000000: Input should be less than or equal"),
    ("runtime: {threads: 100000}", "runtime.threads = 100000: Input should be 'auto'; or Input should be less than or equal to 1024"),
])
def test_wrong_type_or_out_of_range_names_key_and_value(write_recipe, setting, fragment):
    msg = error_of(write_recipe, f"name: t\nbase: {{{setting}}}\nsteps: [{{name: a}}]\n")
    assert fragment in msg


def test_distill_temperature_must_be_positive(write_recipe):
    msg = error_of(write_recipe, """
        name: t
        teachers: [{name: big}]
        steps: [{name: a, set: {distill: {teacher: big, temperature: 0}}}]
    """)
    assert "distill.temperature = 0" in msg


def test_distill_needs_a_known_teacher(write_recipe):
    msg = error_of(write_recipe, "name: t\nsteps: [{name: a, set: {distill: {teacher: nobody}}}]\n")
    assert "'nobody' is not a teacher" in msg


def test_parent_must_be_an_earlier_step(write_recipe):
    msg = error_of(write_recipe, "name: t\nsteps: [{name: a, parent: b}, {name: b}]\n")
    assert "parent 'b'" in msg


def test_duplicate_step_names(write_recipe):
    assert "duplicate step name 'a'" in error_of(write_recipe, "name: t\nsteps: [{name: a}, {name: a}]\n")


def test_malformed_yaml_names_the_line(write_recipe):
    msg = error_of(write_recipe, "name: t\nsteps: [{name: a}\nbase: {\n")
    assert "malformed YAML" in msg and "line" in msg


def test_inconsistent_schedule(write_recipe):
    msg = error_of(write_recipe, "name: t\nbase: {schedule: {epochs: 10, milestones: [5, 20]}}\nsteps: [{name: a}]\n")
    assert "milestones" in msg


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_env_interpolation(write_recipe, monkeypatch):
    monkeypatch.setenv("BENCH_TEST_ROOT", "/data/x")
    recipe = load_recipe(write_recipe("name: t\nbase: {data: {root: '${oc.env:BENCH_TEST_ROOT}'}}\nsteps: [{name: a}]\n"))
    assert resolve_step(recipe, "resnet18d", "a").data.root == "/data/x"


# ---- --set ----------------------------------------------------------------------------------------

def test_set_parses_yaml_values_and_checks_the_path():
    assert parse_override("schedule.epochs=5") == ("schedule.epochs", 5)
    assert parse_override("label_smoothing=null") == ("label_smoothing", None)
    assert parse_override("model.kwargs.channels=[8, 16]") == ("model.kwargs.channels", [8, 16])
    with pytest.raises(ConfigError, match="unknown key 'epoch'.*did you mean 'epochs'"):
        parse_override("schedule.epoch=5")
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_override("schedule.epochs")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        parse_override("seed.x=1")


def test_set_applies_to_every_run_but_leaves_off_tricks_off(write_recipe):
    recipe = load_recipe(write_recipe())
    overrides = (parse_override("schedule.epochs=4"), parse_override("label_smoothing.eps=0.2"))
    specs = plan(recipe, overrides=overrides)
    by_step = {s.step: s.config for s in specs}
    assert all(s.config.schedule.epochs == 4 for s in specs)
    assert by_step["efficient"].label_smoothing is None
    assert by_step["label_smoothing"].label_smoothing.eps == 0.2


def test_set_with_a_bad_value_is_reported_as_set(write_recipe):
    recipe = load_recipe(write_recipe())
    with pytest.raises(ConfigError, match=r"with --set: schedule.epochs = -1"):
        plan(recipe, overrides=(parse_override("schedule.epochs=-1"),))


def test_apply_override_does_not_mutate_its_input():
    raw = {"schedule": {"epochs": 3}}
    assert apply_override(raw, "schedule.epochs", 9) == {"schedule": {"epochs": 9}}
    assert raw == {"schedule": {"epochs": 3}}


def test_only_rejects_unknown_steps(write_recipe):
    with pytest.raises(ConfigError, match="--only nope: no such step.*efficient"):
        plan(load_recipe(write_recipe()), only=["nope"])


def test_plan_orders_teachers_first_and_names_run_dirs(write_recipe):
    specs = plan(load_recipe(write_recipe()), seeds=[0, 1])
    assert [s.role for s in specs[:2]] == ["teacher", "teacher"]
    assert str(specs[0].path) == "teachers/teacher/seed0"
    students = [str(s.path) for s in specs if s.role == "student"]
    assert students[:2] == ["resnet18d/01-efficient/seed0", "resnet18d/02-cosine/seed0"]
    mixup = next(s for s in specs if s.step == "mixup")
    assert mixup.parent_step == "label_smoothing"
    only = plan(load_recipe(write_recipe()), only=["distill"])
    assert [s.step for s in only] == ["teacher", "distill"]


def test_smoke_shrinks_epochs_and_batches(tiny_cfg):
    cfg = smoke_config(RunConfig.model_validate({"schedule": {"epochs": 120, "warmup_epochs": 5, "milestones": [30, 60, 90]}}))
    assert cfg.schedule.epochs == 2 and cfg.schedule.warmup_epochs == 1
    assert cfg.schedule.milestones == [0.5, 1, 1.5] and cfg.data.max_train_batches == 3
    RunConfig.model_validate(cfg.model_dump())  # still a valid config


def test_what_set_says_takes_effect_under_smoke_and_seed_belongs_to_the_command_line(write_recipe):
    """--smoke shrinks what the user did not set: --set schedule.epochs=3 trains 3 epochs (of 3
    batches), where it used to train 2 and say nothing."""
    recipe = load_recipe(write_recipe())
    overrides = (parse_override("schedule.epochs=3"), parse_override("data.global_batch_size=32"))
    for spec in plan(recipe, smoke=True, overrides=overrides):
        assert spec.config.schedule.epochs == 3 and spec.config.data.global_batch_size == 32
        assert spec.config.data.max_train_batches == 3           # the rest still shrinks
    plain = plan(recipe, smoke=True)
    assert {s.config.schedule.epochs for s in plain} == {2}
    with pytest.raises(ConfigError, match=r"^--set seed: a run's seed comes from --seeds"):
        parse_override("seed=7")


def test_a_recipe_extends_another_and_changes_only_its_keys(write_recipe):
    write_recipe("""
        name: parent
        seeds: [0, 1]
        base:
          data: {dataset: digits, global_batch_size: 64}
          schedule: {kind: step, epochs: 4, milestones: [2]}
        steps:
          - name: efficient
          - name: cosine
            set: {schedule: {kind: cosine}}
        """, name="parent.yaml")
    child = write_recipe("""
        extends: parent.yaml
        name: child
        base:
          data: {global_batch_size: 32}
        """, name="child.yaml")
    recipe = load_recipe(child)
    assert recipe.name == "child" and recipe.seeds == [0, 1] and [s.name for s in recipe.steps] == ["efficient", "cosine"]
    cfg = resolve_step(recipe, model_names(recipe)[0], "cosine")
    assert cfg.data.global_batch_size == 32 and cfg.data.dataset == "digits"   # mappings merge key by key
    assert cfg.schedule.kind == "cosine" and cfg.schedule.milestones == [2]

    lists = write_recipe("extends: parent.yaml\nname: one\nseeds: [5]\nsteps: [{name: efficient}]\n", name="lists.yaml")
    replaced = load_recipe(lists)
    assert replaced.seeds == [5] and [s.name for s in replaced.steps] == ["efficient"]   # lists are replaced whole


@pytest.mark.parametrize("text, expected", [
    ("extends: missing.yaml\nname: x\n", "extends = 'missing.yaml': no such recipe file"),
    ("extends: [a.yaml]\nname: x\n", "expected the path of another recipe file"),
    ("extends: loop.yaml\nname: x\n", "in a cycle (recipe.yaml -> loop.yaml -> recipe.yaml)"),
])
def test_bad_extends_is_a_one_line_error(write_recipe, text, expected):
    write_recipe("extends: recipe.yaml\nname: loop\n", name="loop.yaml")
    path = write_recipe(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert "\n" not in str(info.value) and expected in str(info.value)


def test_the_shipped_recipes_that_extend_resolve_like_their_parent_but_for_the_data():
    parent = load_recipe(ROOT / "recipes" / "cifar10-table6.yaml")
    for name, dataset in (("cifar100-table6", "cifar100"), ("fashion-mnist-table6", "fashion_mnist")):
        child = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        assert child.name == name and [t.name for t in child.teachers] == [t.name for t in parent.teachers]
        for step in parent.steps:
            a, b = resolve_step(parent, "resnet18d", step.name), resolve_step(child, "resnet18d", step.name)
            assert b.data.dataset == dataset
            assert a.model_copy(update={"data": b.data}) == b


def test_models_filter_runs_the_named_columns_and_their_teachers():
    recipe = load_recipe(ROOT / "recipes" / "table6.yaml")
    specs = plan(recipe, models=["mobilenet"])
    students = [s for s in specs if s.role == "student"]
    assert {s.model for s in students} == {"mobilenet"} and len(students) == len(recipe.steps)
    assert {s.config.model.name for s in students} == {"mobilenetv1_100"}
    assert [s.step for s in specs if s.role == "teacher"] == [t.name for t in recipe.teachers]
    with pytest.raises(ConfigError, match="--models resnet50: no such model"):
        plan(recipe, models=["resnet50"])


def test_resolving_a_recipe_merges_each_step_once_linear_in_its_steps(write_recipe, monkeypatch):
    """Each step's settings merge onto its parent's once (walking each step's chain anew made
    planning quadratic: 8 s for 1,000 steps). Counted, not timed."""
    import bench.config.recipe as recipe_mod
    calls = []
    real = recipe_mod.deep_merge
    monkeypatch.setattr(recipe_mod, "deep_merge", lambda a, b: calls.append(1) or real(a, b))

    def merges(n: int) -> int:
        steps = "\n".join(f"  - name: s{i}\n    set: {{optim: {{weight_decay: {1e-4 * (1 + i % 7):.6f}}}}}" for i in range(n))
        calls.clear()
        plan(load_recipe(write_recipe(f"name: big\nbase:\n  model: {{name: resnet18d}}\nsteps:\n{steps}\n", f"r{n}.yaml")))
        return len(calls)
    small, large = merges(50), merges(200)
    assert large <= 4.2 * small


def test_a_name_longer_than_a_path_component_should_be_is_refused(write_recipe):
    long = "s" * 101
    with pytest.raises(ConfigError, match=r"String should have at most 100 characters"):
        load_recipe(write_recipe(f"name: tiny\nbase: {{model: {{name: resnet18d}}}}\nsteps:\n  - name: {long}\n"))
    load_recipe(write_recipe(f"name: tiny\nbase: {{model: {{name: resnet18d}}}}\nsteps:\n  - name: {long[:100]}\n"))
