"""Pre-extracted feature files: datasets ``features`` (any ``<root>/<domain>.<ext>``) and ``amazon_dann``.

``features``: the domain is the file stem. ``<root>/<domain>_train.<ext>`` and ``<root>/<domain>_test.<ext>``
(both present) give ``{"train", "test"}``; otherwise ``<root>/<domain>.<ext>`` gives ``{"all"}``. Formats:

* ``.npz``: features under ``x`` / ``X`` / ``features``, labels under ``y`` / ``labels``;
* ``.mat`` (MATLAB v5 via ``scipy.io.loadmat``, v7.3 via ``h5py``): features ``fts`` / ``feas`` / ``X`` /
  ``features`` (the SURF / DeCAF files of the classic Office-Caltech benchmarks), labels ``labels`` / ``y`` /
  ``label``;
* ``.csv``: a header row is detected when a cell of the first row is not a number; the label column is
  ``label`` (by header) or else the last column; every other column must be numeric;
* ``.svmlight``: ``sklearn.datasets.load_svmlight_files`` (options ``n_features``, ``zero_based``: ``"auto"``
  decides the index base from the train and test files together), densified to float32.

Labels: the sorted distinct label values (over train and test together) become classes ``0..K-1``, named by
their value (``"1".."10"`` for labels 1..10, ``"-1", "1"`` for -1/+1, which thus map to 0/1; strings as they
are). Domains that are compared must therefore share label values.

Option ``standardize``: ``"none"`` (default); ``"zscore"``: ``x <- (x - mean) / std`` per feature, with mean and
std (population, ``std = 1`` where it is 0) taken from the ``train`` (or ``all``) part of *this* domain and
applied to every part; ``"l2"``: ``x <- x / ||x||_2`` per sample (zero rows stay zero).

``amazon_dann``: the DANN paper's Amazon review features (Ganin et al., JMLR 2016, Sec. 5.1): 5000-d
unigram/bigram counts, ``<root>/text/amazon_reviews/dann_svmlight/<domain>_{train,test}.svmlight``, domains
books, dvd, electronics, kitchen, classes ``["negative", "positive"]`` (-1 -> 0, +1 -> 1), official split.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from da.data.domain import Domain, register_dataset
from da.data.roots import missing_data_error, resolve_root
from da.errors import UserError, unknown_name

FEATURE_EXTENSIONS = (".npz", ".mat", ".csv", ".svmlight")
X_KEYS = {"npz": ("x", "X", "features"), "mat": ("fts", "feas", "X", "features")}
Y_KEYS = {"npz": ("y", "labels"), "mat": ("labels", "y", "label")}
STANDARDIZE = ("none", "zscore", "l2")


def _pick(store, keys: Tuple[str, ...], what: str, path: Path):
    for k in keys:
        if k in store:
            return store[k]
    found = sorted(k for k in store if not str(k).startswith("__"))
    raise KeyError(f"{path}: no {what} array; expected one of {', '.join(keys)}, found {found}")


def _read_npz(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return np.asarray(_pick(z, X_KEYS["npz"], "feature", path)), np.asarray(_pick(z, Y_KEYS["npz"], "label", path))


def _read_mat(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    import h5py
    from scipy.io import loadmat

    if h5py.is_hdf5(str(path)):  # MATLAB v7.3 = HDF5, stored column-major: transpose back
        with h5py.File(path, "r") as f:
            m = {k: np.asarray(f[k]).T for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    else:
        m = loadmat(str(path))
    x = _pick(m, X_KEYS["mat"], "feature", path)
    y = _pick(m, Y_KEYS["mat"], "label", path)
    if hasattr(x, "toarray"):  # sparse matrices in .mat files
        x = x.toarray()
    return np.asarray(x), np.asarray(y)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _read_csv(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path} is empty: expected rows of numeric features and a label column")
    header: Optional[List[str]] = None
    if not all(_is_number(c) for c in rows[0]):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    label_col = header.index("label") if header is not None and "label" in header else len(rows[0]) - 1
    feats, labels = [], []
    for i, r in enumerate(rows, start=2 if header else 1):
        try:
            feats.append([float(c) for j, c in enumerate(r) if j != label_col])
        except ValueError as err:
            raise ValueError(f"{path}, line {i}: non-numeric feature ({err}); only the label column "
                             f"({'label' if header and 'label' in header else 'the last'}) may hold text") from err
        labels.append(r[label_col].strip())
    widths = {len(f) for f in feats}
    if len(widths) != 1:
        raise ValueError(f"{path}: rows have different numbers of columns {sorted(widths)}")
    y = np.array(labels)
    if all(_is_number(v) for v in labels):
        y = np.array([float(v) for v in labels])
        if np.all(y == np.round(y)):
            y = y.astype(np.int64)
    return np.array(feats, dtype=np.float32), y


def read_svmlight_files(paths: List[Path], n_features: Optional[int] = None,
                        zero_based: Any = "auto") -> List[Tuple[np.ndarray, np.ndarray]]:
    """Dense ``(x, y)`` per svmlight file, read together (``sklearn.datasets.load_svmlight_files``) so that the
    files share one width and one index base (``zero_based="auto"`` decides it from all files at once)."""
    from sklearn.datasets import load_svmlight_files

    loaded = load_svmlight_files([str(p) for p in paths], n_features=n_features, dtype=np.float32,
                                 zero_based=zero_based)
    out = []
    for x, y in zip(loaded[0::2], loaded[1::2]):
        y = np.asarray(y)
        if np.all(y == np.round(y)):
            y = y.astype(np.int64)
        out.append((np.asarray(x.todense(), dtype=np.float32), y))
    return out


def read_feature_file(path: Path, n_features: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(x (n, d) float32, y (n,) raw label values)`` from a ``.npz`` / ``.mat`` / ``.csv`` / ``.svmlight`` file."""
    path = Path(path)
    try:
        x, y = _read_any(path, n_features)
    except (ValueError, KeyError, OSError) as err:
        text = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        if str(path) in text or path.name in text:
            raise
        raise UserError(f"{path}: not a readable {path.suffix} feature file ({type(err).__name__}: {text})") from err
    return _checked(path, x, y)


def _read_any(path: Path, n_features: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    ext = path.suffix.lower()
    if ext == ".npz":
        x, y = _read_npz(path)
    elif ext == ".mat":
        x, y = _read_mat(path)
    elif ext == ".csv":
        x, y = _read_csv(path)
    elif ext == ".svmlight":
        x, y = read_svmlight_files([path], n_features)[0]
    else:
        raise ValueError(f"{path}: unsupported feature file type '{ext}'; use one of {', '.join(FEATURE_EXTENSIONS)}")
    return x, y


def _checked(path: Path, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    y = np.asarray(y).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"{path}: features {x.shape} and labels {y.shape} do not match (want (n, d) and (n,))")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: features contain NaN or infinity; clean the file")
    return x, y


def standardize_parts(parts: Dict[str, np.ndarray], mode: str, fit_on: str) -> Dict[str, np.ndarray]:
    """Apply ``mode`` (see the module docstring) to every part; z-score statistics come from ``parts[fit_on]``."""
    if mode not in STANDARDIZE:
        raise ValueError(f"standardize='{mode}' must be one of {', '.join(STANDARDIZE)}")
    if mode == "none":
        return parts
    if mode == "zscore":
        ref = parts[fit_on].astype(np.float64)
        mean, std = ref.mean(0), ref.std(0)
        std[std == 0] = 1.0
        return {k: ((v - mean) / std).astype(np.float32) for k, v in parts.items()}
    out = {}
    for k, v in parts.items():
        norm = np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True)
        norm[norm == 0] = 1.0
        out[k] = (v / norm).astype(np.float32)
    return out


def make_domains(name: str, parts: Dict[str, Tuple[np.ndarray, np.ndarray]], standardize: str = "none",
                 classes: Optional[List[str]] = None, label_map: Optional[Dict[Any, int]] = None,
                 meta: Optional[Dict[str, Any]] = None) -> Dict[str, Domain]:
    """Turn ``{part: (x, raw y)}`` into Domains: shared label mapping, standardisation fit on train/all."""
    if label_map is None:
        values = np.unique(np.concatenate([y for _, y in parts.values()]))
        label_map = {v.item() if hasattr(v, "item") else v: i for i, v in enumerate(values)}
        classes = [str(v) for v in label_map]
    if classes is None:
        raise ValueError(f"{name}: give classes together with label_map")
    ys = {}
    for k, (_, y) in parts.items():
        try:
            ys[k] = np.array([label_map[v.item() if hasattr(v, "item") else v] for v in y], dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"{name} ({k}): unexpected label {err.args[0]!r}; expected one of "
                             f"{sorted(label_map)}") from None
    xs = standardize_parts({k: x for k, (x, _) in parts.items()}, standardize,
                           fit_on="train" if "train" in parts else next(iter(parts)))
    return {k: Domain(name, list(classes), torch.from_numpy(ys[k]), x=torch.from_numpy(np.ascontiguousarray(xs[k])),
                      modality="features", meta={**(meta or {}), "standardize": standardize, "part": k})
            for k in parts}


def _find_file(base: Path, stem: str) -> Optional[Path]:
    found = [base / f"{stem}{e}" for e in FEATURE_EXTENSIONS if (base / f"{stem}{e}").is_file()]
    if len(found) > 1:
        raise ValueError(f"ambiguous feature files for '{stem}' in {base}: {', '.join(p.name for p in found)}; "
                         f"keep one")
    return found[0] if found else None


@register_dataset("features", domains=(), modality="features",
                  description="pre-extracted features <root>/<domain>.{npz,mat,csv,svmlight} (domain = file stem)")
def load_features(domain: str, root: Optional[str] = None, *, standardize: str = "none",
                  n_features: Optional[int] = None, zero_based: Any = "auto", **_: Any) -> Dict[str, Domain]:
    """``<root>/<domain>_{train,test}.<ext>`` -> {"train", "test"}, else ``<root>/<domain>.<ext>`` -> {"all"}."""
    base = resolve_root(root)
    tr, te = _find_file(base, f"{domain}_train"), _find_file(base, f"{domain}_test")
    if tr is not None and te is not None:
        files = {"train": tr, "test": te}
    else:
        one = _find_file(base, domain)
        if one is None:
            exts = "|".join(e.lstrip(".") for e in FEATURE_EXTENSIONS)
            raise missing_data_error(
                f"feature file for domain '{domain}'", base,
                f"put {domain}.{{{exts}}} (or {domain}_train.* and {domain}_test.*) in that folder, or pass "
                f"--data.root <folder holding the files> (the domain is the file name without extension)")
        files = {"all": one}
    if all(p.suffix.lower() == ".svmlight" for p in files.values()):
        pairs = read_svmlight_files(list(files.values()), n_features, zero_based)
        parts = {k: _checked(p, *xy) for (k, p), xy in zip(files.items(), pairs)}
    else:
        parts = {k: read_feature_file(p, n_features) for k, p in files.items()}
    dims = {k: x.shape[1] for k, (x, _) in parts.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"features/{domain}: train and test have different dimensions {dims}; for svmlight "
                         f"files pass n_features")
    return make_domains(f"features/{domain}", parts, standardize,
                        meta={"files": {k: str(p) for k, p in files.items()}})


AMAZON_DANN_DOMAINS = ("books", "dvd", "electronics", "kitchen")
AMAZON_DANN_FEATURES = 5000


@register_dataset("amazon_dann", domains=AMAZON_DANN_DOMAINS, modality="features",
                  description="Amazon reviews as the DANN paper's 5000-d bag-of-words features (Ganin et al. 2016)",
                  download_hint="<root>/text/amazon_reviews/dann_svmlight/<domain>_{train,test}.svmlight")
def load_amazon_dann(domain: str, root: Optional[str] = None, *, standardize: str = "none",
                     **_: Any) -> Dict[str, Domain]:
    """The DANN Amazon features, official ``{"train": 2000, "test": rest}`` split, classes negative/positive."""
    if domain not in AMAZON_DANN_DOMAINS:
        raise unknown_name("domain of dataset 'amazon_dann'", domain, AMAZON_DANN_DOMAINS)
    folder = resolve_root(root) / "text" / "amazon_reviews" / "dann_svmlight"
    files = {k: folder / f"{domain}_{k}.svmlight" for k in ("train", "test")}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise missing_data_error(
            f"Amazon DANN features {missing}", folder,
            "copy the files of https://github.com/GRAAL-Research/domain_adversarial_neural_network (data/) there, or "
            "pass --data.root <folder that holds text/amazon_reviews/dann_svmlight/> (e.g. ../shared/data)")
    pairs = read_svmlight_files(list(files.values()), AMAZON_DANN_FEATURES, zero_based=True)  # 0-based indices
    parts = {k: _checked(p, *xy) for (k, p), xy in zip(files.items(), pairs)}
    return make_domains(f"amazon_dann/{domain}", parts, standardize, classes=["negative", "positive"],
                        label_map={-1: 0, 1: 1}, meta={"files": {k: str(p) for k, p in files.items()}})
