"""Raw images and texts -> a Retriever with a CLIP encoder -> search by text and by image. No download.

Run:  OMP_NUM_THREADS=1 python examples/04_retriever_tiny_clip.py

A real CLIP is a checkpoint you load once (``CLIPEncoder.from_pretrained("openai/clip-vit-base-patch32")`` or a local
folder). So that this example runs anywhere in seconds, it builds a *tiny random* CLIP in memory (sizes as in
transformers' own tests) with a byte-level tokenizer: its features mean nothing, the plumbing is the real one. To
use a real checkpoint, set ``CLIP_PATH`` to a folder written by ``save_pretrained``.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from pbeh import Retriever, TrainerConfig
from pbeh.data import class_incremental_split
from pbeh.encoders import CLIPEncoder

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()


def tiny_random_clip() -> CLIPEncoder:
    """A CLIP with random weights: 32-d embeddings, 30x30 images, a tokenizer over bytes (built in memory)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = [chr(c) for c in bs] + [chr(256 + i) for i in range(256 - len(bs))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    sizes = dict(hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sizes,
        ),
        vision_config=dict(image_size=30, patch_size=2, **sizes),
        projection_dim=32,
    )
    torch.manual_seed(0)
    processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    return CLIPEncoder(CLIPModel(config), tokenizer, processor, name="tiny-random-clip")


path = os.environ.get("CLIP_PATH")
clip = CLIPEncoder.from_pretrained(path, local_files_only=True) if path else tiny_random_clip()

# Some "photos" and their captions, four classes.
rng = np.random.default_rng(0)
words = [["cat", "kitten"], ["dog", "puppy"], ["sea", "beach"], ["car", "road"]]
classes = np.arange(64) % 4
photos = [Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)) for _ in classes]
captions = [f"a {rng.choice(words[c])} and a {rng.choice(words[c])}" for c in classes]

retriever = Retriever.create(encoder=clip, n_bits=16, hidden_dims=(32,), config=TrainerConfig(epochs=3, lr=1e-3))
# Features once, with the retriever's encoder and settings, then a class-incremental stream of two tasks.
stream = class_incremental_split(
    retriever.encode_images(photos), retriever.encode_texts(captions), classes, n_tasks=2, query_size=4, seed=0
)
retriever.learn(stream)

# Raw items go straight in: both modalities as pairs (one id each), with metadata.
new_photos = [Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)) for _ in range(3)]
new_captions = ["a kitten on a sofa", "a puppy in the park", "waves on the beach"]
retriever.add(images=new_photos, texts=new_captions, metadata=[{"caption": c} for c in new_captions])

for hit in retriever.search(text="a small dog", k=3):
    print(f"text query -> image {hit.id} score {hit.score:.3f} task {hit.task} {hit.metadata}")
for hit in retriever.search(image=new_photos[0], k=3):
    print(f"image query -> text {hit.id} score {hit.score:.3f} task {hit.task} {hit.metadata}")

with tempfile.TemporaryDirectory() as folder:
    retriever.save(folder)  # the encoder's files go in the folder too: loading needs no network
    loaded = Retriever.load(folder)
    assert loaded.search(text="a small dog", k=3).ids.tolist() == retriever.search(text="a small dog", k=3).ids.tolist()
    print("saved with its encoder and loaded offline:", sorted(os.listdir(folder)))
