"""The built-in offline task: printed digits (fonts) -> handwritten digits. No download, no GPU.

Dataset ``builtin``, domains:

* ``fonts`` (source): digits 0-9 rendered from the TrueType fonts that ship with matplotlib, 16x16 grey,
  with random stroke thickness, rotation, scale, shear, shift, blur and noise. Official split:
  ``train`` (``n_fonts_samples``, default 20000, seed ``fonts_seed``) and ``test`` (``n_fonts_test``, default
  2000, rendered with another seed, ``fonts_seed + 1_000_003``).
* ``handwritten`` (target): scikit-learn's ``load_digits()`` -- the 1797 handwritten digits of the UCI
  "optdigits" set (43 writers; 32x32 bitmaps counted over 4x4 blocks into 8x8 images with values 0..16),
  scaled to ``[0, 1]`` by ``/16`` and upsampled to 16x16 (bilinear). Returned as ``{"all": ...}``.

The domain gap: the source is clean, printed type (constant stroke width, serifs, regular proportions)
whose variation is synthetic; the target is real handwriting from 43 people, seen through a coarse 8x8
block-count grid, so strokes are blurred, blocky and thick, and shapes vary as handwriting does (open 4s,
crossed 7s, slanted 1s). A small CNN trained on the fonts reaches >95% on the fonts test split but far
less on the handwritten digits (the prototype of this pair measured about 66% source-only vs about 98%
for a target oracle).

Construction (fast: each glyph is rendered once; the augmentation is vectorised in torch):

1. Fonts: every ``*.ttf`` in ``matplotlib/mpl-data/fonts/ttf`` whose characters '0'..'9' map to glyphs
   named ``zero``..``nine`` (or ``zerooldstyle``..``nineoldstyle``: old-style figures are real digits), minus
   an explicit deny-list (`EXCLUDED_FONTS`: cmex10, cmsy10 and LastResortHE map digits to symbols or boxes;
   DejaVu Display, STIXSiz*, STIXNonUni* have no digits), which the glyph-name check also rejects.
2. Each (font, digit) glyph is rendered once with PIL at 128 px, cropped to its ink and resized (keeping
   its aspect ratio) to fit a 48x48 box centred in a 64x64 canvas; thickness variants are precomputed at
   64x64 as erosion (min-pool 3), identity, dilation (max-pool 3, 5, 7).
3. For each sample (seeded ``torch.Generator``): a uniform (font, digit, thickness) draw; a random affine
   map ``A = R(rot) Sh(shear) diag(scale_x, scale_y)`` plus shift, applied with ``affine_grid/grid_sample``
   at 64x64 and average-pooled 4x4 to 16x16; a Gaussian blur with per-sample sigma (grouped separable
   conv); an ink intensity factor; additive Gaussian noise; clamp to ``[0, 1]``; quantised to uint8.
   Ranges are in `AUGMENT`.
4. Normalised like every digit set: ``x = (p - 0.5) / 0.5`` (see `da.data.readers.digits`).

The rendered uint8 images are cached under ``~/.cache/da`` (``$DA_CACHE_DIR`` overrides; option
``cache=False`` disables) in a file keyed by a hash of every generation parameter, so a cached load is
bit-identical to a fresh render.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from da.data.domain import Domain, register_dataset
from da.data.readers.digits import DIGIT_CLASSES, DIGIT_MEAN, DIGIT_STD, format_images

#: bump when the rendering changes, so that old cache files are not reused.
RENDER_VERSION = 1
BASE_SIZE = 16
CANVAS = 64
GLYPH_BOX = 48
TEST_SEED_OFFSET = 1_000_003

#: font file stems (prefix match) never used: their '0'..'9' are symbols/boxes or missing.
EXCLUDED_FONTS = ("cmex10", "cmsy10", "LastResortHE", "DejaVuSansDisplay", "DejaVuSerifDisplay", "STIXSiz",
                  "STIXNonUni")

DIGIT_GLYPH_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: augmentation ranges (uniform unless stated); angles in degrees, shifts as a fraction of the image side.
AUGMENT: Dict[str, Any] = {
    "rotation": 15.0,          # rot ~ U(-15, 15)
    "scale": (0.8, 1.15),      # isotropic scale
    "aspect": (0.8, 1.2),      # scale_x = scale * aspect, scale_y = scale
    "shear": 0.3,              # horizontal shear factor ~ U(-0.3, 0.3)
    "shift": 0.1,              # shift ~ U(-0.1, 0.1) of the side, in x and y
    "thickness_levels": (-3, 1, 3, 5, 7),  # -3: erosion by 3x3; 1: none; k: dilation by kxk (64x64 canvas)
    "blur_sigma": (0.0, 1.0),  # Gaussian blur sigma in 16x16 pixels (0 = no blur)
    "intensity": (0.75, 1.0),  # ink multiplier
    "noise_std": (0.0, 0.08),  # additive N(0, s^2), s ~ U(range)
}


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _glyph_names(path: Path) -> List[Optional[str]]:
    from matplotlib.ft2font import FT2Font

    ft = FT2Font(str(path))
    names = []
    for ch in "0123456789":
        idx = ft.get_char_index(ord(ch))
        names.append(ft.get_glyph_name(idx) if idx else None)
    return names


def has_real_digits(path: Path) -> bool:
    """True when '0'..'9' map to glyphs named ``zero``..``nine`` (optionally with an ``oldstyle`` suffix)."""
    try:
        names = _glyph_names(path)
    except Exception:  # unreadable font file
        return False
    return all(n in (want, want + "oldstyle") for n, want in zip(names, DIGIT_GLYPH_NAMES))


def is_excluded(path: Path) -> bool:
    return any(Path(path).stem.startswith(prefix) for prefix in EXCLUDED_FONTS)


@lru_cache(maxsize=None)
def digit_fonts() -> tuple:
    """The font files used for the ``fonts`` domain (sorted by file name)."""
    fonts = [p for p in sorted(font_dir().glob("*.ttf")) if not is_excluded(p) and has_real_digits(p)]
    if len(fonts) < 5:
        raise RuntimeError(f"only {len(fonts)} usable digit fonts found in {font_dir()}; matplotlib's "
                           f"font folder looks incomplete (reinstall matplotlib)")
    return tuple(fonts)


def render_glyph(font_path: Path, digit: int, canvas: int = CANVAS, box: int = GLYPH_BOX) -> np.ndarray:
    """One glyph, ink in ``[0, 1]``, cropped to its ink, fit (aspect kept) into ``box`` px, centred on ``canvas``."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), 128)
    img = Image.new("L", (320, 320), 0)
    ImageDraw.Draw(img).text((80, 60), str(digit), fill=255, font=font)
    a = np.asarray(img)
    rows, cols = np.nonzero(a > 0)
    if len(rows) == 0:
        raise RuntimeError(f"font {font_path.name} renders digit {digit} as an empty glyph; add it to EXCLUDED_FONTS")
    crop = img.crop((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
    w, h = crop.size
    s = box / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    crop = crop.resize((nw, nh), Image.LANCZOS)
    out = Image.new("L", (canvas, canvas), 0)
    out.paste(crop, ((canvas - nw) // 2, (canvas - nh) // 2))
    return np.asarray(out, dtype=np.float32) / 255.0


@lru_cache(maxsize=2)
def glyph_bank(fonts: tuple) -> torch.Tensor:
    """``(n_fonts, 10, n_thickness, 64, 64)`` glyphs in ``[0, 1]`` with every thickness variant."""
    base = torch.from_numpy(np.stack([np.stack([render_glyph(f, d) for d in range(10)]) for f in fonts]))
    flat = base.view(-1, 1, CANVAS, CANVAS)
    variants = []
    for k in AUGMENT["thickness_levels"]:
        if k < 0:  # erosion = -maxpool(-x)
            v = -F.max_pool2d(-flat, -k, stride=1, padding=-k // 2)
        elif k == 1:
            v = flat
        else:
            v = F.max_pool2d(flat, k, stride=1, padding=k // 2)
        variants.append(v)
    bank = torch.cat(variants, 1)  # (F*10, T, 64, 64)
    return bank.view(len(fonts), 10, len(variants), CANVAS, CANVAS).contiguous()


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Per-sample separable Gaussian blur of ``(n, 1, H, W)``; ``sigma`` ``(n,)`` in pixels (0 = identity)."""
    n = x.shape[0]
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    s = sigma.clamp_min(1e-3).view(n, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(1, keepdim=True)  # (n, 2r+1)
    y = x.view(1, n, *x.shape[-2:])
    y = F.pad(y, (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(n, 1, 1, -1), groups=n)
    y = F.conv2d(y, k.view(n, 1, -1, 1), groups=n)
    return y.view_as(x)


def render_fonts(n: int, seed: int, fonts: Optional[Sequence[Path]] = None, chunk: int = 4096) -> Dict[str, torch.Tensor]:
    """Render ``n`` augmented digits: ``{"x": (n, 1, 16, 16) uint8, "y": (n,) int64, "font": (n,) int64}``.

    Deterministic in ``(n, seed, fonts, AUGMENT, RENDER_VERSION)``; labels are drawn uniformly (not balanced).
    """
    fonts = tuple(fonts) if fonts is not None else digit_fonts()
    bank = glyph_bank(tuple(fonts))
    nf, _, nt = bank.shape[:3]
    g = torch.Generator().manual_seed(int(seed))
    a = AUGMENT
    font_idx = torch.randint(nf, (n,), generator=g)
    y = torch.randint(10, (n,), generator=g)
    thick = torch.randint(nt, (n,), generator=g)
    rot = torch.deg2rad(_uniform(g, n, -a["rotation"], a["rotation"]))
    scale = _uniform(g, n, *a["scale"])
    aspect = _uniform(g, n, *a["aspect"])
    shear = _uniform(g, n, -a["shear"], a["shear"])
    shift = _uniform(g, 2 * n, -a["shift"], a["shift"]).view(n, 2) * 2.0  # normalised coords span 2
    sigma = _uniform(g, n, *a["blur_sigma"])
    intensity = _uniform(g, n, *a["intensity"])
    noise_std = _uniform(g, n, *a["noise_std"])
    noise = torch.randn(n, 1, BASE_SIZE, BASE_SIZE, generator=g)

    # forward map (glyph -> image): p_out = A p_in + t with A = R Sh diag(sx, sy); grid_sample needs the inverse.
    cos, sin = torch.cos(rot), torch.sin(rot)
    R = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    Sh = torch.zeros(n, 2, 2)
    Sh[:, 0, 0] = 1.0
    Sh[:, 1, 1] = 1.0
    Sh[:, 0, 1] = shear
    D = torch.diag_embed(torch.stack([scale * aspect, scale], -1))
    A = R @ Sh @ D
    A_inv = torch.linalg.inv(A)
    theta = torch.cat([A_inv, -(A_inv @ shift.unsqueeze(-1))], -1)  # p_in = A^-1 (p_out - t)

    out = torch.empty(n, 1, BASE_SIZE, BASE_SIZE)
    pool = CANVAS // BASE_SIZE
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        src = bank[font_idx[s:e], y[s:e], thick[s:e]].unsqueeze(1)
        grid = F.affine_grid(theta[s:e], [e - s, 1, CANVAS, CANVAS], align_corners=False)
        warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        small = F.avg_pool2d(warped, pool)
        small = _gaussian_blur(small, sigma[s:e])
        small = small * intensity[s:e].view(-1, 1, 1, 1) + noise_std[s:e].view(-1, 1, 1, 1) * noise[s:e]
        out[s:e] = small.clamp(0.0, 1.0)
    return {"x": (out * 255.0).round().to(torch.uint8), "y": y, "font": font_idx}


def cache_dir() -> Path:
    """``$DA_CACHE_DIR`` or ``~/.cache/da``."""
    return Path(os.path.expanduser(os.environ.get("DA_CACHE_DIR") or "~/.cache/da"))


def _cache_key(n: int, seed: int, fonts: Sequence[Path]) -> str:
    spec = {"version": RENDER_VERSION, "n": int(n), "seed": int(seed), "fonts": [Path(f).name for f in fonts],
            "augment": AUGMENT, "canvas": CANVAS, "box": GLYPH_BOX, "size": BASE_SIZE}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:16]


def cached_render(n: int, seed: int, cache: bool = True) -> Dict[str, torch.Tensor]:
    """`render_fonts` through the on-disk cache (written atomically; an unreadable cache file is re-rendered)."""
    fonts = digit_fonts()
    if not cache:
        return render_fonts(n, seed, fonts)
    path = cache_dir() / f"builtin_fonts_{_cache_key(n, seed, fonts)}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:
            pass
    data = render_fonts(n, seed, fonts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(data, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache folder only costs a re-render next time
    return data


def load_handwritten_pixels() -> Dict[str, torch.Tensor]:
    """scikit-learn's 1797 8x8 handwritten digits as ``(n, 1, 8, 8)`` float in ``[0, 1]`` (``/16``), labels 0..9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    return {"x": x, "y": torch.from_numpy(d.target.astype(np.int64))}


def _meta(**extra: Any) -> Dict[str, Any]:
    return {"normalization": {"mean": DIGIT_MEAN, "std": DIGIT_STD}, **extra}


@register_dataset("builtin", domains=("fonts", "handwritten"), modality="image",
                  description="offline task: matplotlib-font digits (source) -> scikit-learn handwritten digits (target)")
def load_builtin(domain: str, root: Optional[str] = None, *, image_size: Optional[int] = None,
                 channels: Optional[int] = None, n_fonts_samples: int = 20000, n_fonts_test: int = 2000,
                 fonts_seed: int = 0, cache: bool = True, **_: Any) -> Dict[str, Domain]:
    """Built-in digits: ``fonts`` -> {"train", "test"}; ``handwritten`` -> {"all"}. ``root`` is not used."""
    size = BASE_SIZE if image_size is None else int(image_size)
    name = f"builtin/{domain}"
    if domain == "fonts":
        fonts = [p.name for p in digit_fonts()]
        out = {}
        for split, n, seed in (("train", n_fonts_samples, fonts_seed),
                               ("test", n_fonts_test, fonts_seed + TEST_SEED_OFFSET)):
            if int(n) < 1:
                raise ValueError(f"builtin/fonts: n_fonts_samples/n_fonts_test must be >= 1, got {n}")
            data = cached_render(int(n), int(seed), cache=cache)
            out[split] = Domain(name, list(DIGIT_CLASSES), data["y"], x=format_images(data["x"], size, channels),
                                modality="image",
                                meta=_meta(fonts=fonts, seed=int(seed), render_version=RENDER_VERSION))
        return out
    if domain == "handwritten":
        data = load_handwritten_pixels()
        x = F.interpolate(data["x"], size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
        return {"all": Domain(name, list(DIGIT_CLASSES), data["y"], x=format_images(x, None, channels),
                              modality="image", meta=_meta(source="sklearn.datasets.load_digits (UCI optdigits)"))}
    from da.errors import unknown_name

    raise unknown_name("domain of dataset 'builtin'", domain, ("fonts", "handwritten"))
