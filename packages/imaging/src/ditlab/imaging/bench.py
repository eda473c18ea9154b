"""`ditlab imaging benchmark`: the SRDiT against bicubic, Lanczos, the classical pipelines and the same-budget CNN, on
held-out photos and procedural images, in one run, with the issue's goals, on core's harness.

Image sets (never trained on): "photos" = `data.EVAL_PHOTOS` (chelsea, coffee, rocket; the out-of-distribution set:
real photographs, where the training data is mostly procedural), whole (quick: 128 x 128 centre crops);
"procedural" = test-split procedural images, 12 of 256 x 256 (quick: 4 of 128 x 128). LR inputs are made from them
with `degrade.degrade` on seed 0 (x4 "bicubic" and "realesrgan"; x1 "denoise", "deblur", "jpeg"). Metrics:
`metrics.evaluate`: Y-PSNR and SSIM (BT.601 limited range, border = scale), RGB PSNR, colour bias (max over
channels of the mean bias, in 1/255), means over a set's images; seconds per image.

Tiling: 32 LR crops at random offsets of the held-out photos and procedural images, sized so that the default tile
(32) and overlap (8) fit them exactly (104 x 104), upscaled x4: the gradient energy across the tiles' seams over
that across the other pixel boundaries at the same sub-pixel phase, pooled over the crops (`metrics.seam_energy`,
period 4), beside bicubic's at the same places (what the content alone gives) and the same network's tiles of
128 x 128 crops stitched without overlap (what the measure sees of a seam).
Speed and memory: a 512 x 512 input to 2048 x 2048 (x4, 4 steps), default precision (auto) and fp32 eager; each in a
child process (`run_in_child`) for its own peak RSS, timed after the network is loaded and prepared; the full run
also takes a 2048 x 2048 input to 8192 x 8192.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ditlab.core.bench import Recorder, Report, run_in_child, select_parts
from ditlab.imaging import baselines
from ditlab.imaging.data import eval_images, ood_images, photo
from ditlab.imaging.degrade import TASKS, degrade
from ditlab.imaging.metrics import evaluate, seam_energy
from ditlab.imaging.models import EDSR, load_model
from ditlab.imaging.pipeline import DEGRADATIONS, Enhancer, restore, upscale
from ditlab.imaging.superres import default_overlap, from_model, seams, to_model

METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "colour_bias_255", "seconds", "seam_ratio", "peak_mb", "loaded_mb",
           "output_mb", "working_mb", "speedup", "psnr_loss")
PARTS = ("sr-bicubic", "sr-real", "restore", "tiling", "speed")
NETS = {"sr": "sr-x4", "restore": "restore-x1", "edsr": "edsr-x4"}
TILED = "SRDiT, tiled (default tile and overlap)"
SEAM_TASK = "tiling seams, x4 real-world, default steps, of held-out crops (pooled; 32, quick 8)"
SR_TASK = {"sr-bicubic": ("bicubic", "bicubic"), "sr-real": ("realesrgan", "real")}  # part -> (degrade kind, mode)


def image_sets(quick: bool) -> dict[str, list[tuple[str, np.ndarray]]]:
    """The held-out HR images of the benchmark, by set."""
    size = (128, 128) if quick else None
    return {"photos": ood_images(size),
            "procedural": eval_images("test", 4 if quick else 12, (128, 128) if quick else (256, 256))}


def _lr(hr: np.ndarray, scale: int, kind: str, seed: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None].float()
    return degrade(x, scale, kind, torch.Generator().manual_seed(seed))[0].permute(1, 2, 0).numpy()


@functools.cache
def _edsr(weights: str) -> EDSR | None:
    try:
        model = load_model(weights)
    except FileNotFoundError:
        return None
    return model if isinstance(model, EDSR) else None


def _edsr_fn(weights: str, task: int) -> Callable[[np.ndarray], np.ndarray] | None:
    model = _edsr(weights)
    if model is None:
        return None

    @torch.no_grad()
    def run(lr: np.ndarray) -> np.ndarray:
        x = to_model(torch.from_numpy(lr).permute(2, 0, 1)[None])
        return from_model(model(x, torch.tensor([task])))[0].permute(1, 2, 0).numpy()

    return run


def sr_methods(part: str, nets: dict, quick: bool) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """name -> fn(lr) -> x4 result, for an SR part of the benchmark."""
    _, mode = SR_TASK[part]
    enh = Enhancer("sr", weights=nets["sr"], steps=4)
    enh1 = Enhancer("sr", weights=nets["sr"], steps=1)
    methods = {"bicubic": lambda lr: baselines.upscale(lr, 4, "bicubic"),
               "lanczos": lambda lr: baselines.upscale(lr, 4, "lanczos")}
    if part == "sr-real":
        methods["denoise + bicubic (classical)"] = lambda lr: baselines.classical_realworld(lr, 4)
    edsr = _edsr_fn(nets["edsr"], DEGRADATIONS[mode])
    if edsr is not None:
        methods["EDSR CNN (same data, same CPU time)"] = edsr
    methods["SRDiT, 4 steps"] = lambda lr: upscale(lr, 4, mode, enhancer=enh).pixels
    if not quick:
        methods["SRDiT, 4 steps, no colour fix"] = lambda lr: upscale(lr, 4, mode, colour="none", enhancer=enh).pixels
        fp32 = Enhancer("sr", weights=nets["sr"], steps=4, precision="fp32")
        methods["SRDiT, 4 steps, precision fp32"] = lambda lr: upscale(lr, 4, mode, enhancer=fp32).pixels
    methods["SRDiT, 1 step"] = lambda lr: upscale(lr, 4, mode, enhancer=enh1).pixels
    n = Enhancer("sr", weights=nets["sr"]).steps_for(DEGRADATIONS[mode])
    if n not in (1, 4):  # the validated default: its own row, the one the goals read
        enh_n = Enhancer("sr", weights=nets["sr"], steps=n)
        methods[f"SRDiT, {n} steps"] = lambda lr: upscale(lr, 4, mode, enhancer=enh_n).pixels
    return methods


def restore_methods(task: str, nets: dict) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    methods: dict[str, Callable] = {"input (degraded)": lambda x: x}
    for name, fn in baselines.RESTORE_BASELINES[task].items():
        methods[name] = fn
    try:
        enh = Enhancer("restore", weights=nets["restore"])
        enh.model  # noqa: B018 - fails here when the weights are not there
    except FileNotFoundError:
        return methods
    methods["SRDiT restore (default steps)"] = lambda x: restore(x, task, enhancer=enh).pixels
    return methods


def score_set(images: list[tuple[str, np.ndarray]], make_input: Callable[[np.ndarray, int], np.ndarray],
              methods: dict[str, Callable[[np.ndarray], np.ndarray]], scale: int) -> dict[str, dict]:
    """Every method on every image of a set: the mean of `evaluate`'s metrics and the mean seconds per image."""
    out: dict[str, dict] = {}
    inputs = [(hr, make_input(hr, i)) for i, (_, hr) in enumerate(images)]
    for name, fn in methods.items():
        rows = []
        for hr, x in inputs:
            fn(x[:16, :16]) if not rows and name.startswith("SRDiT") else None  # prepare (calibrate) before timing
            t0 = time.perf_counter()
            pred = fn(x)
            rows.append({**evaluate(pred, hr, scale), "seconds": time.perf_counter() - t0})
        out[name] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return out


@functools.cache
def _seam_pool() -> list[np.ndarray]:
    """The held-out images the seam crops come from (made once per process)."""
    return [hr for _, hr in ood_images()] + [hr for _, hr in eval_images("test", 4, (256, 256))]


def seam_crops(n: int, size: int) -> list[np.ndarray]:
    """LR crops for the seam measurement: `n` crops of `size` x `size` at seeded random offsets of the held-out
    photos (cycled) and procedural test images; many offsets, so the content's own edges average out."""
    rng = np.random.default_rng(0)
    pool = _seam_pool()
    crops = []
    for i in range(n):
        img = pool[i % len(pool)]
        y, x = (int(rng.integers(0, d - size + 1)) for d in img.shape[:2])
        crops.append(np.ascontiguousarray(img[y:y + size, x:x + size]))
    return crops


def tiling_run(nets: dict, n: int = 32, degradation: str = "real") -> dict[str, dict]:
    """Seam energy ratio (`metrics.seam_energy` at period 4, pooled over `n` `seam_crops`) of SRDiT's tiled x4
    result at its tile seams (default steps), beside bicubic's at the same places (what the content alone gives,
    ~1) and the same network's tiles stitched without overlap (the seams a stitcher leaves, which the measure must
    see). Crops hold whole tiles: tile + 3 strides, so the overlap is the nominal one."""
    enh = Enhancer("sr", weights=nets["sr"])
    tile, overlap = enh.tile_size, default_overlap(enh.tile_size)
    stitched = Enhancer("sr", weights=nets["sr"], overlap=0)
    size = tile + 3 * (tile - overlap)
    runs = {TILED: (lambda lr: upscale(lr, 4, degradation, enhancer=enh).pixels, size, overlap),
            "SRDiT, tiles stitched (overlap 0, no blending)":
                (lambda lr: upscale(lr, 4, degradation, enhancer=stitched).pixels, 4 * tile, 0),
            "bicubic (same places)": (lambda lr: baselines.upscale(lr, 4, "bicubic"), size, overlap)}
    out = {}
    for name, (fn, size_, ov) in runs.items():
        crops = seam_crops(n, size_)
        fn(crops[0][:16, :16])  # prepare before timing
        seam = expected = sec = 0.0
        cut = seams(size_, tile, ov, 4)
        for lr in crops:
            t0 = time.perf_counter()
            img = fn(lr)
            sec += time.perf_counter() - t0
            a, b = seam_energy(img, cut, cut, period=4)
            seam, expected = seam + a, expected + b
        out[name] = {"seam_ratio": seam / expected, "seconds": sec / len(crops)}
    return out


def speed_job(size: int, precision: str, weights: str, steps: int = 4) -> dict:
    """In a child process: load the x4 network, prepare it in `precision`, warm it, then time one `size` x `size`
    input to 4x in `steps` steps."""
    rng = np.random.default_rng(0)
    img = photo("astronaut")
    reps = -(-size // img.shape[0])
    big = np.tile(img, (reps, reps, 1))[:size, :size]
    big = np.clip(big + rng.normal(0, 0.01, big.shape).astype(np.float32), 0, 1)
    enh = Enhancer("sr", weights=weights, precision=precision, steps=steps)
    upscale(big[:64, :64], 4, "real", enhancer=enh)  # load, calibrate, compile: not timed
    loaded = _rss_mb()
    t0 = time.perf_counter()
    out = upscale(big, 4, "real", enhancer=enh)
    return {"seconds": time.perf_counter() - t0, "mode": enh.prepared().mode, "shape": list(out.pixels.shape),
            "mean": float(out.pixels.mean()), "loaded_mb": loaded, "output_mb": out.pixels.nbytes / 2**20}


def _rss_mb() -> float:
    """This process's resident memory now (MiB)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_benchmark(quick: bool = False, json_path: str | Path | None = None, threads: int = 0,
                  echo: Callable[[str], object] = print, only: str | None = None, nets: dict | None = None) -> dict:
    """Run every part (or `only` some of `PARTS`, comma-separated), print a line per result, then the tables and
    goals; write the JSON when asked; return it. `nets` replaces the packaged networks by weights folders (tests)."""
    parts = select_parts(only, PARTS)
    if threads:
        torch.set_num_threads(threads)
    nets = {**NETS, **(nets or {})}
    report = Report("Imaging benchmark: x4 super-resolution and x1 restoration on held-out images")
    record = Recorder(report, METRICS, echo)

    sets = image_sets(quick) if any(p in parts for p in ("sr-bicubic", "sr-real", "restore")) else {}
    for part in ("sr-bicubic", "sr-real"):
        if part not in parts:
            continue
        kind, _ = SR_TASK[part]
        methods = sr_methods(part, nets, quick)
        for set_name, images in sets.items():
            def lr_of(hr, i, kind=kind):
                return _lr(hr, 4, kind, i)

            for method, m in score_set(images, lr_of, methods, 4).items():
                record(f"x4 {kind}, {set_name}", method, m)
    if "restore" in parts:
        for task in TASKS:
            methods = restore_methods(task, nets)
            for set_name, images in sets.items():
                def degraded(hr, i, task=task):
                    return _lr(hr, 1, task, i)

                for method, m in score_set(images, degraded, methods, 1).items():
                    record(f"x1 {task}, {set_name}", method, m)
    if "tiling" in parts:
        for method, m in tiling_run(nets, n=8 if quick else 32).items():
            record(SEAM_TASK, method, m)
    if "speed" in parts:
        sizes = (512,) if quick else (512, 2048)
        for size in sizes:
            task = f"speed, {size} x {size} to {4 * size} x {4 * size} (x4)"
            runs = {}
            for precision, steps in (("auto", 4), ("fp32", 4), ("auto", 1)) if size == 512 else (("auto", 4),):
                child = run_in_child(speed_job, (size, precision, nets["sr"], steps), threads=threads)
                runs[precision, steps] = (f"SRDiT, {steps} step{'s' * (steps > 1)}, precision {precision} "
                                          f"(= {child.result['mode']})",
                                          {"seconds": child.result["seconds"], "peak_mb": child.peak_mb,
                                           "loaded_mb": child.result["loaded_mb"],
                                           "output_mb": child.result["output_mb"],
                                           "working_mb": child.peak_mb - child.result["loaded_mb"]
                                           - child.result["output_mb"]})
            if ("fp32", 4) in runs:
                runs["auto", 4][1]["speedup"] = runs["fp32", 4][1]["seconds"] / runs["auto", 4][1]["seconds"]
            for method, m in runs.values():
                record(task, method, m)
            big = np.tile(photo("astronaut"), (-(-size // 512), -(-size // 512), 1))[:size, :size]
            t0 = time.perf_counter()
            baselines.upscale(big, 4, "bicubic")
            record(task, "bicubic (PIL)", {"seconds": time.perf_counter() - t0})
    ours = {kind: default_row(nets["sr"], DEGRADATIONS[mode]) for kind, mode in SR_TASK.values()}
    add_goals(report, record.results, quick, ours)
    report.notes.append("The goals are taken on the default path of the x4 network: " + ", ".join(
        f"{k}: {v}" for k, v in ours.items()) + " (the number of steps chosen on validation images, in the network's "
        "config).")
    report.notes.append(__doc__.split("\n\n")[1].replace("\n", " "))
    report.notes.append("Colour fix: the SRDiT rows use the default (wavelet, against the bicubic upsampling of the "
                        "input); the other methods have none. Seconds are per image, on this machine.")
    return report.publish(json_path, echo)


def _value(results: dict, task: str, method: str, metric: str) -> float | None:
    return results.get((task, method), {}).get(metric)


def default_row(weights: str, task: int) -> str:
    """The benchmark row of the SRDiT's default path for `task`: its validated number of sampling steps."""
    n = Enhancer("sr", weights=weights).steps_for(task)
    return "SRDiT, 1 step" if n == 1 else f"SRDiT, {n} steps"


def add_goals(report: Report, results: dict, quick: bool, ours: dict[str, str] | None = None) -> None:
    """The issue's goals on the default path's rows (`ours`: degradation -> row), from the rows measured in this
    run (None where a part did not run)."""
    ours = ours or {"bicubic": "SRDiT, 4 steps", "realesrgan": "SRDiT, 4 steps"}
    edsr = "EDSR CNN (same data, same CPU time)"
    for set_name in ("photos", "procedural"):
        task = f"x4 bicubic, {set_name}"
        dit, bic = _value(results, task, ours["bicubic"], "psnr_y"), _value(results, task, "bicubic", "psnr_y")
        if dit is not None:
            report.goal(f"x4 bicubic, {set_name}: SRDiT Y-PSNR - bicubic (dB)", 1.5, dit - bic)
            cnn = _value(results, task, edsr, "psnr_y")
            report.goal(f"x4 bicubic, {set_name}: SRDiT Y-PSNR - same-budget CNN (dB)", 0.0,
                        None if cnn is None else dit - cnn)
        task = f"x4 realesrgan, {set_name}"
        dit, bic = _value(results, task, ours["realesrgan"], "psnr_y"), _value(results, task, "bicubic", "psnr_y")
        if dit is not None:
            cls = _value(results, task, "denoise + bicubic (classical)", "psnr_y")
            report.goal(f"x4 real-world, {set_name}: SRDiT Y-PSNR - bicubic (dB)", 1.0, dit - bic)
            report.goal(f"x4 real-world, {set_name}: SRDiT Y-PSNR - denoise + bicubic (dB)", 0.0, dit - cls)
    biases = [m["colour_bias_255"] for (t, k), m in results.items()
              if t.startswith("x4") and k == ours["realesrgan" if "realesrgan" in t else "bicubic"]]
    if biases:
        report.goal("colour: worst mean per-channel bias of SRDiT x4 (1/255)", 1.0, max(biases), "lower")
    seam = _value(results, SEAM_TASK, TILED,
                  "seam_ratio")
    if seam is not None:
        report.goal("tiling: |seam / interior gradient energy - 1|", 0.1, abs(seam - 1), "lower")
    speed = [m for (t, k), m in results.items() if t.startswith("speed, 512") and k.startswith("SRDiT, 4 steps, "
                                                                                                 "precision auto")]
    if speed:
        report.goal("512 x 512 -> 2048 x 2048 (x4, 4 steps), default precision (s)", 10.0, speed[0]["seconds"],
                    "lower")
    big = [m for (t, k), m in results.items() if t.startswith("speed, 2048")]
    if big:
        report.goal("2048 x 2048 -> 8192 x 8192 completes: peak memory (MiB; 24 GiB machine)", 24 * 1024,
                    big[0]["peak_mb"], "lower")
