"""pbeh.Retriever on features you computed yourself: learn two tasks, add items with metadata, search, save, load.

Run:  OMP_NUM_THREADS=1 python examples/03_retriever_features.py

The features are a seeded synthetic stream (64-d "images", 32-d "texts"), so nothing is downloaded. With real data
the features come from your encoder or your cache; the Retriever only needs their widths.
"""

from __future__ import annotations

import tempfile

import torch

from pbeh import Retriever, TrainerConfig
from pbeh.data import synthetic_stream

torch.set_num_threads(1)

stream = synthetic_stream(n_tasks=3, items_per_class=40, seed=0)
retriever = Retriever.create(
    image_dim=stream.image_dim,
    text_dim=stream.text_dim,
    n_bits=16,
    hidden_dims=(64,),
    config=TrainerConfig(epochs=5, batch_size=128, lr=1e-3),
)

# learn: the continual recipe, one task at a time; each task's database goes into the indexes.
for report in retriever.learn([stream[0], stream[1]]):
    print(f"learned {report.name}: {report.n_bits} bits, mAP image→text {report.map_i2t[-1]:.3f}")

# add: more items (here: texts of the third task, without training on it), with ids and metadata.
new_texts = stream[2].database.text[:5]
ids = retriever.add(
    text_features=new_texts,
    ids=[90_001, 90_002, 90_003, 90_004, 90_005],
    metadata=[{"caption": f"caption number {i}"} for i in range(5)],
)
print("added ids:", ids.tolist())

# search: an image (its features) finds texts; each hit has an id, a score, the task that stored it and metadata.
hits = retriever.search(image_features=stream[2].database.image[0], k=5)
for hit in hits:
    print(f"  id {hit.id:>6}  score {hit.score:6.3f}  task {hit.task}  metadata {hit.metadata}")

# save / load: one folder (configs + safetensors), replaced atomically; the loaded retriever answers the same.
with tempfile.TemporaryDirectory() as folder:
    retriever.save(folder)
    loaded = Retriever.load(folder)
    again = loaded.search(image_features=stream[2].database.image[0], k=5)
    assert again.ids.tolist() == hits.ids.tolist()
    print(f"saved and loaded: {loaded}")
    # ... and it keeps learning where it stopped
    (report,) = loaded.learn(stream[2])
    print(f"learned {report.name} after loading: {report.n_bits} bits, {loaded.trainer.n_tasks_done} tasks in all")
