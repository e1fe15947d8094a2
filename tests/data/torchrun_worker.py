"""Run by torchrun in test_shard_loader: each rank reads through ShardedLoader in both modes,
with rank and world size taken from torch.distributed, and rank 0 writes what every rank saw."""

import json
import sys

import torch.distributed as dist

from itwinai_hpc.data.dataset import ShardedLoader

manifest, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
seen = {}
for mode in ("memory", "stream"):
    for remainder in ("keep", "pad"):
        loader = ShardedLoader(manifest, "train", 64, rank_remainder=remainder,
                               return_index=True, mode=mode)
        epochs = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            epochs.append([int(i) for _, _, idx in loader for i in idx])
        seen[f"{mode}-{remainder}"] = {"batches": len(loader), "epochs": epochs}
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, seen)
if dist.get_rank() == 0:
    with open(out, "w") as f:
        json.dump(gathered, f)
dist.destroy_process_group()
