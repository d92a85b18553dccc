"""``churn-risk``: a 12-feature tabular churn model (small MLP) as one ONNX graph.

The data are synthetic, drawn with a fixed seed from a *known* logistic process
(:data:`COEFFICIENTS` on the raw features plus a new-customer bump), so the best achievable
AUC is known too and recorded next to the model's (``bayes_auc``). The graph standardises the
raw features itself (train-set mean and std baked in as constants), so callers send the
numbers as they are: ``features`` float32 ``[batch, 12]`` -> ``probability`` ``[batch, 1]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.modelbuild.common import (
    Progress,
    binary_auc,
    export_onnx,
    now_iso,
    ort_session,
    prepare_dir,
    seed_all,
    toolchain,
    torch_threads,
    write_manifest,
)
from app.registry import Batching, Manifest, file_sha256

NAME = "churn-risk"
VERSION = "1"
DATA_SEED = 5_150
TRAIN_SEED = 77
TRAIN_SIZE = 8_000
HELDOUT_SIZE = 2_000
EPOCHS = 40
BATCH = 256

FEATURE_NAMES: tuple[str, ...] = (
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "support_tickets_90d",
    "logins_30d",
    "days_since_last_login",
    "num_products",
    "late_payments_12m",
    "contract_months_remaining",
    "discount_pct",
    "nps_score",
    "avg_session_minutes",
)
N_FEATURES = len(FEATURE_NAMES)

INTERCEPT = -0.2
NEW_CUSTOMER_BUMP = 0.9
"""Added to the logit when tenure_months < 6: the non-linearity the MLP has to find."""
COEFFICIENTS: dict[str, float] = {
    "tenure_months": -0.035,
    "monthly_charges": 0.015,
    "total_charges": 0.0,
    "support_tickets_90d": 0.35,
    "logins_30d": -0.05,
    "days_since_last_login": 0.03,
    "num_products": -0.3,
    "late_payments_12m": 0.45,
    "contract_months_remaining": -0.1,
    "discount_pct": -0.02,
    "nps_score": -0.25,
    "avg_session_minutes": -0.02,
}
CENTRES = {"monthly_charges": 70.0, "num_products": 1.0, "nps_score": 7.0}


def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features [n, 12] float32, churned [n] 0/1, true probability [n])``."""
    engagement = rng.beta(2.0, 2.0, n)
    unhappiness = rng.beta(2.0, 5.0, n)
    tenure = rng.integers(1, 73, n).astype(np.float64)
    monthly = np.clip(rng.normal(70.0, 25.0, n), 18.0, 120.0)
    cols = {
        "tenure_months": tenure,
        "monthly_charges": monthly,
        "total_charges": tenure * monthly * rng.lognormal(0.0, 0.08, n),
        "support_tickets_90d": rng.poisson(0.5 + 3.0 * unhappiness).astype(np.float64),
        "logins_30d": rng.poisson(2.0 + 25.0 * engagement).astype(np.float64),
        "days_since_last_login": np.clip(rng.exponential(2.0 + 20.0 * (1 - engagement)), 0, 90),
        "num_products": rng.choice([1, 2, 3, 4, 5], n, p=[0.4, 0.3, 0.15, 0.1, 0.05]),
        "late_payments_12m": rng.poisson(0.2 + 1.5 * unhappiness).astype(np.float64),
        "contract_months_remaining": np.where(
            rng.random(n) < 0.5, 0.0, rng.integers(1, 25, n).astype(np.float64)
        ),
        "discount_pct": rng.choice([0.0, 0.0, 0.0, 5.0, 10.0, 15.0, 20.0, 25.0], n),
        "nps_score": np.clip(np.round(rng.normal(8.5 - 9.0 * unhappiness, 1.5)), 0, 10),
        "avg_session_minutes": rng.lognormal(1.5 + 1.2 * engagement, 0.4),
    }
    logit = np.full(n, INTERCEPT) + NEW_CUSTOMER_BUMP * (tenure < 6)
    for name, weight in COEFFICIENTS.items():
        logit += weight * (cols[name] - CENTRES.get(name, 0.0))
    probability = 1.0 / (1.0 + np.exp(-logit))
    churned = (rng.random(n) < probability).astype(np.float32)
    features = np.stack([cols[name] for name in FEATURE_NAMES], axis=1).astype(np.float32)
    return features, churned, probability


class ChurnMLP(torch.nn.Module):
    """Standardise (constants from the training set) -> 12-32-16-1 MLP -> sigmoid."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(N_FEATURES, 32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, 16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 1),
        )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net((features - self.mean) / self.std)
        return out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


def train(x: np.ndarray, y: np.ndarray) -> ChurnMLP:
    """Mini-batch Adam on binary cross-entropy, fixed seed and schedule, one thread."""
    with torch_threads(1):
        return _train(x, y)


def _train(x: np.ndarray, y: np.ndarray) -> ChurnMLP:
    seed_all(TRAIN_SEED)
    model = ChurnMLP(x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    features = torch.from_numpy(x)
    labels = torch.from_numpy(y).unsqueeze(1)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    model.train()
    for _ in range(EPOCHS):
        permutation = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), BATCH):
            idx = permutation[start : start + BATCH]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model.logits(features[idx]), labels[idx]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model


def build(models_dir: Path, progress: Progress) -> Manifest:
    """Sample the data, train, export, score the held-out rows with ONNX Runtime, publish."""
    rng = np.random.default_rng(DATA_SEED)
    x_train, y_train, _ = sample(TRAIN_SIZE, rng)
    x_test, y_test, p_true = sample(HELDOUT_SIZE, rng)
    model = train(x_train, y_train)

    folder = prepare_dir(models_dir, NAME, VERSION)
    onnx_path = folder / "model.onnx"
    export_onnx(
        model,
        (torch.from_numpy(x_test[:4]),),
        onnx_path,
        input_names=["features"],
        output_names=["probability"],
        dynamic_axes={"features": {0: "batch"}, "probability": {0: "batch"}},
    )
    onnx_prob = ort_session(onnx_path).run(None, {"features": x_test})[0][:, 0]
    with torch.no_grad():
        torch_prob = model(torch.from_numpy(x_test)).numpy()[:, 0]
    progress(f"{NAME}:{VERSION} trained and exported")
    metrics = {
        "heldout_auc": round(binary_auc(y_test, onnx_prob), 4),
        "heldout_accuracy": round(float(((onnx_prob >= 0.5) == (y_test == 1)).mean()), 4),
        "heldout_brier": round(float(np.mean((onnx_prob - y_test) ** 2)), 4),
        "bayes_auc": round(binary_auc(y_test, p_true), 4),
        "heldout_churn_rate": round(float(y_test.mean()), 4),
        "heldout_size": HELDOUT_SIZE,
        "train_size": TRAIN_SIZE,
        "onnx_vs_torch_max_abs_diff": float(np.abs(onnx_prob - torch_prob).max()),
    }
    manifest = Manifest(
        name=NAME,
        version=VERSION,
        kind="tabular",
        sha256=file_sha256(onnx_path),
        input_schema={
            "type": "object",
            "properties": {
                "features": {
                    "type": "array",
                    "items": {"type": "number"},
                    "minItems": N_FEATURES,
                    "maxItems": N_FEATURES,
                }
            },
            "required": ["features"],
        },
        output_schema={
            "type": "object",
            "properties": {"probability": {"type": "number", "minimum": 0, "maximum": 1}},
            "required": ["probability"],
        },
        batching=Batching(max_batch_size=1024, max_delay_ms=2),
        n_features=N_FEATURES,
        feature_names=list(FEATURE_NAMES),
        metrics=metrics,
        provenance={
            "data": "synthetic, known logistic process (see app/modelbuild/churn.py)",
            "data_seed": DATA_SEED,
            "generating_process": {
                "intercept": INTERCEPT,
                "coefficients": COEFFICIENTS,
                "centres": CENTRES,
                "new_customer_bump": {"when": "tenure_months < 6", "logit": NEW_CUSTOMER_BUMP},
            },
            "architecture": "standardise (baked in) -> 12-32-16-1 MLP (ReLU) -> sigmoid",
            "training": {"optimizer": "Adam", "lr": 3e-3, "epochs": EPOCHS, "seed": TRAIN_SEED},
            **toolchain(),
        },
        created_at=now_iso(),
    )
    write_manifest(folder, manifest)
    return manifest
