"""The GPU check's table in docs/PERFORMANCE.md is the one its committed report measured.

``python -m benchmarks.gpu_check`` wrote docs/results/gpu_check_h200.json on an H200; each row of the table under
"## Results" is read from the text and recomputed from that report here, so a new check whose report replaces the
committed one fails until the page says its figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from markdown_tables import section, table_rows

ROOT = Path(__file__).resolve().parents[2]
REPORT = json.loads((ROOT / "docs" / "results" / "gpu_check_h200.json").read_text())
PHASES, SUMMARY = REPORT["phases"], REPORT["summary"]


def _rows() -> dict[str, str]:
    return dict(table_rows(section(ROOT / "docs" / "PERFORMANCE.md", "## Results"), 2))


def _timing(block: dict) -> str:
    return f"{block['median']:.3f} [{block['min']:.3f}-{block['max']:.3f}]"


forward, probe = PHASES["forward"], PHASES["probe"]
low, high = SUMMARY["capture_overhead_ci95_pct"]
EXPECTED = {
    "batch": f"{forward['sequences']} rollouts, {forward['tokens']:,} tokens, {forward['micro_batches']} packed "
             "micro-batches",
    "forward, no capture (s): median [min-max], n=8": _timing(forward["without"]),
    "forward, with capture on layer 19, k=10 (s), n=8": _timing(forward["with"]),
    "**capture overhead**, ratio of medians": f"**+{SUMMARY['capture_overhead_pct']:.2f}%** (paired bootstrap 95% "
                                              f"interval [+{low:.2f}%, +{high:.2f}%])",
    "run-to-run noise of one condition": f"{SUMMARY['capture_noise_pct']:.2f}%",
    "hook alone, per forward": f"{1000 * PHASES['hook_alone']['per_batch_s']:.2f} ms, "
                               f"**{SUMMARY['hook_alone_pct_of_forward']:.3f}%** of the forward",
    "forward throughput": f"{forward['tokens_per_s']:,.0f} tokens/s, {forward['achieved_tflops']:.1f} TFLOP/s; "
                          f"peak memory {forward['peak_gpu_memory_gib']:.1f} GiB",
    "probe fit, 4096-row buffer, 1 thread / 16 threads (s)": f"{probe['fit_1_thread_s']['median']:.3f} / "
                                                             f"{probe['fit_all_threads_s']['median']:.3f}",
    "one PCA block, Gram + eigh / randomized (s)": f"{probe['alt_gram_eigh_1_thread_s']:.3f} / "
                                                   f"{probe['alt_lowrank_svd_1_thread_s']:.3f} (subspace overlap "
                                                   f"{probe['alt_lowrank_subspace_overlap']:.3f})",
    "probe predict, 512 rows (ms)": f"{1000 * probe['predict_1_thread_s']['median']:.1f}",
    "buffer insert + read at capacity (ms)": f"{1000 * PHASES['buffer']['buffer_insert_and_dataset_s']['median']:.1f}",
    "entropy statistics, 512 responses (ms)": f"{1000 * PHASES['entropy_statistics']['entropy_stats_cpu_s']['median']:.1f}",
    "step lower bound used (generation excluded)": f"{SUMMARY['step_lower_bound_s']:.1f} s",
    "probe fit, % of step (1 thread / all threads)": f"{SUMMARY['probe_fit_pct_of_step']:.2f}% / "
                                                     f"{SUMMARY['probe_fit_all_threads_pct_of_step']:.2f}%",
    "**probe work the trainer waits for** (predict + entropy statistics), % of step":
        f"**{SUMMARY['probe_critical_path_pct_of_step']:.3f}%**",
    "all probe work in series, % of step (upper bound)": f"{SUMMARY['probe_total_pct_of_step']:.2f}%",
}


@pytest.mark.parametrize("row", sorted(EXPECTED))
def test_a_gpu_check_row_is_its_report(row):
    assert _rows()[row] == EXPECTED[row]


def test_the_checks_passed_and_the_setting_is_the_pages():
    rows = _rows()
    assert PHASES["checks"]["capture_equal"] and PHASES["checks"]["packed_attention_ok"] and SUMMARY["checks_passed"]
    assert rows["check: captured features == pooled `output_hidden_states`"] == (
        f"True (max rel diff {PHASES['checks']['capture_max_rel_diff']})")
    assert (PHASES["environment"]["capture_layer"], PHASES["environment"]["pool_tokens"]) == (19, 10)
    assert PHASES["environment"]["card"] == "NVIDIA H200" and forward["without"]["n"] == forward["with"]["n"] == 8
