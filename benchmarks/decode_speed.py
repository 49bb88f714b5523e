"""Reading an image folder into memory: the reader before `cnncli.images` against the one now.

Writes N synthetic 256×256 JPEG photos (2 classes) to a temporary folder and
reads them all at 224×224 RGB, as `dataset: image_folder` with
`image_size: [224, 224]` does before the first training step:

* before: one core; Pillow decode, `convert("RGB")`, then the dense
  matrix resize of `cnncli.data.prepare.resize` one picture at a time
  (what `image_folder` did until the one reader came);
* now: `cnncli.data.load` as a run calls it (`cnncli.images.read_image`:
  EXIF, alpha, Pillow's bilinear resize, decoded on every core);
* records: the same pictures packed by `cnn data pack` and loaded with
  `dataset: records` (the pack's own time printed beside it).

It prints images/s for each, and checks that both of "now" agree exactly.

    python benchmarks/decode_speed.py             # 1,000 photos
    python benchmarks/decode_speed.py --images 4000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 256  # stored photos, as the data-at-scale measurements of issue 10
TARGET = (224, 224)


def write_photos(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for i in range(n):
        phase = rng.uniform(0, 6, 3)
        base = np.stack([np.sin(4 * xx + phase[c]) * np.cos(3 * yy - phase[c]) for c in range(3)], -1)
        pixels = np.clip(128 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)


def before(paths: list[Path]) -> np.ndarray:
    from cnncli.data.prepare import resize_image

    out = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            out.append(resize_image(np.asarray(image.convert("RGB"), np.uint8), TARGET))
    return np.stack(out)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()

    from cnncli.config.schema import DataConfig
    from cnncli.data import load
    from cnncli.data.pack import pack

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        write_photos(root, args.images)
        paths = sorted(root.glob("*/*.jpg"))
        folder_cfg = DataConfig(dataset="image_folder", path=str(root), image_size=TARGET, color_mode="rgb",
                                validation_split=0)
        _, old = timed(lambda: before(paths))
        now, new = timed(lambda: load(folder_cfg, seed=0))
        _, packing = timed(lambda: pack(DataConfig(dataset="image_folder", path=str(root)), str(Path(tmp) / "rec")))
        records_cfg = folder_cfg.model_copy(update={"dataset": "records", "path": str(Path(tmp) / "rec")})
        packed, read = timed(lambda: load(records_cfg, seed=0))
        same = all(np.array_equal(getattr(now, f"x_{s}"), getattr(packed, f"x_{s}")) for s in ("train", "test"))
        n = len(paths)
        print(f"{n:,} JPEG photos {SIZE}×{SIZE} -> {TARGET[0]}×{TARGET[1]} RGB, resident")
        print(f"  before (one core, matrix resize)  {n / old:8.1f} images/s  ({old:.1f} s)")
        print(f"  now    image_folder                {n / new:8.1f} images/s  ({new:.1f} s)  "
              f"{old / new:.1f}× before")
        print(f"  now    records                     {n / read:8.1f} images/s  ({read:.1f} s; pack took "
              f"{packing:.1f} s)  arrays identical to the folder's: {same}")


if __name__ == "__main__":
    main()
