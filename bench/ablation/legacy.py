"""Students recorded before a run's identity included its teacher's: their final.json has no
`teacher_hash`, so they count as runs of another config until their teacher is known."""
from __future__ import annotations

from pathlib import Path

from bench.ablation.plan import RunSpec
from bench.runs import RunDir, write_json


def adopt_teachers(specs: list[RunSpec], out: Path) -> list[Path]:
    """Write `teacher_hash` into the final.json of each finished student that distils from a
    trained teacher and has none, when that teacher's run in `out` is finished under the config
    the recipe plans for it; returns the students' paths.

    Only for results whose students are known to have been distilled from the teacher runs beside
    them (nothing in the files can tell: that is why the identity is recorded now). Students of a
    teacher given as weights are never adopted, since the file may have changed since.
    """
    adopted = []
    for spec in specs:
        if spec.teacher_path is None or spec.teacher_hash is None:
            continue
        rd, teacher = RunDir(Path(out) / spec.path), RunDir(Path(out) / spec.teacher_path).read_final()
        final = rd.read_final()
        if final is None or "teacher_hash" in final or final.get("config_hash") != spec.config.config_hash():
            continue
        if teacher is None or teacher.get("config_hash") != spec.teacher_hash:
            continue
        write_json(rd / RunDir.FINAL, {**final, "teacher_hash": spec.teacher_hash})
        adopted.append(spec.path)
    return adopted
