"""``pbeh search``: query a saved run's index with feature vectors, or a Retriever folder with texts, images or
feature vectors; print the hits as a table or JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from ._output import format_table, print_json
from ._setup import UserError, set_threads


def search(args: argparse.Namespace) -> int:
    """``pbeh search RUN``: encode the queries with the run's model and search the other modality's index."""
    import torch

    from .._run import read_run
    from ..index import TruncatedHammingIndex
    from ..model import CrossModalHashModel

    set_threads(args.threads)
    if args.k < 1:
        raise UserError(f"--k: expected a positive number of results, got {args.k}")
    given = [name for name in ("features", "text", "image") if getattr(args, name) is not None]
    if len(given) != 1:
        raise UserError(f"search: expected one of --features, --text, --image; got {given or 'none'}")
    if args.features is not None and args.modality is None:
        raise UserError("--modality: say which modality the --features are (image or text)")
    if (args.run / "retriever.json").is_file():
        return search_retriever(args)
    if args.features is None:
        raise UserError(
            f"--{given[0]}: {args.run} is a run directory, which holds no encoder; search it with --features "
            "(a Retriever folder takes --text and --image)"
        )
    run = read_run(args.run)
    model = CrossModalHashModel.from_pretrained(run.state / "model")
    other = "text" if args.modality == "image" else "image"
    index = TruncatedHammingIndex.load(run.state / f"{other}_index.safetensors")
    feats = query_features(args, model.feature_dim(args.modality), "this run's model")
    codes = model.encode(torch.as_tensor(feats, dtype=torch.float32), args.modality, role="query")
    result = index.search(codes, args.k + 1)  # one more than shown: it tells whether the last shown one is tied
    ties = unlisted_ties(index, codes, result.ids, result.scores)
    names = run.info.get("task_names") or run.task_names
    label_names = run.label_names
    queries: list[dict[str, Any]] = []
    for q in range(len(codes)):
        hits = []
        shown_ids, shown_scores = result.ids[q, : args.k], result.scores[q, : args.k]
        tasks = run.task_of(shown_ids)
        for item, score, task in zip(shown_ids.tolist(), shown_scores.tolist(), tasks, strict=True):
            if int(item) == -1:
                continue
            labels = run.labels_of(int(item))
            hit: dict[str, Any] = {
                "id": int(item),
                "score": float(score),
                "task": None if task is None else task + 1,
                "task_name": None if task is None or task >= len(names) else names[task],
                "labels": labels,
            }
            if label_names is not None:
                hit["label_names"] = [label_names[c] for c in labels if c < len(label_names)]
            hits.append(hit)
        queries.append({"query": q, "hits": hits, "tied_unlisted": int(ties[q])})
    if args.json:
        print_json({"modality": args.modality, "searched": other, "k": args.k, "queries": queries})
        return 0
    for entry in queries:
        print(f"query {entry['query']} ({args.modality} → {other}):")
        rows = [["rank", "id", "score", "task", "labels"]]
        for rank, hit in enumerate(entry["hits"], start=1):
            task = "-" if hit["task"] is None else f"{hit['task']} {hit['task_name'] or ''}".strip()
            labels = ", ".join(hit.get("label_names") or [str(c) for c in hit["labels"]]) or "-"
            rows.append([str(rank), str(hit["id"]), f"{hit['score']:.3f}", task, labels])
        print(format_table(rows, right=[True, True, True, False, False]))
        print_ties(entry)
    return 0


def unlisted_ties(index: Any, codes: Any, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per query, how many stored items the list left out that score exactly what its last shown item scores.

    ``ids`` and ``scores`` hold one result more than is shown: only where that extra result exists and ties with the
    last shown one are the stored codes read (:meth:`~pbeh.index.TruncatedHammingIndex.count_at_least`); elsewhere
    nothing tied was left out.
    """
    k = ids.shape[1] - 1
    ties = np.zeros(len(ids), dtype=np.int64)
    rows = np.flatnonzero((ids[:, k] != -1) & (scores[:, k] == scores[:, k - 1]))
    if len(rows):
        ties[rows] = index.count_at_least(codes[rows], scores[rows, k - 1]) - k
    return ties


def print_ties(entry: dict[str, Any]) -> None:
    """The line under a query's table when its last score is shared by items the list left out."""
    n, hits = entry["tied_unlisted"], entry["hits"]
    if n > 0:
        item = "item" if n == 1 else "items"
        print(
            f"  and {n} more stored {item} with score {hits[-1]['score']:.3f}, as rank {len(hits)}: among equal "
            "scores the list takes ascending ids"
        )


def query_features(args: argparse.Namespace, width: int, what: str) -> np.ndarray:
    """The ``--features`` file as a float32 (n, width) array, or a UserError naming what is wrong."""
    if not args.features.is_file():
        raise UserError(f"--features: no such file {str(args.features)!r}")
    name = str(args.features)
    try:
        with open(args.features, "rb") as file:
            magic = file.read(6)
        if magic[:2] == b"PK":  # np.load would hand back an NpzFile of several arrays
            raise UserError(f"--features: {name!r} is an .npz archive; save the query features alone with numpy.save")
        if magic != b"\x93NUMPY":  # np.load would try it as a pickle and say so, which misleads here
            raise UserError(f"--features: {name!r} is not a .npy file (no NumPy header); write it with numpy.save")
        feats = np.load(args.features, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"--features: {name!r} is not a readable .npy array ({exc})") from exc
    if feats.ndim == 1:
        feats = feats[None, :]
    if feats.ndim != 2 or feats.shape[1] != width:
        raise UserError(
            f"--features: expected (n, {width}) {args.modality} features for {what}, got shape {feats.shape}"
        )
    return np.asarray(feats, dtype=np.float32)


def search_retriever(args: argparse.Namespace) -> int:
    """Search a folder written by Retriever.save: texts, images (its encoders) or features."""
    import torch

    from ..retriever import Retriever

    retriever = Retriever.load(args.run)
    if args.text is not None:
        modality, feats = "text", retriever.encode_texts(list(args.text))
    elif args.image is not None:
        missing = [str(p) for p in args.image if not p.is_file()]
        if missing:
            raise UserError(f"--image: no such file {missing[0]!r}")
        modality, feats = "image", retriever.encode_images([str(p) for p in args.image])
    else:
        modality = args.modality
        feats = query_features(args, retriever.model.feature_dim(modality), "this Retriever's model")
    # one result more than shown: it tells whether the last shown one is tied with items left out
    results = retriever.search(**{f"{modality}_features": np.asarray(feats, dtype=np.float32)}, k=args.k + 1)
    other = "image" if modality == "text" else "text"
    codes = retriever.model.encode(torch.as_tensor(np.asarray(feats), dtype=torch.float32), modality, role="query")
    ids = np.full((len(results), args.k + 1), -1, dtype=np.int64)
    scores = np.zeros((len(results), args.k + 1))
    for q, hits in enumerate(results):
        ids[q, : len(hits.ids)], scores[q, : len(hits.ids)] = hits.ids, hits.scores
    ties = unlisted_ties(retriever.text_index if modality == "image" else retriever.image_index, codes, ids, scores)
    queries = [
        {
            "query": q,
            "hits": [
                {"id": h.id, "score": h.score, "task_name": h.task, "metadata": h.metadata}
                for h in list(hits)[: args.k]
            ],
            "tied_unlisted": int(ties[q]),
        }
        for q, hits in enumerate(results)
    ]
    if args.json:
        print_json({"modality": modality, "searched": other, "k": args.k, "queries": queries})
        return 0
    for entry in queries:
        print(f"query {entry['query']} ({modality} → {other}):")
        rows = [["rank", "id", "score", "task", "metadata"]]
        for rank, hit in enumerate(entry["hits"], start=1):
            meta = "-" if hit["metadata"] is None else json.dumps(hit["metadata"], ensure_ascii=False)
            rows.append([str(rank), str(hit["id"]), f"{hit['score']:.3f}", hit["task_name"] or "-", meta])
        print(format_table(rows, right=[True, True, True, False, False]))
        print_ties(entry)
    return 0
