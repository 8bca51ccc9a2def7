"""Property-based tests: whatever bytes, YAML documents, `--set` strings or run-directory states
come in, the command ends in success or exit status 2 with one line on stderr: never a traceback,
never a hang. Fixed examples (derandomized) so CI sees the same cases every time."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.ablation import plan, run_ablation
from bench.cli import main
from bench.config import load_recipe, parse_override
from bench.errors import BenchError
from bench.runs import RunDir

from conftest import TINY_RECIPE

FAST = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KEYS = ["name", "base", "steps", "seeds", "teachers", "models", "model", "data", "schedule", "set", "parent",
        "epochs", "mixup", "alpha", "extends", "kwargs", "wandb", "paper_table", "runtime", "${oc.env:HOME}", "a"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(KEYS), st.sampled_from(["${oc.env:NOPE}", "${a.b}", "~", "[1,"]))
TREES = st.recursive(SCALARS, lambda children: st.one_of(st.lists(children, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), children, max_size=4)),
                     max_leaves=30)


def one_line_or_nothing(err: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) <= 1, err
    assert not lines or lines[0].startswith("error: "), err


def check_loader(path: Path) -> None:
    """load_recipe either returns a recipe or raises a one-line BenchError."""
    try:
        load_recipe(path)
    except BenchError as err:
        assert "\n" not in str(err), str(err)


@FAST
@given(data=st.binary(max_size=2000))
def test_random_bytes_as_a_recipe(data, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    check_loader(path)


@FAST
@given(tree=TREES, style=st.sampled_from([None, True, False]))
def test_random_yaml_documents_as_a_recipe(tree, style, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree, default_flow_style=style, allow_unicode=True))
    check_loader(path)


@FAST
@given(extra=st.dictionaries(st.sampled_from(KEYS), TREES, max_size=3), step=TREES)
def test_a_valid_recipe_with_random_changes(extra, step, tmp_path):
    recipe = yaml.safe_load(TINY_RECIPE)
    recipe["base"].update(extra)
    recipe["steps"].append({"name": "extra", "set": step})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    check_loader(path)


def laughs(levels: int, width: int) -> str:
    """A 'billion laughs' document: each alias level repeats the one before `width` times."""
    lines = ["l0: &l0 [lol]"] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: bomb\nsteps: [{{name: a}}]\nbase: {{kwargs: *l{levels - 1}}}\n"


@pytest.mark.parametrize("text, why", [
    (laughs(10, 10), "expands to more than 100,000 values"),   # 10^9 values from 1 KB
    (laughs(30, 2), "expands to more than 100,000 values"),
    ("name: x\nsteps: &s [{name: a, set: *s}]\n", "a YAML alias refers to a mapping or list that contains it"),
    ("name: x\nsteps: [{name: a}]\nbase: " + "[" * 5000 + "]" * 5000 + "\n", "malformed YAML: nested too deeply"),
    ("name: x\nsteps: [{name: a}]\nbase: {model: " + "{a: " * 200 + "1" + "}" * 201 + "\n", "nested more than 32 levels deep"),
    ("name: x\nsteps: [{name: a}]\nbase: {model: {kwargs: {x: '" + "y" * (2 << 20) + "'}}}\n", "2,097,212 bytes; a recipe file is at most 65,536"),
    ("name: x\nsteps: [{name: a}]\nbase: {model: {kwargs: {x: [" + ",".join(["1"] * 120_000) + "]}}}\n", "a recipe file is at most 65,536"),
    ("name: !!timestamp 2001-13-45\nsteps: []\n", "malformed YAML: month must be in 1..12"),
    ("name: !!int abc\n", "malformed YAML: invalid literal for int()"),
    ("name: !!binary '@@@'\n", "name = b'': String should match pattern"),
    ("name: !!python/object:os.system x\n", "could not determine a constructor for the tag"),
    ("\ufeffname: x\n", "steps: Field required"),
    ("name: x\x00\n", "r.yaml: malformed YAML: unacceptable character #x0000"),   # one colon: no line to name
    ("? [a, b]\n: c\n", "malformed YAML: found unhashable key"),
    ("name: x\nextends: \"a\\0b\"\nsteps: []\n", "extends = 'a\\x00b': expected the path of another recipe file"),
    ("name: x\nextends: [1]\n", "extends = [1]: expected the path of another recipe file"),
], ids=lambda t: t[:30])
def test_recipes_that_expand_beyond_a_sane_size_are_refused(text, why, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(BenchError) as err:
        load_recipe(path)
    assert "\n" not in str(err.value) and why in str(err.value), str(err.value)


OVERRIDE_TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["schedule.epochs", "model.kwargs", "model.kwargs.x", "mixup",
                                                          "optim.lr_per_256.x", "data", "a.b.c", "", "seed"]),
              st.one_of(st.text(max_size=30), TREES.map(lambda t: yaml.safe_dump(t, default_flow_style=True).strip()))),
    st.sampled_from(["model.kwargs=" + "[" * 3000, "model.kwargs=" + laughs(10, 10).replace("\n", ", "),
                     "model.kwargs=&a [*a]", "x\ny=1", "schedule.epochs=!!int x", "=1", "a=", "model.kwargs.x=!!timestamp 2001-13-45"]),
)


@FAST
@given(text=OVERRIDE_TEXT)
def test_random_set_strings_are_parsed_or_refused_in_one_line(text):
    try:
        parse_override(text)
    except BenchError as err:
        assert "\n" not in str(err)


@settings(FAST, max_examples=60)
@given(text=OVERRIDE_TEXT)
def test_random_set_strings_through_the_command_line(text, write_recipe, capsys):
    code = main(["plan", str(write_recipe()), f"--set={text}"])
    captured = capsys.readouterr()
    assert code in (0, 2), captured
    one_line_or_nothing(captured.err)
    assert (code == 2) == bool(captured.err.strip())


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Two finished runs of one epoch (efficient, cosine) and their runs.csv."""
    out = tmp_path_factory.mktemp("fuzz") / "o"
    recipe = tmp_path_factory.getbasetemp() / "fuzz-recipe.yaml"
    recipe.write_text(TINY_RECIPE.replace("epochs: 2, warmup_epochs: 1, milestones: [1]",
                                          "epochs: 1, warmup_epochs: 0, milestones: [1]"))
    run_ablation(plan(load_recipe(recipe), only=["efficient", "cosine"]), out, progress=False, echo=lambda _: None)
    main(["report", str(out), "--no-figures"])
    return out


DAMAGE = st.sampled_from(["keep", "keep", "delete", "truncate", "garbage", "empty"])


@settings(FAST, max_examples=60)
@given(choices=st.lists(DAMAGE, min_size=40, max_size=40), seed=st.integers(0, 2**16))
def test_report_reads_run_directories_in_any_state(choices, seed, results, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("state") / "o"
    shutil.copytree(results, out)
    rng = random.Random(seed)
    files = sorted(p for p in out.rglob("*") if p.is_file() and ".locks" not in p.parts)
    for path, choice in zip(files, choices):
        data = path.read_bytes()
        if choice == "delete":
            path.unlink()
        elif choice == "truncate":
            path.write_bytes(data[:rng.randrange(len(data) + 1)])
        elif choice == "garbage":
            path.write_bytes(rng.randbytes(rng.randrange(1, 200)))
        elif choice == "empty":
            path.write_bytes(b"")
    finals = {p: p.read_bytes() for p in out.rglob(RunDir.FINAL)}
    code = main(["report", str(out), "--no-figures"])
    captured = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in captured.err, captured.err
    lines = captured.err.strip().splitlines()
    skipped = [line for line in lines if line.startswith("skipped ")]
    assert len(skipped) + (code == 2) == len(lines), lines   # one line per skipped file, then the error
    if code == 2:
        assert lines[-1].startswith("error: "), lines
    assert {p: p.read_bytes() for p in out.rglob(RunDir.FINAL)} == finals   # nothing of a run is rewritten


JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=False),
                                     st.text(max_size=8)),
                           lambda children: st.one_of(st.lists(children, max_size=3),
                                                      st.dictionaries(st.text(max_size=4), children, max_size=3)),
                           max_leaves=6)


@settings(FAST, max_examples=12)
@given(values=st.dictionaries(st.sampled_from([*RunDir.RECORD_KEYS, "stack"]), JSON_VALUES, min_size=1, max_size=4))
def test_final_json_values_of_any_type_are_skipped_or_reported_never_a_traceback(values, results, tmp_path_factory,
                                                                                capsys):
    """A final.json that parses, with any JSON in its record keys: report, status and compare
    end in success or one line, never a traceback."""
    import json
    out = tmp_path_factory.mktemp("types") / "o"
    shutil.copytree(results, out)
    final = sorted(out.rglob(RunDir.FINAL))[-1]
    final.write_text(json.dumps({**json.loads(final.read_text()), **values}))
    (out / "runs.csv").unlink()
    for argv in (["report", str(out), "--no-figures"], ["status", str(out)], ["compare", str(results), str(out)]):
        code = main(argv)
        captured = capsys.readouterr()
        assert code in (0, 1, 2) and "Traceback" not in captured.err, (argv, captured.err)
        errors = [line for line in captured.err.strip().splitlines() if not line.startswith("skipped ")]
        assert len(errors) <= 1, errors


WORDS = st.one_of(st.text(max_size=12), st.sampled_from(["efficient", "cosine", "resnet18d", "-1", "0", "2**32",
                                                         "4294967296", "1e9", "x" * 300, "a/b", "..", "\x00"]))
SEEDS = st.lists(st.one_of(st.integers(-2**70, 2**70), st.sampled_from(["nan", "1.5", "0x10", ""])).map(str),
                 min_size=1, max_size=3)


@settings(FAST, max_examples=60)
@given(seeds=st.none() | SEEDS, only=st.none() | st.lists(WORDS, min_size=1, max_size=2),
       models=st.none() | st.lists(WORDS, min_size=1, max_size=2), out=st.none() | WORDS,
       sets=st.lists(OVERRIDE_TEXT, max_size=2))
def test_random_plan_command_lines(seeds, only, models, out, sets, write_recipe, tmp_path, capsys):
    """`plan` with any seeds (beyond what an RNG takes), step and model names (unknown, too
    long, with a slash or a NUL), results folders and overrides: a plan, or one line."""
    argv = ["plan", str(write_recipe())]
    for flag, values in (("--seeds", seeds), ("--only", only), ("--models", models)):
        if values is not None:
            argv += [flag, *values]
    if out is not None:
        argv += ["--out", str(tmp_path / out) if "\x00" not in out else out]
    argv += [f"--set={s}" for s in sets]
    capsys.readouterr()   # one example's output only
    try:
        code = main(argv)
    except SystemExit as stop:   # argparse's usage error: its own two lines, exit 2
        assert stop.code == 2
        return
    captured = capsys.readouterr()
    assert code in (0, 2), captured
    one_line_or_nothing(captured.err)


@settings(FAST, max_examples=40)
@given(command=st.sampled_from(["status", "report", "compare"]), names=st.lists(WORDS, min_size=1, max_size=2))
def test_random_folders_given_to_status_report_and_compare(command, names, results, tmp_path, capsys):
    """A folder that is missing, a file, a run directory, a name too long or with a NUL: the
    command succeeds or says what is wrong in one line."""
    (tmp_path / "a-file").write_text("x")
    pool = {"a-file": tmp_path / "a-file", "results": results, "run": results / "resnet18d" / "01-efficient" / "seed0"}
    paths = [str(pool.get(n, tmp_path / n)) if "\x00" not in n else n for n in names]
    argv = [command, *(paths * 2 if command == "compare" and len(paths) == 1 else paths)][:3]
    capsys.readouterr()
    try:
        code = main(argv + (["--no-figures"] if command == "report" else []))
    except SystemExit as stop:
        assert stop.code == 2
        return
    captured = capsys.readouterr()
    assert code in (0, 2), captured
    one_line_or_nothing(captured.err)
