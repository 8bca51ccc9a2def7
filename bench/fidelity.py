"""docs/fidelity.md: each setting of Table 6 as the paper states it, as GluonCV (the paper's code)
sets it, and as the recipes resolve it, read from the planned runs so the page cannot drift."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.ablation import RunSpec, plan
from bench.ablation.preview import TABLE3, CostModel, plan_table, plan_totals, table3_rates
from bench.config import ModelConfig, RunConfig, load_recipe
from bench.config.datasets import DATASETS
from bench.engine.models import family
from bench.report.frames import load_paper
from bench.runs import write_text

TRAIN = "train_imagenet.py"     # GluonCV's scripts/classification/imagenet/train_imagenet.py
REC = "--use-rec"               # the record-file path of train_imagenet.py, which the published commands use
ZOO = "model zoo command"       # GluonCV's published training command for ResNet50_v1d (mixup row)
RECIPES = ("recipes/table6.yaml",)
ROOT = Path(__file__).resolve().parents[1]   # the repository: recipes/ and docs/
WHO = {"paper": "the paper", "gluoncv": "GluonCV", "neither": "neither"}   # whom a `Setting` follows


@dataclass(frozen=True)
class Setting:
    """One row of the page. `ours` reads the recipes' value from the planned runs; `plan_column`
    names the `plan` column that shows the same value (a test checks that they agree)."""

    name: str
    paper: str
    gluoncv: str
    ours: Callable[[Sequence[RunSpec]], str]
    follows: str = "both"           # "both": paper and GluonCV agree; else a key of WHO
    why: str = ""                   # where they disagree: why this one, and the key that switches
    plan_column: Optional[str] = None


def _values(specs: Iterable[RunSpec], read: Callable[[RunConfig], object]) -> str:
    return " / ".join(dict.fromkeys(str(read(s.config)) for s in specs))


def _runs(step: Optional[str] = None, model: Optional[str] = None, role: str = "student"):
    def pick(specs: Sequence[RunSpec]) -> list[RunSpec]:
        return [s for s in specs if s.role == role and (step is None or s.step == step)
                and (model is None or s.model == model)]
    return pick


def _of(pick, read: Callable[[RunConfig], object]) -> Callable[[Sequence[RunSpec]], str]:
    return lambda specs: _values(pick(specs), read)


ALL = _runs()
EFFICIENT = _runs("efficient")
LS = _runs("label_smoothing")
DISTILL = _runs("distill")
MIXUP = _runs("mixup")
TEACHERS = _runs(role="teacher")

SETTINGS = [
    Setting("global batch", "1024 = 8 GPUs × 128 (Section 3.1, Table 3)", f"{ZOO}: --batch-size 128 --num-gpus 8",
            _of(ALL, lambda c: c.data.global_batch_size), plan_column="global_batch"),
    Setting("BatchNorm batch", "128 per GPU (8 × 128)", "per-device BatchNorm: 128",
            _of(ALL, lambda c: c.efficient.bn_batch_size), plan_column="bn_batch"),
    Setting("peak learning rate", "0.1 × batch / 256 = 0.4 (Section 3.1, linear scaling)", f"{ZOO}: --lr 0.4",
            _of(ALL, lambda c: f"{c.peak_lr():g} (optim.lr_per_256 = {c.optim.lr_per_256:g})"), plan_column="peak_lr"),
    Setting("warmup", "5 epochs, linear from 0, per iteration (Section 3.1)",
            f"{ZOO}: --warmup-epochs 5; {TRAIN}: LRScheduler('linear', base_lr=0)",
            _of(ALL, lambda c: f"{c.schedule.warmup_epochs} epochs"), plan_column="warmup_epochs"),
    Setting("epochs", "120; 200 with mixup (Section 5.4)", f"{ZOO}: --num-epochs 120 / 200 (mixup)",
            lambda s: f"{_values(EFFICIENT(s), lambda c: c.schedule.epochs)}; "
                      f"{_values(MIXUP(s), lambda c: c.schedule.epochs)} with mixup", plan_column="epochs"),
    Setting("step decay (efficient row)", "lr ÷ 10 at epochs 30, 60, 90 (Section 2.1)",
            f"{TRAIN}: --lr-mode step --lr-decay 0.1 --lr-decay-epoch (its default: 40,60)",
            _of(EFFICIENT, lambda c: f"÷ {1 / c.schedule.gamma:g} at {', '.join(map(str, c.schedule.milestones))}")),
    Setting("cosine decay", "½(1 + cos(tπ/T))·η per iteration after warmup, to 0 (Section 5.1)",
            f"{ZOO}: --lr-mode cosine; {TRAIN}: target_lr=0",
            _of(_runs("cosine"), lambda c: f"schedule.kind = {c.schedule.kind}")),
    Setting("optimizer", "Nesterov accelerated gradient (Section 2.1)", f"{TRAIN}: optimizer 'nag'",
            _of(ALL, lambda c: f"sgd, nesterov = {str(c.optim.nesterov).lower()}")),
    Setting("momentum, weight decay", "(not stated)", f"{TRAIN}: --momentum 0.9, --wd 0.0001",
            _of(ALL, lambda c: f"momentum {c.optim.momentum:g}, weight decay {c.optim.weight_decay:g}"), follows="gluoncv",
            why="the paper does not state them, and GluonCV's values produced its numbers; `optim.momentum` and "
                "`optim.weight_decay` set others"),
    Setting("weight initialisation", "Xavier: U[−a, a], a = √(6 / (fan_in + fan_out)) for convolutions and the "
            "classifier, biases 0, BatchNorm γ = 1, β = 0 (Section 2.1)", f"{TRAIN}: net.initialize(mx.init.MSRAPrelu())",
            _of(ALL, lambda c: f"model.init = {c.model.init}"), follows="neither",
            why="the models are timm's and keep timm's initialisation (Kaiming-normal convolutions for the ResNets); "
                "`model.init: xavier` gives the paper's, `model.init: msra_prelu` GluonCV's"),
    Setting("zero γ", "γ = 0 in the last BN of every residual block (Section 3.1)", f"{ZOO}: --last-gamma",
            _of(ALL, lambda c: f"efficient.zero_gamma = {str(c.efficient.zero_gamma).lower()}")),
    Setting("no bias decay", "no weight decay on biases, BN γ and β (Section 3.1)",
            f"{ZOO}: --no-wd ('.*beta|.*gamma|.*bias' get wd_mult 0)",
            _of(ALL, lambda c: f"efficient.no_bias_decay = {str(c.efficient.no_bias_decay).lower()}")),
    Setting("precision", "FP16 parameters, activations and gradients, an FP32 copy of the parameters for the "
            "update, and a scalar on the loss (Section 3.1, Table 3)",
            f"{ZOO}: --dtype float16: net.cast('float16'), SGD multi_precision (FP32 master weights); no loss scaling",
            _of(ALL, lambda c: f"{c.efficient.precision} autocast, FP32 weights, dynamic loss scale"
                if c.efficient.precision == "fp16" else f"{c.efficient.precision}"), follows="neither",
            plan_column="precision",
            why="PyTorch's automatic mixed precision, not a network cast to FP16: the weights stay FP32 (the "
                "master copy), convolutions and matrix products run in FP16, and the ops autocast keeps in FP32 "
                "(BatchNorm, softmax, the losses) stay there; the gradient scaler is the paper's scalar on the loss, "
                "adjusted as training runs (GluonCV scales no loss). A whole-network cast is not offered (autocast is PyTorch's supported "
                "path to it); `efficient.precision` chooses fp16, bf16 or fp32"),
    Setting("train crop", "random area 8–100 %, aspect 3/4–4/3, resized to 224 (Section 2.1)",
            f"{TRAIN}: RandomResizedCrop(input_size)",
            _of(ALL, lambda c: f"area {c.data.crop_scale[0]:g}–{c.data.crop_scale[1]:g}, aspect "
                               f"{c.data.crop_ratio[0]:.3g}–{c.data.crop_ratio[1]:.3g}")),
    Setting("flip", "horizontal, p = 0.5 (Section 2.1)", f"{TRAIN}: RandomFlipLeftRight()",
            _of(ALL, lambda c: f"data.hflip = {str(c.data.hflip).lower()}")),
    Setting("colour jitter", "hue, saturation, brightness × U[0.6, 1.4] (Section 2.1)",
            f"{TRAIN}: RandomColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)",
            _of(ALL, lambda c: f"j = {c.data.color_jitter:g}, "
                               + ("brightness, saturation, hue" if c.data.color_jitter_hue else "brightness, contrast, saturation")),
            follows="gluoncv",
            why="GluonCV's code produced the published numbers, and 'scaling' a hue angle has no single meaning; "
                "`data.color_jitter_hue: true` gives the paper's brightness, saturation and hue (hue rotated by "
                "U[−jπ, jπ], as MXNet's HueJitterAug)"),
    Setting("PCA lighting", "coefficients from N(0, 0.1) (Section 2.1)", f"{TRAIN}: RandomLighting(0.1)",
            _of(ALL, lambda c: f"data.lighting_std = {c.data.lighting_std:g}")),
    Setting("normalisation", "subtract 123.68, 116.779, 103.939, divide by 58.393, 57.12, 57.375 (Section 2.1): "
            "0.485, 0.458, 0.408 and 0.229, 0.224, 0.225 of 255",
            f"{ZOO}: {REC}, whose ImageRecordIter subtracts mean_r/g/b 123.68, 116.779, 103.939 and divides by "
            "std_r/g/b 58.393, 57.12, 57.375 (the paper's); its folder path's Normalize([0.485, 0.456, 0.406], "
            "[0.229, 0.224, 0.225]) is not the published one", _of(ALL, lambda c: f"data.normalize = {c.data.normalize}"),
            follows="both"),
    Setting("evaluation", "shorter side 256, center crop 224; Inception-V3 342 / 299 (Section 2.1)",
            f"{TRAIN}: Resize(ceil(input_size / 0.875)), CenterCrop(input_size); --input-size 299 for Inception-V3",
            lambda s: "; ".join(f"{m}: {_values(_runs('efficient', m)(s), lambda c: f'{c.data.eval_resize} / {c.data.image_size}')}"
                                for m in dict.fromkeys(x.model for x in EFFICIENT(s)))),
    Setting("ResNet-50-D", "Figure 2c (C + average pool on the shortcut)", "model_zoo/resnetv1b.py: resnet50_v1d",
            _of(_runs("efficient", "resnet50d"), lambda c: f"timm {c.model.name}")),
    Setting("Inception-V3 head", "(the paper's code)", "model_zoo/inception.py: Dropout(0.5) before the classifier",
            _of(_runs("efficient", "inception_v3"), lambda c: f"timm {c.model.name}, drop_rate {c.model.kwargs.get('drop_rate', 0)}")),
    Setting("MobileNet activation", "(the paper's code)", "model_zoo/mobilenet.py: MobileNet 1.0, ReLU (not ReLU6)",
            _of(_runs("efficient", "mobilenet"), lambda c: f"timm {c.model.name}, act_layer {c.model.kwargs.get('act_layer', 'relu6')}")),
    Setting("label smoothing", "ε = 0.1; q = 1 − ε on the true class, ε/(K − 1) elsewhere (Eq. 3)",
            f"{TRAIN}: smooth(eta=0.1): 1 − ε + ε/K and ε/K",
            _of(LS, lambda c: f"{c.label_smoothing.form} form, ε = {c.label_smoothing.eps:g}"), follows="paper",
            why="the paper's formula, as written; at K = 1000 and ε = 0.1 the true class's target differs by ε/K = 1e-4 "
                "and every other class's by 1e-7 (the paper's ε is GluonCV's ε·K/(K − 1)); "
                "`label_smoothing.form: uniform` gives GluonCV's"),
    Setting("distillation loss", "ℓ(p, softmax(z)) + T²·ℓ(softmax(r/T), softmax(z/T)) (Eq. 6)",
            "loss.py DistillationSoftmaxCrossEntropyLoss, --hard-weight 0.5: 0.5·hard + 0.5·T²·soft (code written "
            "after the paper: not what produced its numbers)",
            _of(DISTILL, lambda c: "Eq. 6" if c.distill.hard_weight is None else f"hard_weight {c.distill.hard_weight:g}"),
            follows="paper",
            why="Eq. 6 as written; GluonCV's distillation code came after the paper, and its loss is Eq. 6 halved, "
                "which under SGD halves the step against weight decay; `distill.hard_weight: 0.5` gives GluonCV's"),
    Setting("temperature", "T = 20 (Section 5.3)", f"{TRAIN}: --temperature 20",
            _of(DISTILL, lambda c: f"T = {c.distill.temperature:g}")),
    Setting("teacher", "ResNet-152-D with cosine decay and label smoothing (Section 5.3); with mixup for the "
            "last row (Section 5.4)", f"{TRAIN}: --teacher resnet152_v1d, the model zoo's weights, which were trained "
            "with mixup: the same teacher for both rows",
            _of(TEACHERS, lambda c: f"{c.model.name}: {c.schedule.kind}, ε = {c.label_smoothing.eps:g}"
                                    + (f", mixup α = {c.mixup.alpha:g}, {c.schedule.epochs} epochs" if c.mixup else "")),
            follows="paper",
            why="the paper's distillation row has a teacher without mixup and its last row one with it; GluonCV's "
                "`--teacher resnet152_v1d` loads the mixup-trained weights for both; `teachers:` and each step's "
                "`distill.teacher` choose"),
    Setting("teacher training", "(not stated: ResNet-152-D's batch, learning rate, precision and epochs)",
            "the model zoo's resnet152_v1d commands: batch 512, lr 0.2, fp32, 120 epochs (80.26 % top-1); with mixup "
            "batch 256, lr 0.1, fp32, 200 epochs (80.61 %)",
            _of(TEACHERS, lambda c: f"batch {c.data.global_batch_size}, peak lr {c.peak_lr():g}, {c.efficient.precision}, "
                                    f"{c.schedule.epochs} epochs"), follows="neither",
            why="the teachers train here with the students' batch, learning rate and precision, and the schedule "
                "and tricks the paper gives them, so that a teacher differs from its students only where the paper "
                "says; GluonCV's published teachers used batch 512 (256 with mixup), lr 0.2 (0.1) and fp32; "
                "`teachers:` in the recipe sets them"),
    Setting("teacher's input", "the student's images (mixed, with mixup)",
            f"{TRAIN}: teacher(X) on the student's batch, 299 px for Inception-V3",
            lambda s: f"teachers trained at {_values(TEACHERS(s), lambda c: c.data.image_size)} px; "
                      f"students feed theirs ({_values(DISTILL(s), lambda c: c.data.image_size)} px)"),
    Setting("mixup", "α = 0.2, one λ ~ Beta(α, α) per batch, mixed targets (Section 5.4)",
            f"{TRAIN}: --mixup-alpha 0.2, each batch with its reverse, --mixup-off-epoch 0",
            _of(MIXUP, lambda c: f"α = {c.mixup.alpha:g}, random pairs, mixup.off_epochs = {c.mixup.off_epochs}")),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def fidelity_markdown(specs: Sequence[RunSpec]) -> str:
    """The page: a table of every setting, then what the recipes follow where the two sources differ."""
    lines = ["# Fidelity: the paper, its code and these recipes", "",
             "<!-- generated by `python run_ablation.py fidelity` from recipes/table6.yaml; do not edit -->", "",
             "Every setting of Table 6 as the paper states it (He et al. 2019, arXiv:1812.01187), as GluonCV sets it "
             f"(the paper's code: `scripts/classification/imagenet/{TRAIN}`, its model zoo and loss), and as "
             "`recipes/table6.yaml` resolves it (read from the planned runs; `python run_ablation.py plan "
             "recipes/table6.yaml` shows them run by run). The page is regenerated from the recipes, and a test "
             "fails when a recipe changes and the page does not.", "",
             "| setting | paper | GluonCV | recipes | follows |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(x) for x in (s.name, s.paper, s.gluoncv, s.ours(specs), s.follows)) + " |"
              for s in SETTINGS]
    lines += ["", "## Where the recipes part from the paper or GluonCV", ""]
    lines += [f"- **{s.name}** — the recipes follow {WHO[s.follows]}: {s.why}." for s in SETTINGS if s.follows != "both"]
    lines += ["- **mixup pairs** — the paper pairs random examples, GluonCV a shuffled batch with its own reverse "
              "(also a random pairing, each pair mixed both ways); the recipes draw a random permutation.", ""]
    return "\n".join(lines + _plan_section(specs))


def _plan_section(specs: Sequence[RunSpec]) -> list[str]:
    """What Table 6 costs, with the arithmetic: the paper's Table 3 rates per V100, scaled by FLOPs."""
    rates = table3_rates(load_paper("table3"))
    table, costs = plan_table(specs, rates), CostModel(rates)
    totals = plan_totals(table)
    if totals["runs_without_estimate"]:
        return ["## plan: what Table 6 costs", "", f"The paper's Table 3 gives no rate for {totals['runs_without_estimate']} "
                "of these runs (it times FP16 and FP32 on V100s); `python run_ablation.py plan recipes/table6.yaml "
                "--bench JSON` prices them from a rate measured by `bench`.", ""]
    fp16 = [r for r in rates if r.precision == "fp16"]
    flops = lambda model, size: costs.gflops(model, size)

    def rate(model: ModelConfig, size: int) -> tuple[float, str]:
        """As `CostModel`: the rate of its family whose FLOPs are nearest, scaled by FLOPs."""
        g = flops(model, size)
        ref = min((r for r in fp16 if family(r.model) == family(model.name)),
                  key=lambda r: abs(math.log(g / flops(ModelConfig(name=r.model), r.image_size))))
        g_ref = flops(ModelConfig(name=ref.model), ref.image_size)
        return ref.images_per_s * g_ref / g, f"{ref.images_per_s:.1f} × {g_ref:.2f} / {g:.2f}"

    lines = ["## plan: what Table 6 costs", "",
             "`plan` prints every run of a recipe in launch order, before anything is trained or written: the step "
             "it builds on, what it changes, its model, crop, global and BatchNorm batch, peak lr, warmup, epochs, "
             "schedule, precision, smoothing, mixing and teacher, the training images it processes, and its "
             "images/s and device-hours from a rate: one `bench` measured (`--bench JSON`) or the paper's own "
             "(`--paper-times`), each scaled by FLOPs to the other models of its family, with the teacher's "
             "forward pass added to every distillation run; a list under the table says which rate each run used. "
             "`--format csv` gives the same rows for pandas; `--set`, `--only`, `--models` and `--seeds` choose "
             "runs as for a training command.", "",
             "```bash", "python run_ablation.py plan recipes/table6.yaml --paper-times", "```", "",
             "The rates: Table 3's minutes per epoch of 1,281,167 images on 8 V100s (FP16, batch 1024), as images/s "
             "per V100, ResNet-50-D's 3 % below ResNet-50's as the paper measured it (its FLOPs would say 12 %), and "
             "each model's forward GFLOPs (multiply-adds, counted here) at its crop:", ""]
    for ref in fp16:
        minutes = DATASETS["imagenet"].train_images / ref.images_per_s / 60 / 8
        how = f"1,281,167 / ({minutes:.3g} × 60 × 8)" if ref.source == TABLE3 else ref.source.removeprefix(f"{TABLE3}, ")
        lines.append(f"- {ref.model} at {ref.image_size} px: {how} = {ref.images_per_s:.1f} "
                     f"images/s, {flops(ModelConfig(name=ref.model), ref.image_size):.2f} GFLOPs")
    lines += ["", "A model of the same family runs at the rate of the reference nearest it in FLOPs × the reference's "
              "GFLOPs / its own. A distillation "
              "run also passes its images through the teacher, forward only: a third of the teacher's training "
              "time per image (a backward pass costs about two forwards), so its rate is 1 / (1 / student + "
              "1 / (3 × teacher)). Device-hours = epochs × 1,281,024 images (whole batches of 1,024) / images/s "
              "/ 3,600. Validation is not counted (about 1 % more).", "",
              "| runs | model | px | teacher | epochs | images/s per V100 | V100-hours |", "|---|---|---|---|---|---|---|"]
    by_label = {spec.label: spec for spec in specs}
    teachers = {s.step: s.config.model for s in specs if s.role == "teacher"}
    groups: dict[tuple, list] = {}
    for row in table.to_dict("records"):
        groups.setdefault((row["model"], row["image_px"], row["teacher"] != "–", row["images_per_s"]), []).append(row)
    for (model, px, distilled, _), rows in groups.items():
        cfg = by_label[rows[0]["run"]].config
        ips, how = rate(cfg.model, px)
        teacher = "–"
        if distilled:
            t_ips, t_how = rate(teachers[cfg.distill.teacher], px)
            ips_d = 1 / (1 / ips + 1 / (3 * t_ips))
            how = f"1 / (1 / {ips:.1f} + 1 / (3 × {t_ips:.1f}))"
            ips, teacher = ips_d, f"{teachers[cfg.distill.teacher].name} ({t_how} = {t_ips:.1f})"
        epochs = sum(r["epochs"] for r in rows)
        hours = sum(r["device_hours"] for r in rows)
        lines.append(f"| {len(rows)} ({' + '.join(str(r['epochs']) for r in rows)} epochs) | {model} | {px} | {teacher} | "
                     f"{epochs} | {how} = {ips:.1f} | {hours:,.1f} |")
    lines += ["", f"Total: {totals['runs']} runs, {totals['train_images']:,} training images, "
              f"**{totals['device_hours']:,.0f} V100-hours**, {totals['device_hours'] / 8 / 24:.1f} days on 8 V100s "
              "(one seed). With `bench` JSONs of your own device (`python run_ablation.py bench --model M`, one per "
              "family) the same command gives your cost.", ""]
    return lines


def table6_specs(root: Path) -> list[RunSpec]:
    path = root / RECIPES[0]
    return plan(load_recipe(path), where=str(path))


def fidelity_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py fidelity", description=(
        "Regenerate docs/fidelity.md: every Table 6 setting in the paper, in GluonCV and in recipes/table6.yaml."))
    p.add_argument("--out", default=str(ROOT / "docs" / "fidelity.md"), help="where to write (default: %(default)s)")
    args = p.parse_args(argv)
    write_text(Path(args.out), fidelity_markdown(table6_specs(ROOT)))
    print(f"wrote {args.out}")
    return 0
