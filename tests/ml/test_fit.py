from __future__ import annotations

import argparse
import copy

import numpy as np
import pytest
import torch
from torch import nn

from ml import crosscheck, fit, train
from ml.model import build_model, split_trunk_tail

TRUNK_BLOCKS = 14


def test_one_training_step_lowers_the_loss():
    torch.manual_seed(0)
    # No BatchNorm, so the eval-mode loss before and after compares like with like.
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    before, _, _, _ = fit.evaluate(model, criterion, [(x, y)], torch.device("cpu"))

    model.train()
    fit.train_one_epoch(
        model, criterion, optimizer, [(x, y)], 1, torch.device("cpu"), 0, scaler, print_freq=10
    )
    after, _, _, _ = fit.evaluate(model, criterion, [(x, y)], torch.device("cpu"))

    assert after < before


def test_progress_is_a_bar_on_a_terminal_and_sparse_lines_in_a_log(capsys, monkeypatch):
    from ml.fit import progress

    with progress(5, "epoch 0", print_freq=2, unit="batch") as bar:
        for _ in range(5):
            bar.set_postfix_str("loss 1.0", refresh=False)
            bar.update()
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert "\r" not in "".join(lines)
    # The opening line, every second update, and the closing line.
    assert [line.split("|")[2].split()[0] for line in lines][-3:] == [
        "2/5",
        "4/5",
        "5/5",
    ]
    assert all(line.startswith("epoch 0:") for line in lines)
    assert "loss 1.0" in lines[-1]

    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    with progress(2, "epoch 1", print_freq=2) as bar:
        bar.update(2)
    out = capsys.readouterr().out
    assert "\r" in out
    assert "2/2" in out


def test_cells_give_each_cell_in_the_view_drawn_for_it_with_its_mask():
    views = [
        torch.full((4, 2), float(v), dtype=torch.float16) + torch.arange(4)[:, None] * 10
        for v in range(3)
    ]
    masks = torch.eye(4, dtype=torch.bool)
    cells = fit.Cells(views, torch.tensor([5, 6, 7, 8]), masks)

    x, y, mask = cells.take(torch.tensor([3, 0, 2]), torch.tensor([2, 1, 0]))

    assert x.dtype == torch.float32
    assert x[:, 0].tolist() == [32.0, 1.0, 20.0]
    assert y.tolist() == [8, 5, 7]
    assert torch.equal(mask, masks[[3, 0, 2]])
    assert cells.take(torch.tensor([1]))[0][0, 0].item() == 10.0  # view 0 by default


def test_val_scores_leave_out_the_classes_a_fold_was_not_taught():
    head = nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        head.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    cells = fit.Cells([torch.tensor([[2.0, 0.0], [0.0, 2.0]])], torch.tensor([1, 2]))
    idx = torch.arange(2)

    _, acc_all, _, _ = fit.evaluate_cells(head, cells, idx, torch.device("cpu"), batch_size=8)
    loss, acc, logits, _ = fit.evaluate_cells(
        head, cells, idx, torch.device("cpu"), batch_size=1, known=torch.tensor([False, True, True])
    )

    assert acc_all == 0.0  # class 0 wins everywhere when it may
    assert acc == 1.0
    assert torch.isinf(logits[:, 0]).all()
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, torch.tensor([1, 2]))))


def _options(**extra: object) -> argparse.Namespace:
    """What both commands' option parsers give for one recipe."""
    recipe: dict[str, object] = {
        "patience": 2,
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "label_smoothing": 0.1,
        "lr_patience": 1,
        "seed": 0,
        "print_freq": 20,
    }
    return argparse.Namespace(**recipe, **extra)


def test_a_tiny_fit_through_train_and_through_crosscheck_agrees(tmp_path):
    """The same cached cells and recipe through ml.train's fit and ml.crosscheck's fold fit
    give the same model, bit for bit. One epoch at seed 0, where the two commands' draws
    coincide (ml.train re-seeds each epoch with seed * 1000 + epoch, the crosscheck seeds one
    stream with seed; after that the orders differ, and Adam turns the rounding of a reordered
    batch into visible differences within a few epochs); --init, so that ml.train's loss is
    masked like the crosscheck's. Three optimiser steps of the whole tail."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", 3, pretrained=None)
    trunk, _ = split_trunk_tail(model, "mobilenet_v2", TRUNK_BLOCKS)
    n_train, n_val = 24, 9
    labels = torch.arange(n_train + n_val) % 3
    images = torch.randn(n_train + n_val, 3, 64, 64) + labels[:, None, None, None] * 0.5
    with torch.inference_mode():
        acts = trunk.eval()(images).to(torch.float16)
    train_acts, val_acts = acts[:n_train], acts[n_train:]
    views = torch.stack([train_acts, train_acts.flip(0)])  # 2 views, distinct
    options = {"epochs": 1, "head_epochs": 0, "batch_size": 8}

    via_train = copy.deepcopy(model)
    _, tail = split_trunk_tail(via_train, "mobilenet_v2", TRUNK_BLOCKS)
    args = _options(init="start.pt", resume=False, **options)
    cache = train.Cache(views.flatten(0, 1), labels[:n_train], val_acts, labels[n_train:], 2)
    torch.manual_seed(1)  # dropout's draws
    state = train.fit_tail(
        args,
        via_train,
        tail,
        cache,
        train.make_fit(args, via_train, tail, tmp_path / "last.pt"),
        torch.device("cpu"),
        tmp_path / "last.pt",
        3,
    )
    assert state.best_state is not None
    via_train.load_state_dict(state.best_state)

    # The crosscheck's views: the eval view (view 0) and the augmented ones.
    via_crosscheck = copy.deepcopy(model)
    fold = crosscheck.Fold(
        _options(head_only=False, trunk_blocks=TRUNK_BLOCKS, **options),
        "all",
        via_crosscheck,
        copy.deepcopy(model.state_dict()),
        torch.ones(n_train + n_val, 3, dtype=torch.bool),
        labels,
    )
    torch.manual_seed(1)
    fold.fit(
        torch.cat([views[0], val_acts]),
        torch.cat([views[1], val_acts])[None],
        np.arange(n_train),
        np.arange(n_train, n_train + n_val),
        epochs=1,
        head_epochs=0,
    )

    assert [row["train_loss"] for row in fold.history] == [r["train_loss"] for r in state.history]
    assert [row["val_acc"] for row in fold.history] == [row["val_acc"] for row in state.history]
    assert fold.history[0]["val_loss"] == pytest.approx(state.history[0]["val_loss"], rel=1e-6)
    got, want = via_crosscheck.state_dict(), via_train.state_dict()
    assert any(not torch.equal(want[k], model.state_dict()[k]) for k in want)  # it trained
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
