"""The paper's models with their parameter counts and multiply-adds, counted on the meta device."""
from __future__ import annotations

from bench.config import ModelConfig
from bench.engine.models import measure_model

# (name in recipes, the paper's name, input size in px, the paper's GFLOPs where Table 5 gives one)
PAPER_MODELS = [
    ("resnet50_v1", "ResNet-50", 224, 3.8),
    ("resnet50", "ResNet-50-B", 224, 4.1),
    ("resnet50c", "ResNet-50-C", 224, 4.3),
    ("resnet50d", "ResNet-50-D", 224, 4.3),
    ("inception_v3", "Inception-V3", 299, None),
    ("mobilenetv1_100", "MobileNet", 224, None),
    ("resnet152d", "ResNet-152-D (teacher)", 224, None),
]


def models_table(names: list[str] | None = None, image_size: int | None = None) -> str:
    """A markdown table of the paper's models (or `names`), with Table 5's GFLOPs beside ours."""
    rows = [(n, p, s, g) for n, p, s, g in PAPER_MODELS if not names or n in names]
    known = {n for n, *_ in PAPER_MODELS}
    rows += [(n, "", 224, None) for n in names or () if n not in known]
    lines = ["| model | paper name | input (px) | params (M) | GFLOPs (multiply-adds) | paper GFLOPs |",
             "|---|---|---|---|---|---|"]
    for name, paper, size, paper_gflops in rows:
        size = image_size or size
        m = measure_model(ModelConfig(name=name), size)
        lines.append(f"| {name} | {paper} | {size} | {m['params_m']:.1f} | {m['gflops']:.2f} | "
                     f"{paper_gflops if paper_gflops is not None else ''} |")
    return "\n".join(lines)
