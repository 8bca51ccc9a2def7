"""Benchmark results as figures: images/s per variant with the spread over rounds, and the
loader's images/s per worker count for each data path; each titled with its machine and settings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from bench.report.figures import save_figure
from bench.report.style import COLORS


def _machine(env: dict) -> str:
    return f"{env['device']} {env['device_name']}, {env['cpu_threads']} threads, torch {env['torch']}"


def _spread_bars(ax, labels: list[str], med: np.ndarray, low: np.ndarray, high: np.ndarray, colors: list,
                 notes: list[str], room: float) -> None:
    """Horizontal bars at the medians, top to bottom, each with a bar from its slowest to its
    fastest round and a note after it; `room`: the x-range as a multiple of the largest maximum."""
    y = np.arange(len(labels))[::-1]
    ax.barh(y, med, color=colors, alpha=0.8)
    ax.errorbar(med, y, xerr=[med - low, high - med], fmt="none", ecolor="black", capsize=3, lw=1)
    for yi, top, note in zip(y, high, notes):
        ax.text(top, yi, f"  {note}", va="center", fontsize=9)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, max(high) * room)


def plot_throughput(result: dict) -> Figure:
    """`bench`: the median images/s of each variant over the rounds, a bar from its slowest to
    its fastest round, and its ratio to the plain harness step."""
    s, variants = result["settings"], result["variants"]
    names = list(variants)
    fig = Figure(figsize=(8, 0.45 * len(names) + 1.8))
    ax = fig.subplots()
    _spread_bars(ax, names, *(np.array([variants[n][k] for n in names]) for k in ("images_per_s", "images_per_s_min", "images_per_s_max")),
                 colors=[COLORS[0] if n not in ("pytorch", "plain") else COLORS[7] for n in names],
                 notes=[f"{variants[n]['images_per_s']:.1f}  (×{variants[n]['ratio_to_plain']:.2f} plain)" for n in names], room=1.45)
    ax.set_xlabel(f"training images/s (median of {s['rounds']} rounds of {s['steps']} steps; bar: slowest–fastest)")
    ax.set_title(f"{s['model']} (teacher {s['teacher']}), {s['image_size']} px, batch {s['batch_size']}, "
                 f"{s['precision']}{', compiled' if s['compile'] else ''}\n{_machine(result['environment'])}", fontsize=10)
    return fig


def plot_loader(result: dict) -> Figure:
    """`bench-loader`: images/s per worker count for each data path, and the rate one GPU of the
    paper consumed (Table 3) for scale."""
    paths = list(result["loader_images_per_s"])
    workers = list(result["loader_images_per_s"][paths[0]])
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    width = 0.8 / len(paths)
    x = np.arange(len(workers))
    for i, path in enumerate(paths):
        rates = [result["loader_images_per_s"][path][w] for w in workers]
        label = {"worker": "worker path (workers do everything)", "device": "device path (the workers' part)",
                 "device_decode": "decode-on-device path (workers read the files)"}.get(path, path)
        ax.bar(x + (i - (len(paths) - 1) / 2) * width, rates, width, label=label, color=COLORS[i])
    for model, ips in result["paper_images_per_s_per_gpu"].items():
        ax.axhline(ips, color="0.5", lw=0.8, ls="--")
        ax.text(len(workers) - 0.5, ips, f" {model}: one V100 (Table 3)", va="bottom", ha="right", fontsize=8, color="0.35")
    ax.set_xticks(x, [f"{w} worker{'s' if w != '1' else ''}" for w in workers])
    ax.set_ylabel("images/s")
    every = [v for rates in result["loader_images_per_s"].values() for v in rates.values()]
    if max(every) > 20 * min(every):   # workers that only read files outpace decoding ones many times
        ax.set_yscale("log")
    ax.set_title(f"ImageFolder loader: {result['images']} JPEGs, {result['image_size']} px crops, batch "
                 f"{result['batch_size']}\n{_machine(result['environment'])}; {result['source']}", fontsize=10)
    ax.legend(loc="upper left")
    return fig


def plot_recipe_bench(result: dict) -> Figure:
    """`bench-recipe`: the median images/s of each run under each variant, a bar from its slowest
    to its fastest round, and its ratio to the recipe as it is (the first variant)."""
    order = [v["name"] for v in result["variants"]]   # each run's variants in the order given (JSON sorts keys)
    rows = sorted(result["results"].values(), key=lambda r: (r["run"], order.index(r["variant"])))
    first = order[0]
    runs = list(dict.fromkeys(r["run"] for r in rows))
    fig = Figure(figsize=(8, 0.45 * len(rows) + 1.8))
    ax = fig.subplots()
    _spread_bars(ax, [f"{r['run']}: {r['variant']}" for r in rows],
                 *(np.array([r[k] for r in rows]) for k in ("images_per_s", "images_per_s_min", "images_per_s_max")),
                 colors=[COLORS[7] if r["variant"] == first else COLORS[runs.index(r["run"]) % 7] for r in rows],
                 notes=[f"{r['images_per_s']:.0f}  (×{r['ratio_to_first']:.2f})" for r in rows], room=1.3)
    ax.set_xlabel(f"training images/s (median of {result['rounds']} rounds of about {result['images_per_round']} images; "
                  f"bar: slowest–fastest; ×: against '{first}')")
    ax.set_title(f"bench-recipe {result['recipe']}" + (f" ({', '.join(result['command_overrides'])})" if result.get("command_overrides") else "")
                 + f"\n{_machine(result['environment'])}", fontsize=10)
    return fig


def plot_pipeline(result: dict) -> Figure:
    """`bench-pipeline`: each loader variant's training rate as a ratio to the synthetic epoch
    timed just before it (the median over rounds, a bar from the lowest to the highest round),
    its median images/s beside it; the variants at the default workers and threads marked."""
    s, variants = result["settings"], result["variants"]
    names = [n for n in variants if n != "synthetic"]
    fig = Figure(figsize=(8, 0.45 * len(names) + 1.9))
    ax = fig.subplots()
    ratio = np.array([variants[n]["ratio_to_synthetic"] for n in names])
    default = result["default_variants"]
    _spread_bars(ax, [f"{n} (auto)" if n in default else n for n in names], ratio,
                 np.array([variants[n]["ratio_min"] for n in names]), np.array([variants[n]["ratio_max"] for n in names]),
                 colors=[COLORS[("worker", "device").index(n.split("/")[0])] for n in names],
                 notes=[f"×{variants[n]['ratio_to_synthetic']:.2f}  ({variants[n]['images_per_s']:.0f} images/s)" for n in names],
                 room=1.35)
    ax.axvline(0.9, color="0.5", lw=0.8, ls="--")
    ax.axvline(1.0, color="0.3", lw=0.8)
    ax.set_xlabel(f"training rate / that of the synthetic epoch timed just before it (median of {s['rounds']} rounds of {s['steps']} "
                  f"batches; bar: lowest–highest round; dashed: 0.9)\nsynthetic tensors: "
                  f"{variants['synthetic']['images_per_s']:.1f} images/s (median of all its epochs)")
    ax.set_title(f"{s['model']}, {s['image_size']} px, batch {s['batch_size']}, {s['precision']}: data path / loader workers / "
                 f"threads; (auto): data.workers and runtime.threads at auto\n{_machine(result['environment'])}; "
                 f"{result['source']}", fontsize=10)
    return fig


def save_beside(fig: Figure, json_path: str | Path) -> Path:
    """The figure as a PNG next to a benchmark's JSON (same name, .png)."""
    return save_figure(fig, Path(json_path).with_suffix(".png"))
