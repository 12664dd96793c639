"""NoProp-DT on sklearn's bundled digits reaches backprop's accuracy (within 1.5 points)."""

import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from learners.noprop import cosine_alpha_bar, train_backprop_mlp, train_noprop_dt


def test_noprop_dt_matches_backprop_on_digits():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    Xtr, Xte = torch.tensor(Xtr, dtype=torch.float32), torch.tensor(Xte, dtype=torch.float32)
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    t0 = time.perf_counter()
    noprop = train_noprop_dt(Xtr, ytr, 10, epochs=70, hidden=64, lr=2e-3, seed=0)
    acc_np = (noprop.predict(Xte, torch.Generator().manual_seed(0)) == yte).float().mean().item() * 100
    t1 = time.perf_counter()
    mlp = train_backprop_mlp(Xtr, ytr, 10, epochs=70, hidden=128, seed=0)
    with torch.no_grad():
        acc_bp = (mlp(Xte).argmax(-1) == yte).float().mean().item() * 100
    print(f"NoProp-DT {acc_np:.2f}% ({t1 - t0:.1f}s) vs backprop {acc_bp:.2f}%")
    assert acc_bp > 95
    assert abs(acc_np - acc_bp) <= 1.5


def test_cosine_schedule_runs_noise_to_label_with_positive_snr_steps():
    abar = cosine_alpha_bar(10)
    snr = abar / (1 - abar)
    assert abar[0] < 0.02 and abar[-1] > 0.98
    assert (snr[1:] - snr[:-1] > 0).all()  # every block's loss weight is positive (Halachev bug)
