"""The probe-side phases, on the host CPU: the probe fit and predict, the replay buffer, the entropy statistics.

What the probe worker and the driver do once per POISE step, at the official sizes (a full 4096-row buffer,
one step of 256 prompts x 2 rollouts), on synthetic hidden-state-like rows.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from benchmarks.gpu_check.settings import Settings
from benchmarks.gpu_check.timing import describe, timed
from poise_verl.config import default_poise_settings
from poise_verl.core.buffer import ProbeReplayBuffer
from poise_verl.core.entropy import DEFAULT_ENTROPY_FEATURES, entropy_feature_matrix, entropy_statistics
from poise_verl.core.probe import PCARidgeProbe


@contextlib.contextmanager
def count_decomposition_time(store: list[float]):
    """Time every ``torch.linalg`` svd / eigh / qr call inside the block (the probe's PCA), then restore them.

    The probe looks these up on ``torch.linalg`` at call time, so wrapping the attributes splits a fit's
    time into the PCA decomposition and the rest without touching core.
    """
    originals = {name: getattr(torch.linalg, name) for name in ("svd", "eigh", "qr")}

    def wrap(original):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                store.append(time.perf_counter() - start)

        return wrapped

    for name, original in originals.items():
        setattr(torch.linalg, name, wrap(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.linalg, name, original)


def synthetic_features(rows: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Hidden-state-like rows: a decaying spectrum (a few strong directions) plus isotropic noise."""
    rank = min(256, width)
    decay = 1.0 / torch.arange(1, rank + 1, dtype=torch.float32).sqrt()
    basis = torch.randn(rank, width, generator=generator)
    return torch.randn(rows, rank, generator=generator) * decay @ basis + 0.1 * torch.randn(
        rows, width, generator=generator
    )


def probe_rows(settings: Settings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A full buffer: ``(N, H)`` prompt and response pools, ``(N, 3)`` entropy scalars, ``(N,)`` targets."""
    width, rows = settings.model["hidden_size"], settings.probe_rows
    generator = torch.Generator().manual_seed(settings.seed + 2)
    prompt = synthetic_features(rows, width, generator)
    response = synthetic_features(rows, width, generator)
    scalars = torch.rand(rows, len(DEFAULT_ENTROPY_FEATURES), generator=generator) * 3
    targets = (torch.rand(rows, generator=generator) < 0.5).to(torch.float32)  # n = 2: sibling reward 0 or 1
    return prompt, response, scalars, targets


def phase_probe(record: dict, settings: Settings, report, data) -> None:
    """The probe worker's CPU work for one step: fit from scratch on a full buffer, predict one batch."""
    prompt, response, scalars, targets = data
    width, rows, batch = settings.model["hidden_size"], settings.probe_rows, settings.step_rollouts
    record.update(rows=rows, predict_rows=batch, feature_width=width, scalars=scalars.shape[1])
    all_threads = torch.get_num_threads()
    record["threads_all"] = all_threads

    # The project's defaults (hydra_configs/poise_trainer.yaml: the official PCA 32 / 64, ridge alpha 100).
    defaults = default_poise_settings().probe
    probe = PCARidgeProbe(
        prompt_components=defaults.prompt_pca_dim,
        response_components=defaults.response_pca_dim,
        alpha=defaults.ridge.alpha,
        seed=settings.seed,
        feature_order=defaults.feature_order,
    )
    fit_metrics: list[dict] = []
    # ProbeWorker calls torch.set_num_threads(1): that is the production setting.
    for label, threads in (("1_thread", 1), ("all_threads", all_threads)):
        torch.set_num_threads(threads)
        try:
            svd_times: list[float] = []
            with count_decomposition_time(svd_times):
                times = timed(
                    lambda: fit_metrics.append(probe.fit(prompt, response, scalars, targets)),
                    "cpu",
                    settings.probe_fit_reps,
                    settings.probe_budget_s,
                )
            record[f"fit_{label}_s"] = describe(times)
            record[f"fit_{label}_decomposition_share"] = sum(svd_times) / sum(times)
            report.log(
                f"  fit ({label}): median {np.median(times):.3f}s over {len(times)}, "
                f"PCA decomposition (svd/eigh/qr) {100 * sum(svd_times) / sum(times):.0f}% of it"
            )
            predict_times = timed(
                lambda: probe.predict(prompt[:batch], response[:batch], scalars[:batch]),
                "cpu",
                20,
                settings.probe_budget_s,
            )
            record[f"predict_{label}_s"] = describe(predict_times)
        finally:
            torch.set_num_threads(all_threads)
        report.save()
    record["fit_metrics"] = fit_metrics[-1]
    record["predictions_finite"] = bool(
        torch.isfinite(probe.predict(prompt[:batch], response[:batch], scalars[:batch])).all()
    )
    record["probe_on_gpu"] = "not supported: probe.py moves its inputs to CPU float64 (_as_matrix), by design"

    # The PCA of one raw (centred, unscaled) 4096 x H block, two ways, single-threaded like the worker: the exact
    # top-64 axes from the Gram matrix (what core does for small blocks) and torch's randomized SVD.
    if report.elapsed() > settings.optional_deadline_s:
        record["alt_pca"] = "skipped: the run is past optional_deadline_s"
    else:
        torch.set_num_threads(1)
        try:
            centred = response.double() - response.double().mean(0)
            start = time.perf_counter()
            _, eigenvectors = torch.linalg.eigh(centred.T @ centred)
            record["alt_gram_eigh_1_thread_s"] = time.perf_counter() - start
            exact = eigenvectors[:, -64:]  # (H, 64)
            start = time.perf_counter()
            _, _, approximate = torch.svd_lowrank(centred, q=64 + 16, niter=4)
            record["alt_lowrank_svd_1_thread_s"] = time.perf_counter() - start
            # 1.0 when the randomized top-64 subspace equals the exact one.
            record["alt_lowrank_subspace_overlap"] = float((exact.T @ approximate[:, :64]).pow(2).sum() / 64)
        finally:
            torch.set_num_threads(all_threads)
        report.save()


def phase_buffer(record: dict, settings: Settings, data) -> None:
    """Buffer at capacity: insert one step's rollouts (evicting as many), then read every row for the fit."""
    prompt, response, scalars, targets = data
    rows, batch = settings.probe_rows, settings.step_rollouts
    buffer = ProbeReplayBuffer({"math": rows, "code": rows, "other": rows})
    uids = [f"old{i // 2}" for i in range(rows)]
    buffer.add_groups(prompt, response, scalars, targets, uids, ["math"] * rows)
    step_counter = iter(range(10**6))

    def insert_and_read():
        tag = next(step_counter)
        new_uids = [f"s{tag}_{i // 2}" for i in range(batch)]
        buffer.add_groups(
            prompt[:batch], response[:batch], scalars[:batch], targets[:batch], new_uids, ["math"] * batch
        )
        buffer.dataset()

    record["buffer_insert_and_dataset_s"] = describe(
        timed(insert_and_read, "cpu", 5, settings.probe_budget_s)
    )
    record["buffer_rows_after"] = buffer.num_rows


def phase_entropy_statistics(record: dict, settings: Settings, report) -> None:
    """Entropy statistics of one step's rollouts on the driver (CPU), padded to the max response width."""
    batch, width_t = settings.step_rollouts, settings.entropy_width
    generator = torch.Generator().manual_seed(settings.seed + 3)
    lengths = torch.randint(width_t // 8, width_t + 1, (batch,), generator=generator)
    mask = torch.arange(width_t).unsqueeze(0) < lengths.unsqueeze(1)
    entropies = torch.rand(batch, width_t, generator=generator) * 3
    response_ids = torch.randint(0, settings.end_of_thinking_id, (batch, width_t), generator=generator)
    close = (torch.rand(batch, generator=generator) * lengths.float()).long()  # where </think> falls
    has_close = torch.rand(batch, generator=generator) < 0.9  # 10%: thinking cut off by the length limit
    response_ids[has_close, close[has_close]] = settings.end_of_thinking_id

    def statistics(device: str):
        e, m, ids = entropies.to(device), mask.to(device), response_ids.to(device)

        def once():
            stats = entropy_statistics(e, m, ids, settings.end_of_thinking_id)
            return entropy_feature_matrix(stats).cpu()

        return once

    record["entropy_stats_cpu_s"] = describe(timed(statistics("cpu"), "cpu", 10, settings.probe_budget_s))
    record["entropy_width"] = width_t
    if settings.device.startswith("cuda") and report.elapsed() < settings.optional_deadline_s:
        once = statistics(settings.device)
        once()
        record["entropy_stats_gpu_s"] = describe(timed(once, settings.device, 10, settings.probe_budget_s))
