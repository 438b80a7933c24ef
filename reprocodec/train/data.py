"""Prepare training patches: ``python -m reprocodec.train.data --out data/train``.

Sources, in order:
  (a) ``/work/shared/data/photos`` (lossless PNG photos) when present, used at full scale;
  (b) photographic wallpapers from Debian packages (mate-backgrounds, plasma-workspace-wallpapers,
      palapeli-data), fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``. They are
      JPEGs, so each is downscaled 2-4x first: that averages away JPEG block artefacts, which the
      codec should not learn to reproduce.
Only an allow-list of photographic images is used (the packages also hold drawings and
renderings); images are deduplicated by the SHA-256 of their decoded pixels. Kodak is never used.

Output: ``<out>/patches.npy`` (uint8, K x P x P x 3, non-overlapping crops on a grid) and
``<out>/manifest.json`` (sources, counts, hashes) for the training metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_PHOTOS = Path("/work/shared/data/photos")
DEB_PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers", "palapeli-data")
# Photographic images inside the packages (paths relative to the unpacked root). The rest of the
# packages' images are drawings, renderings or thumbnails.
PHOTO_GLOBS = (
    "usr/share/backgrounds/mate/nature/*.jpg",
    "usr/share/palapeli/collection/*.jpg",
    *(
        f"usr/share/wallpapers/{name}/contents/images/*.jpg"
        for name in (
            "Autumn", "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
            "FallenLeaf", "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
        )
    ),
)
JPEG_TARGET_SHORT_SIDE = 640


def fetch_debian_photos(workdir: Path) -> list[Path]:
    """Download and unpack the wallpaper packages; return the allow-listed photo paths."""
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *DEB_PACKAGES], cwd=workdir, check=True)
    root = workdir / "root"
    for deb in sorted(workdir.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return sorted(p for pattern in PHOTO_GLOBS for p in root.glob(pattern))


def jpeg_downscale_factor(width: int, height: int) -> int:
    """2..4: enough to average away JPEG artefacts, leaving a short side near 640."""
    return int(np.clip(round(min(width, height) / JPEG_TARGET_SHORT_SIDE), 2, 4))


def load_rgb(path: Path, lossless: bool) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if not lossless:
            f = jpeg_downscale_factor(*img.size)
            img = img.resize((img.width // f, img.height // f), Image.Resampling.LANCZOS)
        return np.asarray(img, dtype=np.uint8)


def grid_crops(pixels: np.ndarray, patch: int) -> list[np.ndarray]:
    """Non-overlapping patch x patch crops on a grid centred in the image."""
    h, w = pixels.shape[:2]
    oy, ox = (h % patch) // 2, (w % patch) // 2
    return [
        pixels[y : y + patch, x : x + patch]
        for y in range(oy, h - patch + 1, patch)
        for x in range(ox, w - patch + 1, patch)
    ]


def build(out: Path, photos: Path, patch: int, use_debian: bool) -> dict:
    sources: list[tuple[Path, bool]] = []
    if photos.is_dir():
        sources += [(p, True) for p in sorted(photos.glob("*.png"))]
    if use_debian:
        with tempfile.TemporaryDirectory() as tmp:
            deb_photos = fetch_debian_photos(Path(tmp))
            images = [(p, load_rgb(p, lossless=False)) for p in deb_photos]
        debian = [(str(p).split("root/", 1)[-1], px) for p, px in images]
    else:
        debian = []
    local = [(str(p), load_rgb(p, lossless=True)) for p, _ in sources]
    seen: set[str] = set()
    crops: list[np.ndarray] = []
    used = []
    for name, pixels in local + debian:
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        tiles = grid_crops(pixels, patch)
        crops += tiles
        used.append({"image": name, "sha256": digest, "shape": list(pixels.shape),
                     "crops": len(tiles)})
    if not crops:
        raise SystemExit("no training images found")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "patches.npy", np.stack(crops))
    n_local = sum(not u["image"].startswith("usr/") for u in used)
    # The wallpaper packages ship one picture under several size names (symlinks), so count
    # what survived the pixel-hash dedupe, not the files found.
    manifest = {"patch": patch, "count": len(crops), "images": used,
                "description": f"{n_local} lossless photos + {len(used) - n_local} Debian "
                               "wallpaper photos (JPEG, downscaled 2-4x), "
                               f"{len(crops)} grid crops of {patch}px"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/train"))
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--no-debian", action="store_true", help="skip the apt-get download")
    args = ap.parse_args(argv)
    m = build(args.out, args.photos, args.patch, use_debian=not args.no_debian)
    print(f"{m['count']} patches of {m['patch']}px from {len(m['images'])} images -> {args.out}")


if __name__ == "__main__":
    main()
