"""One rank of the DDP check in test_torch_adapter.py (run as a script: rank world init_file out_file).

Every rank builds the same dataset and model, runs DistributedGraftEpochSampler over a
gloo process group and writes its view (the gathered subset, its weights, its own
iteration order per epoch) as JSON. Rank 0 also runs the single-process sampler in the
same process, for the comparison.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn


def data(n=1000, d=6, classes=3):
    g = torch.Generator().manual_seed(7)
    centres = torch.randn(classes, d, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, d, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def model(d=6, classes=3):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, classes))


def main():
    rank, world, init_file, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from graft_array.adapters.torch import DistributedGraftEpochSampler, GraftEpochSampler

    ds, net = data(), model()
    ddp = nn.parallel.DistributedDataParallel(net)  # looked through by the sampler's pass
    result = {"rank": rank}
    for drop_last in (False, True):
        s = DistributedGraftEpochSampler(ds, ddp, fraction=0.2, batch_size=100, progress=False, seed=3,
                                         drop_last=drop_last, features="embeddings", pool_fraction=None)
        result["world"] = s.num_replicas
        epochs = result[f"drop_last={drop_last}"] = []
        for epoch in range(2):
            s.set_epoch(epoch)
            order = list(iter(s))
            epochs.append({"subset": s.indices.tolist(), "weights": s.weights.tolist(), "order": order,
                           "len": len(s)})
    # a pool and CREST's exclusion: each rank records the losses of its own part of the epoch; the pass gathers
    # them, so every rank keeps the same history and draws the same candidates
    s = DistributedGraftEpochSampler(ds, ddp, fraction=0.2, batch_size=100, progress=False, seed=3, refresh_every=1,
                                     pool_fraction=0.6, exclude_learned=True, learned_window=1, learned_threshold=1.0)
    X, Y = ds.tensors
    epochs = result["pool+excl"] = []
    for epoch in range(3):
        s.set_epoch(epoch)
        order = torch.tensor(list(iter(s)), dtype=torch.int64)
        epochs.append({"subset": s.indices.tolist(), "candidates": s.candidates.tolist(),
                       "learned": torch.nonzero(s.learned).flatten().tolist()})
        s.record_losses(order, torch.zeros(len(order)))  # "trained to zero loss": learned at the next pass
    with torch.no_grad():  # the model never changes here: each sample's loss is a constant
        result["loss"] = torch.nn.functional.cross_entropy(net(X), Y, reduction="none").tolist()
    if rank == 0:
        # select calls of 5 batches, as on each rank (select's budget is per call)
        single = GraftEpochSampler(ds, net, fraction=0.2, batch_size=100, batches_per_call=5, progress=False, seed=3,
                                   features="embeddings", pool_fraction=None)
        result["single"] = single.indices.tolist()
    with open(out, "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
