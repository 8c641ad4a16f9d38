"""Training loop, evaluation and checkpoints for `sw.models.Network` (the CLI is `python -m sw.train`).

Reproducibility: the model is initialised right after `torch.manual_seed(seed)`, and epoch e shuffles
with a generator seeded by (seed, e) alone, so a run resumed from a checkpoint continues exactly like
an uninterrupted one.
"""

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sw.model_format import deploy_forward
from sw.models import build_model
from sw.quant import make_scheme

__all__ = ["TrainSettings", "TrainError", "build_network", "fit", "float_predictions", "evaluate_deploy",
           "save_checkpoint", "load_checkpoint"]

CHECKPOINT_VERSION = 1


class TrainError(ValueError):
    """A user's mistake in training settings or a checkpoint that does not match them."""


class TrainSettings:
    def __init__(self, model="lfc", scheme="xnor", wbases=1, abases=1, dataset="digits", epochs=10,
                 seed=0, width=None, batch_size=64, lr=2e-3, device="cpu"):
        self.model, self.scheme, self.wbases, self.abases = model, scheme, wbases, abases
        self.dataset, self.epochs, self.seed, self.width = dataset, epochs, seed, width
        self.batch_size, self.lr, self.device = batch_size, lr, device

    def identity(self):
        """Fields a checkpoint must match to be resumed."""
        return {k: getattr(self, k) for k in ("model", "scheme", "wbases", "abases", "dataset", "seed",
                                              "width", "batch_size", "lr", "epochs")}


def build_network(settings, data):
    torch.manual_seed(settings.seed)
    scheme = make_scheme(settings.scheme, settings.wbases, settings.abases)
    return build_model(settings.model, scheme, data.input_shape, data.classes, settings.width)


def _optimizer(net, settings, steps):
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(1, steps))))
    return optimizer, scheduler


def save_checkpoint(path, net, optimizer, scheduler, epoch, settings):
    state = {"version": CHECKPOINT_VERSION, "epoch": epoch, "settings": settings.identity(),
             "model": net.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict()}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, net, optimizer, scheduler, settings):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise TrainError(f"Cannot read checkpoint {path}: {error.strerror or error}") from None
    except Exception:  # torch reports a damaged file with many exception types and long texts
        raise TrainError(f"Checkpoint {path} is damaged or not a torch checkpoint") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise TrainError(f"{path} is not a checkpoint of this trainer (version {CHECKPOINT_VERSION})")
    if state["settings"] != settings.identity():
        diff = sorted(k for k in state["settings"] if state["settings"][k] != settings.identity().get(k))
        raise TrainError(f"Checkpoint {path} was made with different settings ({', '.join(diff)})")
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["epoch"]


def fit(net, data, settings, checkpoint=None, resume=False, progress=True, stop_after=None):
    """Train in place for settings.epochs; returns the list of (epoch, mean loss, train accuracy).

    stop_after: return after this many epochs of this call (the checkpoint then resumes the run).
    """
    device = torch.device(settings.device)
    net.to(device)
    x = torch.from_numpy(data.train_x)
    y = torch.from_numpy(data.train_y)
    steps_per_epoch = max(1, -(-len(x) // settings.batch_size))
    optimizer, scheduler = _optimizer(net, settings, settings.epochs * steps_per_epoch)
    start = 0
    if resume:
        if checkpoint is None or not os.path.exists(checkpoint):
            raise TrainError(f"No checkpoint to resume from at {checkpoint}")
        start = load_checkpoint(checkpoint, net, optimizer, scheduler, settings)
    history = []
    end = settings.epochs if stop_after is None else min(settings.epochs, start + stop_after)
    for epoch in range(start, end):
        net.train()
        generator = torch.Generator().manual_seed(settings.seed * 100003 + epoch)
        order = torch.randperm(len(x), generator=generator)
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not progress,
                   leave=False, dynamic_ncols=True)
        for step in bar:
            index = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            if len(index) < 2:  # batch norm needs two samples
                continue
            images, labels = x[index].to(device), y[index].to(device)
            logits = net(images)
            loss = F.cross_entropy(logits, labels)
            reg = net.regularization()
            objective = loss if reg is None else loss + reg
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            scheduler.step()
            net.constrain()
            total_loss += float(loss.detach()) * len(index)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(index)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}%")
        bar.close()
        history.append((epoch + 1, total_loss / max(1, seen), correct / max(1, seen)))
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{settings.epochs}: loss {history[-1][1]:.4f}, "
                       f"train accuracy {100 * history[-1][2]:.2f}%")
        if checkpoint is not None:
            save_checkpoint(checkpoint, net, optimizer, scheduler, epoch + 1, settings)
    return history


@torch.no_grad()
def float_predictions(net, images, batch_size=256, device="cpu"):
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device)
        out.append(net(batch).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def evaluate_deploy(model, images, batch_size=250, progress=False):
    """Integer logits of the exported model for every image (batched to bound memory)."""
    starts = range(0, len(images), batch_size)
    parts = [deploy_forward(model, images[s:s + batch_size])
             for s in tqdm(starts, desc="deploy (integer) test", disable=not progress, leave=False)]
    return np.concatenate(parts)
