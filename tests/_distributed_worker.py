"""One rank of the multi-process checks in tests/test_distributed.py, launched by torchrun (gloo, CPU).

Usage: ``torchrun --standalone --nproc_per_node 2 tests/_distributed_worker.py OUT_DIR [CLIP_DIR]``. Every rank
writes ``OUT_DIR/rank<r>.npz`` (and ``.json``); the test compares them with one process's results.

1. gather: :func:`all_gather_rows` on segmented shares, and the gradient (summed over ranks) of a pairwise loss.
2. train: a 3-task synthetic stream under DDP, with an extension after every task and prototype replay; two tasks,
   a checkpoint, then a fresh trainer that resumes and trains the third.
3. cache: with ``CLIP_DIR``, a FeatureCache filled by both ranks with a tiny random CLIP's text and image features.
4. cli: ``pbeh train`` on the synthetic stream inside the process group, as ``torchrun -m pbeh train`` runs it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from pbeh.training import all_gather_rows, init_from_env, shard_bounds


def gather_check(ctx, out: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    items, pseudo = torch.randn(5, 3, generator=gen), torch.randn(3, 3, generator=gen)
    weight = torch.randn(3, 4, generator=gen)
    position = torch.arange(8, dtype=torch.float32)[:, None]  # makes the loss depend on the row order

    def loss_of(outputs: torch.Tensor) -> torch.Tensor:
        return ((outputs @ outputs.T).tanh() ** 2).sum() + (outputs * position).sum()

    reference_weight = weight.clone().requires_grad_(True)
    reference = torch.cat([items, pseudo]) @ reference_weight
    loss_of(reference).backward()

    item_bounds, pseudo_bounds = shard_bounds(5, ctx.world_size), shard_bounds(3, ctx.world_size)
    (a, b), (c, d) = item_bounds[ctx.rank], pseudo_bounds[ctx.rank]
    mine = weight.clone().requires_grad_(True)
    local = torch.cat([items[a:b], pseudo[c:d]]) @ mine
    counts = [[y - x for x, y in item_bounds], [y - x for x, y in pseudo_bounds]]
    gathered = all_gather_rows(local, counts, ctx)
    loss_of(gathered).backward()
    grad = mine.grad.clone()
    torch.distributed.all_reduce(grad)  # the sum over ranks, as DDP's all-reduce (before its 1/world_size)
    out["gather_values"] = float((gathered.detach() - reference.detach()).abs().max())
    out["gather_grad"] = float((grad - reference_weight.grad).abs().max())


def step_check(ctx, out: dict) -> None:
    """One DDP step's gradients (after DDP's all-reduce) against one process's gradients of the same global batch,
    with every loss term on: pairwise and contrastive terms, distillation, prompt-hash anchors, stored codes, the
    previous-model term and replayed pseudo items, and a batch whose last share is one row shorter."""
    import copy
    import dataclasses

    from pbeh.data import synthetic_stream
    from pbeh.trainer import ContinualTrainer, TrainerConfig, _tensor
    from pbeh.training import DistributedMinibatchSampler, wrap_for_training

    stream = synthetic_stream(n_tasks=2, seed=0)
    trainer = ContinualTrainer.for_stream(
        stream, n_bits=8, hidden_dims=(16,), config=TrainerConfig(epochs=1, batch_size=32, prototype_replay=7)
    )
    trainer.fit([stream[0]])
    trainer.loss_weights = dataclasses.replace(trainer.loss_weights, previous_model=30.0)
    # a reference model moved off the current one, so that the previous-model term has a gradient
    previous = copy.deepcopy(trainer.model).eval().requires_grad_(False)
    with torch.no_grad():
        for param in previous.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(2)))
    task = stream[1]
    image, text, labels = (_tensor(x, trainer.device) for x in (task.train.image, task.train.text, task.train.labels))
    # stored anchors moved off the current ones, so that the L1 anchor term has a gradient
    anchors = [a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1)) for a in trainer._anchors]
    targets = trainer._stored_targets(1)
    from pbeh.prototypes import ClassPrototypes

    replay = ClassPrototypes.concatenate(trainer._prototypes)
    pseudo = replay.sample(7, np.random.default_rng(0), noise=0.5)
    sampler = DistributedMinibatchSampler(len(task.train), 31, rank=ctx.rank, world_size=ctx.world_size)
    share = next(iter(sampler.epoch(torch.Generator().manual_seed(0))))

    reference = copy.deepcopy(trainer)
    idx = share.indices
    batch = [
        torch.cat([part[idx], _tensor(extra, trainer.device)])
        for part, extra in zip((image, text, labels), pseudo, strict=True)
    ]
    ref_loss, ref_terms = reference._loss(*batch, 1, anchors, targets, previous)
    assert ref_terms["previous_model"] > 0
    ref_loss.backward()
    ref_grads = {n: p.grad for n, p in reference.model.named_parameters() if p.grad is not None}

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)  # keeps the parameters; the gradients stay for the comparison
    module = wrap_for_training(trainer.model, ctx)
    loss, terms = trainer._distributed_step(
        module, optimizer, ctx, share, (image, text, labels), pseudo, anchors, targets, previous
    )
    expected_term = ref_terms["previous_model"]
    out["step_previous_relative"] = abs(terms["previous_model"] - expected_term) / expected_term
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert sorted(grads) == sorted(ref_grads), sorted(set(grads) ^ set(ref_grads))
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    out["step_grad_relative"] = max(float((grads[n] - ref_grads[n]).abs().max()) for n in grads) / scale
    out["step_loss_relative"] = abs(float(loss) - float(ref_loss)) / abs(float(ref_loss))
    out["step_batch"] = [len(idx), list(share.counts)]


def train_check(ctx, out_dir: Path, arrays: dict, out: dict) -> None:
    from test_distributed import TRAIN_OPTIONS, stored_signs, stream_options

    from pbeh.data import synthetic_stream
    from pbeh.extension import FixedSchedule
    from pbeh.trainer import ContinualTrainer, TrainerConfig

    stream = synthetic_stream(**stream_options())
    tasks = list(stream)
    run = out_dir / "run"

    def build_with(checkpoint_dir: Path) -> ContinualTrainer:
        return ContinualTrainer.for_stream(
            stream,
            config=TrainerConfig(**TRAIN_OPTIONS["config"]),
            extension_policy=FixedSchedule(bits_per_task=TRAIN_OPTIONS["bits_per_task"]),
            checkpoint_dir=checkpoint_dir,
            **TRAIN_OPTIONS["model"],
        )

    def build() -> ContinualTrainer:
        return build_with(run)

    build().fit(tasks[:2])
    trainer = build()
    trainer.fit(tasks)  # resumes after two tasks, trains the third
    arrays.update(stored_signs(trainer, tasks))
    arrays["map_i2t"] = trainer.matrix.matrix("i2t")
    arrays["map_t2i"] = trainer.matrix.matrix("t2i")
    out["n_bits"] = [r.n_bits for r in trainer.reports]
    out["best_epochs"] = [r.best_epoch for r in trainer.reports]
    out["losses"] = [r.final_loss for r in trainer.reports]
    for name, value in trainer.model.state_dict().items():
        arrays[f"param.{name}"] = value.detach().cpu().numpy()

    # Ranks that see different checkpoints (no shared filesystem) are refused on every rank, before any collective
    # of training could pair mismatched calls.
    import shutil

    mine = out_dir / f"run_seen_by_rank{ctx.rank}"
    if ctx.rank == 0:
        shutil.copytree(run, mine)
    try:
        build_with(mine).fit(tasks)
    except ValueError as exc:
        out["mismatch_error"] = str(exc)


def cache_check(ctx, clip_dir: Path, out_dir: Path) -> None:
    from test_distributed import cache_inputs

    from pbeh.encoders import CLIPEncoder, FeatureCache

    encoder = CLIPEncoder.from_pretrained(clip_dir, local_files_only=True)
    ids, texts, images = cache_inputs()
    texts_cache = FeatureCache(out_dir / "texts.safetensors", modality="text")
    texts_cache.get_or_encode(ids[:3], texts[:3], encoder.encode_texts, encoder_name=encoder.name)
    texts_cache.get_or_encode(ids, texts, encoder.encode_texts, encoder_name=encoder.name)  # appends the rest
    images_cache = FeatureCache(out_dir / "images.safetensors", modality="image")
    images_cache.get_or_encode(ids, images, encoder.encode_images, encoder_name=encoder.name)


def cli_check(ctx, out_dir: Path) -> None:
    """``pbeh train`` in this process group (as ``torchrun -m pbeh train`` runs it); rank 0's --json summary is kept.
    Last: the command ends the process group."""
    import contextlib

    from test_distributed import CLI_ARGS

    from pbeh.cli import main as cli_main

    with open(out_dir / f"cli_rank{ctx.rank}.json", "w") as sink, contextlib.redirect_stdout(sink):
        code = cli_main([*CLI_ARGS, "--out", str(out_dir / "cli_run")])
    assert code == 0


def main() -> None:
    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    ctx = init_from_env(backend="gloo", timeout_s=120)
    assert ctx is not None
    assert ctx.world_size == 2
    arrays: dict = {}
    out: dict = {"rank": ctx.rank, "world_size": ctx.world_size}
    gather_check(ctx, out)
    step_check(ctx, out)
    train_check(ctx, out_dir, arrays, out)
    if len(sys.argv) > 2:
        cache_check(ctx, Path(sys.argv[2]), out_dir / "cache_ddp")
    np.savez(out_dir / f"rank{ctx.rank}.npz", **arrays)
    (out_dir / f"rank{ctx.rank}.json").write_text(json.dumps(out))
    cli_check(ctx, out_dir)
    assert not torch.distributed.is_initialized()  # the command left the process group


if __name__ == "__main__":
    main()
