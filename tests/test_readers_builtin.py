"""The built-in offline task: font filter, seeded rendering, cache, normalisation, target upsampling."""

import numpy as np
import pytest
import torch

from da.data.domain import load_domain
from da.data.readers import builtin
from da.data.readers.digits import format_images


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))


def test_font_filter_keeps_only_real_digit_fonts():
    fonts = [p.name for p in builtin.digit_fonts()]
    assert len(fonts) == 22
    assert "DejaVuSans.ttf" in fonts and "cmr10.ttf" in fonts and "STIXGeneral.ttf" in fonts
    for name in fonts:
        assert not name.startswith(("cmex10", "cmsy10", "LastResortHE", "DejaVuSansDisplay", "DejaVuSerifDisplay",
                                    "STIXSiz", "STIXNonUni")), name
    d = builtin.font_dir()
    # the glyph-name check rejects the bad fonts on its own, not only through the deny-list
    for bad in ("cmex10.ttf", "cmsy10.ttf", "LastResortHE-Regular.ttf", "DejaVuSansDisplay.ttf",
                "STIXSizOneSymReg.ttf", "STIXNonUni.ttf"):
        assert not builtin.has_real_digits(d / bad), bad
    assert builtin.has_real_digits(d / "cmmi10.ttf")  # old-style figures are digits
    assert builtin._glyph_names(d / "cmsy10.ttf")[:2] == ["prime", "infinity"]


def test_glyph_bank_thickness_variants_are_ordered():
    bank = builtin.glyph_bank(builtin.digit_fonts())
    assert bank.shape == (22, 10, len(builtin.AUGMENT["thickness_levels"]), 64, 64)
    ink = bank.sum((-1, -2))  # (fonts, digits, thickness)
    assert bool((ink[..., 1:] > ink[..., :-1]).all())  # erosion < none < dilate 3 < 5 < 7
    # every glyph fits its 48-px box: the 8-px border of the un-dilated glyph is empty
    plain = bank[:, :, 1]
    assert plain[..., :7, :].max() == 0 and plain[..., -7:, :].max() == 0
    assert plain.amax((-1, -2)).min() > 0.9


def test_render_is_deterministic_and_seeded():
    a = builtin.render_fonts(300, seed=7)
    b = builtin.render_fonts(300, seed=7)
    c = builtin.render_fonts(300, seed=8)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"]) and torch.equal(a["font"], b["font"])
    assert not torch.equal(a["x"], c["x"])
    assert a["x"].shape == (300, 1, 16, 16) and a["x"].dtype == torch.uint8
    assert set(a["y"].tolist()) == set(range(10))
    assert int(a["font"].max()) < 22


def test_cache_returns_the_fresh_render(tmp_path):
    fresh = builtin.cached_render(200, 3, cache=False)
    first = builtin.cached_render(200, 3, cache=True)
    files = list((tmp_path / "cache").glob("builtin_fonts_*.pt"))
    assert len(files) == 1
    again = builtin.cached_render(200, 3, cache=True)
    for k in ("x", "y", "font"):
        assert torch.equal(fresh[k], first[k]) and torch.equal(fresh[k], again[k])
    builtin.cached_render(200, 4, cache=True)  # another key, another file
    assert len(list((tmp_path / "cache").glob("builtin_fonts_*.pt"))) == 2


def test_load_fonts_domain_splits_and_normalisation():
    d = load_domain("builtin/fonts", n_fonts_samples=500, n_fonts_test=100, cache=False, unknown_option=1)
    assert set(d) == {"train", "test"}
    tr, te = d["train"], d["test"]
    assert tr.x.shape == (500, 1, 16, 16) and te.x.shape == (100, 1, 16, 16)
    assert tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64
    assert tr.classes == [str(i) for i in range(10)] and tr.name == "builtin/fonts"
    raw = builtin.render_fonts(500, seed=0)
    assert torch.allclose(tr.x, (raw["x"].float() / 255 - 0.5) / 0.5)
    assert torch.equal(tr.y, raw["y"])
    raw_test = builtin.render_fonts(100, seed=builtin.TEST_SEED_OFFSET)
    assert torch.equal(te.y, raw_test["y"])
    assert tr.x.min() >= -1 and tr.x.max() <= 1
    assert tr.meta["normalization"] == {"mean": 0.5, "std": 0.5}


def test_handwritten_is_sklearn_digits_upsampled():
    from sklearn.datasets import load_digits

    d = load_domain("builtin/handwritten")
    assert set(d) == {"all"}
    h = d["all"]
    assert h.x.shape == (1797, 1, 16, 16)
    assert h.class_counts().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    img = load_digits().images.astype(np.float64) / 16.0
    i = 5
    # bilinear, align_corners=False: output (0,0) samples input (-0.25,-0.25) -> clamped to pixel (0,0);
    # output (1,1) samples input (0.25, 0.25) -> weights 0.75/0.25 per axis.
    a = img[i]
    p00 = a[0, 0]
    p11 = 0.75 * 0.75 * a[0, 0] + 0.75 * 0.25 * (a[0, 1] + a[1, 0]) + 0.25 * 0.25 * a[1, 1]
    p_last = a[7, 7]
    assert h.x[i, 0, 0, 0].item() == pytest.approx((p00 - 0.5) / 0.5, abs=1e-6)
    assert h.x[i, 0, 1, 1].item() == pytest.approx((p11 - 0.5) / 0.5, abs=1e-6)
    assert h.x[i, 0, 15, 15].item() == pytest.approx((p_last - 0.5) / 0.5, abs=1e-6)


def test_size_and_channel_options():
    f = load_domain("builtin/fonts", n_fonts_samples=50, n_fonts_test=10, cache=False, image_size=28, channels=3)
    assert f["train"].x.shape == (50, 3, 28, 28)
    assert torch.equal(f["train"].x[:, 0], f["train"].x[:, 2])
    h = load_domain("builtin/handwritten", image_size=8)["all"]
    from sklearn.datasets import load_digits

    want = (torch.from_numpy(load_digits().images).float() / 16 - 0.5) / 0.5
    assert torch.allclose(h.x[:, 0], want, atol=1e-6)  # size 8: no resampling at all


def test_format_images_numbers():
    p = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert format_images(p).flatten().tolist() == [-1.0, 1.0]
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    luma = 0.299 * 1.0 + 0.587 * 0.5
    assert format_images(rgb, channels=1).item() == pytest.approx((luma - 0.5) / 0.5)
    with pytest.raises(ValueError, match="channels=2"):
        format_images(rgb, channels=2)
    with pytest.raises(ValueError, match="image_size=0"):
        format_images(rgb, image_size=0)


def test_gaussian_blur_closed_forms():
    x = torch.zeros(2, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    y = builtin._gaussian_blur(x, torch.tensor([0.0, 1.0]))
    assert torch.allclose(y[0], x[0], atol=1e-6)  # sigma -> 0: identity
    k = torch.exp(-0.5 * torch.arange(-2, 3.0) ** 2)
    k = k / k.sum()
    assert torch.allclose(y[1, 0, 2:7, 2:7], torch.outer(k, k), atol=1e-6)
    assert y[1].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_unknown_domain_names_the_fix():
    with pytest.raises(ValueError, match="unknown domain of dataset 'builtin' 'font'; did you mean 'fonts'"):
        load_domain("builtin/font")
    with pytest.raises(ValueError, match="n_fonts_samples"):
        load_domain("builtin/fonts", n_fonts_samples=0, cache=False)
