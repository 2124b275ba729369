#!/usr/bin/env python3
"""Makes the README's panel screenshots (docs/screenshots/*.png) from the end-to-end test's.

    python3 scripts/readme_screenshots.py [E2E_OUT]

tests/e2e/run.sh saves every panel of the page on the demo bundle at 1280x800 as
E2E_OUT/clipit-demo-<panel>.png (default E2E_OUT: ~/.cache/clipit/target/e2e). This crops each to
at most MAX_HEIGHT pixels, scales it to at most MAX_WIDTH, and stores it as a 256-colour PNG, so
that all of them stay well under 1.5 MB. Needs Pillow.
"""
import os
import sys

from PIL import Image

PANELS = ["model", "tiles", "detail", "zeroshot", "train", "slidemap", "how"]
MAX_WIDTH = 900
MAX_HEIGHT = 1100


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/clipit/target/e2e")
    out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "screenshots")
    os.makedirs(out, exist_ok=True)
    total = 0
    for panel in PANELS:
        path = os.path.join(src, f"clipit-demo-{panel}.png")
        if not os.path.isfile(path):
            sys.exit(f"{path} is missing: run tests/e2e/run.sh (E2E_SCENARIOS=cpu is enough) first")
        img = Image.open(path).convert("RGB")
        img = img.crop((0, 0, img.width, min(img.height, MAX_HEIGHT)))
        if img.width > MAX_WIDTH:
            img = img.resize((MAX_WIDTH, round(img.height * MAX_WIDTH / img.width)), Image.LANCZOS)
        dest = os.path.join(out, f"{panel}.png")
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(dest, optimize=True)
        size = os.path.getsize(dest)
        total += size
        print(f"{dest}: {img.width}x{img.height}, {size / 1024:.0f} kB")
    print(f"total {total / 1024:.0f} kB")


if __name__ == "__main__":
    main()
