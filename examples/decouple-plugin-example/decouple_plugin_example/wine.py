"""The wine task's data and model (imported by workers only)."""

import numpy as np
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from torch import nn


def load_data():
    """x_train, y_train, x_val, y_val: a fixed stratified split, standardized with training statistics."""
    d = load_wine()
    x_tr, x_va, y_tr, y_va = train_test_split(d.data, d.target, test_size=0.25, stratify=d.target, random_state=0)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    return ((x_tr - mean) / std).astype(np.float32), y_tr, ((x_va - mean) / std).astype(np.float32), y_va


def build_model() -> nn.Module:
    """13-32-3 with BatchNorm (the worker seeds torch before calling this)."""
    return nn.Sequential(nn.Linear(13, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
