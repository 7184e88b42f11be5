"""Text-check benchmark: recall and false-reject rate of the pixel text check (``--text-check``) on
synthetic images with and without planted burned-in text, and its time per image.

    python benchmarks/text_check.py [--images 400] [--seed 0] [--side 736] [--threads N] [--raw] [--json out.json]

Makes ``--images`` seeded 512 x 512 uint8 images, half ultrasound-like (speckle in a sector fan, half
of them with a dotted depth scale, a grey-scale bar and caliper crosses: graphics that are not text)
and half CT-like (a body disc with organs, bone, a table and noise). Half of each kind are clean; the
other half carry one planted block of burned-in text: a patient name (SMITH^JOHN), a date (2019-03-02,
02.03.2019, 03/02/2019, 20190302), a record number (MRN0012345, ID: 4471023) or a name and a date on
two lines, in a TrueType font (DejaVu when the system has one, else PIL's default font) of 7 to 28 px,
in a corner, a top bar or over the anatomy, white, grey (120-170) or dim (60-90).

An image counts as rejected when :func:`detect_text` finds any box, as the ingest does; "located"
counts text images with a box on the planted text. Prints a Markdown table: recall (text images
rejected / text images) and false-reject rate (clean images rejected / clean images), overall and per
font size, contrast, position, content and image kind, and the wall-clock and CPU time per image (with
``--threads 1``, as an ingest worker runs it, the CPU time hardly depends on what else the machine
runs). ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from radimagenet.ingest import textcheck

SIZE = 512
SURNAMES = ["SMITH", "GARCIA", "MUELLER", "NGUYEN", "ROSSI", "KOWALSKI", "OKAFOR", "LINDQVIST", "DUBOIS", "TANAKA"]
GIVEN = ["JOHN", "MARIA", "PETER", "ANNA", "LUCAS", "EMMA", "OMAR", "SOFIA", "JAN", "YUKI"]
SIZE_BUCKETS = ((7, 9), (10, 13), (14, 17), (18, 22), (23, 28))
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "top-bar", "over-anatomy")
CONTRASTS = {"white": (235, 255), "grey": (120, 170), "dim": (60, 90)}


def font_file() -> str | None:
    """A real TrueType font of this system (DejaVu Sans first), or None."""
    candidates = sorted(glob.glob("/usr/share/fonts/**/*.ttf", recursive=True))
    for name in ("DejaVuSans.ttf", "LiberationSans-Regular.ttf"):
        found = [c for c in candidates if c.endswith("/" + name)]
        if found:
            return found[0]
    return candidates[0] if candidates else None


def load_font(path: str | None, size: int) -> ImageFont.ImageFont:
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def ultrasound(rng: np.random.Generator) -> np.ndarray:
    """Speckle (Rayleigh) in a sector fan on black, with a few bright and dark structures; half have a
    dotted depth scale, a grey-scale bar and caliper crosses (graphics, not text)."""
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    apex_x, apex_y = SIZE / 2 + rng.uniform(-20, 20), rng.uniform(30, 70)
    r = np.hypot(x - apex_x, y - apex_y)
    angle = np.degrees(np.arctan2(x - apex_x, y - apex_y))
    half = rng.uniform(30, 45)
    r0, r1 = rng.uniform(10, 40), rng.uniform(400, 460)
    fan = (np.abs(angle) < half) & (r > r0) & (r < r1)
    tissue = 0.6 + 0.4 * np.sin(r / rng.uniform(12, 30) + rng.uniform(0, 6)) ** 2
    for _ in range(rng.integers(2, 5)):  # cysts (dark) and reflectors (bright)
        cx, cy, rad = rng.uniform(150, 360), rng.uniform(150, 420), rng.uniform(15, 50)
        blob = np.hypot(x - cx, y - cy) < rad
        tissue = np.where(blob, tissue * (0.15 if rng.random() < 0.5 else 1.8), tissue)
    speckle = rng.rayleigh(1.0, (SIZE, SIZE)).astype(np.float32)
    gain = np.exp(-r / rng.uniform(500, 900))
    image = np.where(fan, np.clip(70 * tissue * speckle * gain, 0, 255), 0).astype(np.uint8)
    if rng.random() < 0.5:
        im = Image.fromarray(image)
        draw = ImageDraw.Draw(im)
        edge = apex_x + r1 * np.sin(np.radians(half)) + 12
        for k in range(1, 9):  # depth scale: a dot every 50 px, a bigger one every 100
            cy, rad = apex_y + 50 * k, 3 if k % 2 == 0 else 2
            draw.ellipse((edge - rad, cy - rad, edge + rad, cy + rad), fill=200)
        top = int(rng.uniform(60, 200))  # a grey-scale bar
        draw.rectangle((SIZE - 18, top, SIZE - 10, top + 128), fill=0)
        for k in range(128):
            draw.line((SIZE - 18, top + k, SIZE - 10, top + k), fill=255 - 2 * k)
        for _ in range(2):  # caliper crosses
            cx, cy = rng.uniform(180, 330), rng.uniform(150, 400)
            draw.line((cx - 6, cy, cx + 6, cy), fill=230, width=1)
            draw.line((cx, cy - 6, cx, cy + 6), fill=230, width=1)
        image = np.asarray(im)
    return image


def ct(rng: np.random.Generator) -> np.ndarray:
    """A windowed CT-like slice: body disc, fat rim, organs, a bone ring, a table line, noise."""
    y, x = (np.mgrid[:SIZE, :SIZE] / SIZE - 0.5).astype(np.float32)
    ax, ay = rng.uniform(0.36, 0.44), rng.uniform(0.28, 0.36)
    ellipse = (x / ax) ** 2 + (y / ay) ** 2
    hu = np.where(ellipse < 1, -100.0, -1000.0).astype(np.float32)
    hu = np.where(ellipse < 0.85, 40.0, hu)
    for _ in range(rng.integers(3, 7)):
        cx, cy, rx, ry = rng.uniform(-0.2, 0.2), rng.uniform(-0.15, 0.15), rng.uniform(0.04, 0.12), rng.uniform(0.03, 0.1)
        organ = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        hu = np.where(organ, rng.uniform(-900, 80), hu)
    spine = ((x) / 0.05) ** 2 + ((y - 0.2) / 0.05) ** 2
    hu = np.where((spine < 1) & (spine > 0.5), 700.0, hu)
    hu = np.where(np.abs(y - (ay + 0.05)) < 0.006, 200.0, hu)  # the table
    hu += rng.normal(0, 12, hu.shape).astype(np.float32)
    return np.clip((hu - 40 + 200) / 400 * 255, 0, 255).astype(np.uint8)  # window 40/400


def text_lines(rng: np.random.Generator) -> tuple[str, list[str]]:
    """(content kind, the lines of a planted block)."""
    name = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}"
    y, m, d = int(rng.integers(1990, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    date = rng.choice([f"{y}-{m:02d}-{d:02d}", f"{d:02d}.{m:02d}.{y}", f"{m:02d}/{d:02d}/{y}", f"{y}{m:02d}{d:02d}"])
    mrn = rng.choice([f"MRN{rng.integers(0, 10**7):07d}", f"ID: {rng.integers(10**6, 10**7)}"])
    kind = str(rng.choice(["name", "date", "mrn", "name+date"]))
    lines = {"name": [name], "date": [str(date)], "mrn": [str(mrn)], "name+date": [name, str(date)]}[kind]
    return kind, lines


def plant_text(image: np.ndarray, rng: np.random.Generator, font_path: str | None, size: int,
               position: str, contrast: str) -> tuple[np.ndarray, str, tuple[int, int, int, int]]:
    """``image`` with one block of text drawn at ``position``; returns it, the content kind and the
    block's box (x0, y0, x1, y1)."""
    kind, lines = text_lines(rng)
    font = load_font(font_path, size)
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    lo, hi = CONTRASTS[contrast]
    fill = int(rng.integers(lo, hi + 1))
    widths = [draw.textbbox((0, 0), line, font=font)[2] for line in lines]
    step = int(size * 1.25)
    block_w, block_h = max(widths), step * len(lines)
    margin = int(rng.integers(4, 16))
    if position == "top-bar":
        draw.rectangle((0, 0, SIZE, block_h + 2 * margin), fill=int(rng.integers(0, 40)))
        x0, y0 = int(rng.integers(margin, max(margin + 1, SIZE - block_w - margin))), margin
    elif position == "over-anatomy":  # on the speckle / the body, around the middle
        x0 = int(rng.integers(SIZE // 4, max(SIZE // 4 + 1, SIZE - block_w - SIZE // 4)))
        y0 = int(rng.integers(SIZE // 3, SIZE // 2))
    else:
        x0 = margin if position.endswith("left") else SIZE - block_w - margin
        y0 = margin if position.startswith("top") else SIZE - block_h - margin
    for i, line in enumerate(lines):
        draw.text((x0, y0 + i * step), line, font=font, fill=fill)
    return np.asarray(im), kind, (x0, y0, x0 + block_w, y0 + block_h)


def make_cases(n: int, seed: int, font_path: str | None) -> list[dict]:
    """``n`` cases (image, kind, text or not and how), balanced over image kind and text/clean."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        kind = "ultrasound" if i % 2 == 0 else "ct"
        image = ultrasound(rng) if kind == "ultrasound" else ct(rng)
        case = {"image_kind": kind, "text": (i // 2) % 2 == 1}
        if case["text"]:
            size = int(rng.integers(SIZE_BUCKETS[0][0], SIZE_BUCKETS[-1][1] + 1))
            position, contrast = str(rng.choice(POSITIONS)), str(rng.choice(list(CONTRASTS)))
            image, content, block = plant_text(image, rng, font_path, size, position, contrast)
            case.update(size=size, position=position, contrast=contrast, content=content, block=block)
        case["image"] = image
        cases.append(case)
    return cases


def _overlaps(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def rate(hits: int, total: int) -> str:
    return f"{hits}/{total} = {100 * hits / total:.1f}%" if total else "-"


def run(n: int, seed: int, side: int) -> dict:
    font_path = font_file()
    cases = make_cases(n, seed, font_path)
    textcheck.detect_text(cases[0]["image"], side)  # make the detector (not timed)
    times, cpu = [], []
    for case in cases:
        start, start_cpu = time.perf_counter(), time.process_time()
        boxes = textcheck.detect_text(case["image"], side)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        case["rejected"] = bool(boxes)
        case["located"] = case["text"] and any(_overlaps(b, case["block"]) for b in boxes)
    text = [c for c in cases if c["text"]]
    clean = [c for c in cases if not c["text"]]

    def count(group: list[dict]) -> dict:
        return {"rejected": sum(c["rejected"] for c in group), "images": len(group)}

    buckets = {f"{lo}-{hi} px": count([c for c in text if lo <= c["size"] <= hi]) for lo, hi in SIZE_BUCKETS}
    return {
        "images": n, "seed": seed, "detector_side": side, "line_filter": textcheck.MIN_ASPECT > 0, "font": os.path.basename(font_path or "PIL default"),
        "recall": count(text), "false_reject": count(clean),
        "located": {"rejected": sum(c["located"] for c in text), "images": len(text)},
        "recall_by_size": buckets,
        "recall_by_contrast": {k: count([c for c in text if c["contrast"] == k]) for k in CONTRASTS},
        "recall_by_position": {k: count([c for c in text if c["position"] == k]) for k in POSITIONS},
        "recall_by_content": {k: count([c for c in text if c["content"] == k])
                              for k in ("name", "date", "mrn", "name+date")},
        "by_image_kind": {k: {"recall": count([c for c in text if c["image_kind"] == k]),
                              "false_reject": count([c for c in clean if c["image_kind"] == k])}
                          for k in ("ultrasound", "ct")},
        "ms_per_image": {"mean": 1000 * float(np.mean(times)), "p95": 1000 * float(np.percentile(times, 95)),
                         "cpu_mean": 1000 * float(np.mean(cpu))},
        "threads": os.environ.get("OMP_NUM_THREADS", "all cores"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores ({cpu_name()})",
        "missed": [{k: c[k] for k in ("image_kind", "size", "position", "contrast", "content")}
                   for c in text if not c["rejected"]],
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return "?"


def table(r: dict) -> str:
    rows = [("recall, all text images", r["recall"]), ("text located (a box on the planted text)", r["located"]),
            ("false-reject rate, clean images", r["false_reject"])]
    rows += [(f"recall, font {k}", v) for k, v in r["recall_by_size"].items()]
    rows += [(f"recall, {k} text", v) for k, v in r["recall_by_contrast"].items()]
    rows += [(f"recall, {k}", v) for k, v in r["recall_by_position"].items()]
    rows += [(f"recall, {k}", v) for k, v in r["recall_by_content"].items()]
    for kind, v in r["by_image_kind"].items():
        rows += [(f"recall, {kind}", v["recall"]), (f"false-reject rate, {kind}", v["false_reject"])]
    lines = ["| measure | images | rate |", "|---|---|---|"]
    lines += [f"| {name} | {v['rejected']}/{v['images']} | {rate(v['rejected'], v['images']).split('= ')[-1]} |"
              for name, v in rows]
    ms = r["ms_per_image"]
    lines.append(f"| time per 512 x 512 image | | {ms['mean']:.0f} ms wall (p95 {ms['p95']:.0f} ms), "
                 f"{ms['cpu_mean']:.0f} ms CPU |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400, help="images in all, half clean (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--side", type=int, default=textcheck.DETECTOR_SIDE,
                   help=f"detector input side (default {textcheck.DETECTOR_SIDE})")
    p.add_argument("--threads", type=int, help="detector threads (default: all cores; an ingest worker gets 1)")
    p.add_argument("--raw", action="store_true",
                   help="count every detection, without the line-shape filter (to see what it removes)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    if args.raw:
        textcheck.MIN_ASPECT, textcheck.MAX_LINE_FRACTION = 0.0, float("inf")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read when the detector is made
    r = run(args.images, args.seed, args.side)
    print(f"{r['images']} synthetic 512 x 512 images (seed {r['seed']}, font {r['font']}), detector side "
          f"{r['detector_side']}, {r['threads']} thread(s), line-shape filter "
          f"{'on' if r['line_filter'] else 'off'}, on {r['machine']}\n")
    print(table(r))
    if r["missed"]:
        print(f"\nmissed ({len(r['missed'])}): " + "; ".join(
            f"{m['image_kind']} {m['size']}px {m['contrast']} {m['position']} {m['content']}" for m in r["missed"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
