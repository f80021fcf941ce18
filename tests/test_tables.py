"""Tables from stored records: exact markdown / LaTeX / CSV with hand-computed mean ± sample std."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from da.experiments.commands import table_main
from da.runs.record import load_records
from da.experiments.tables import make_table, mean_std

# test/target_acc per (task, method) over seeds 0, 1, 2. By hand (x100, sample std with n - 1 = 2):
#   mnist->usps erm  70 72 77: mean 73, deviations -3 -1 4 -> (9+1+16)/2 = 13 -> std 3.606
#   mnist->usps dann 80 84 85: mean 83, deviations -3  1 2 -> (9+1+4)/2  = 7  -> std 2.646
#   usps->mnist erm  60 61 62: mean 61, std 1
#   usps->mnist dann 55 60 59: mean 58, deviations -3  2 1 -> 7 -> std 2.646
#   Avg: erm (73 + 61)/2 = 67.0, dann (83 + 58)/2 = 70.5
ACC = {
    ("mnist->usps", "erm"): [0.70, 0.72, 0.77],
    ("mnist->usps", "dann"): [0.80, 0.84, 0.85],
    ("usps->mnist", "erm"): [0.60, 0.61, 0.62],
    ("usps->mnist", "dann"): [0.55, 0.60, 0.59],
}

CAPTION = ("test/target_acc (x100): mean ± sample std (ddof=1) over n=3 seeds. Model selection: source-val "
           "(max val/source_acc per seed; uses no target label). Bold: best method per task (higher is better). "
           "Avg: mean of the per-task means.")


@pytest.fixture
def stored(tmp_path) -> Path:
    """The records as result.json files on disk, plus one failed run."""
    for (task, method), accs in ACC.items():
        for seed, acc in enumerate(accs):
            d = tmp_path / "sweep" / f"{task.replace('->', '_')}-{method}-{seed}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({
                "schema": 1, "status": "finished", "task": task, "method": method, "seed": seed,
                "metrics": {"test/target_acc": acc, "val/source_acc": 0.95, "val/target_acc": acc + 0.01},
                "error": None}))
    d = tmp_path / "sweep" / "failed"
    d.mkdir()
    (d / "result.json").write_text(json.dumps({
        "schema": 1, "status": "failed", "task": "mnist->usps", "method": "dann", "seed": 3,
        "metrics": {}, "error": "Traceback\nRuntimeError: CUDA out of memory"}))
    return tmp_path / "sweep"


def test_mean_std_is_sample_std():
    assert mean_std([70, 72, 77]) == (73, pytest.approx(13 ** 0.5))
    assert mean_std([5.0]) == (5.0, None)


def test_markdown_table_exact(stored):
    table = make_table(load_records(stored))
    assert table == (
        "| Task | erm | dann |\n"
        "|:--|--:|--:|\n"
        "| mnist->usps | 73.0 ± 3.6 | **83.0 ± 2.6** |\n"
        "| usps->mnist | **61.0 ± 1.0** | 58.0 ± 2.6 |\n"
        "| Avg | 67.0 | **70.5** |\n"
        "\n"
        f"Table: {CAPTION} Excluded: 1 failed run. Recipe: not recorded.\n"
    )


def test_caption_names_the_recipe():
    def rec(method, seed, recipe, where):
        r = {"schema": 1, "status": "finished", "task": "m->u", "method": method, "seed": seed,
             "metrics": {"test/target_acc": 0.5, "val/source_acc": 0.9}}
        if where == "top":
            r["recipe"] = recipe
        else:
            r["config"] = {"recipe": recipe}
        return r

    same = [rec("erm", 0, "digits_tllib", "top"), rec("dann", 0, "digits_tllib", "config")]
    assert make_table(same).rstrip().endswith("Recipe: digits_tllib.")
    mixed = [rec("erm", 0, "digits_tllib", "top"), rec("dann", 0, "digits_dann_paper", "top")]
    assert make_table(mixed).rstrip().endswith(
        "Recipes: digits_dann_paper, digits_tllib (mixed: compare methods only under the same recipe).")


def test_transposed_markdown_and_digits(stored):
    table = make_table(load_records(stored), rows="method", cols="task", digits=2, average=False)
    assert table.splitlines()[:4] == [
        "| Method | mnist->usps | usps->mnist |",
        "|:--|--:|--:|",
        "| erm | 73.00 ± 3.61 | **61.00 ± 1.00** |",
        "| dann | **83.00 ± 2.65** | 58.00 ± 2.65 |",
    ]


def test_latex_booktabs(stored):
    lines = make_table(load_records(stored), fmt="latex").splitlines()
    assert lines[0] == r"\begin{table}[t]"
    assert lines[2].startswith(r"  \caption{test/target\_acc (x100): mean $\pm$ sample std (ddof=1) over n=3 seeds.")
    assert lines[2].endswith(r"Excluded: 1 failed run. Recipe: not recorded.}")
    assert lines[3:] == [
        r"  \begin{tabular}{lrr}",
        r"    \toprule",
        r"    Task & erm & dann \\",
        r"    \midrule",
        r"    mnist$\rightarrow$usps & 73.0 $\pm$ 3.6 & \textbf{83.0 $\pm$ 2.6} \\",
        r"    usps$\rightarrow$mnist & \textbf{61.0 $\pm$ 1.0} & 58.0 $\pm$ 2.6 \\",
        r"    \midrule",
        r"    Avg & 67.0 & \textbf{70.5} \\",
        r"    \bottomrule",
        r"  \end{tabular}",
        r"\end{table}",
    ]


def test_csv(stored):
    lines = make_table(load_records(stored), fmt="csv").splitlines()
    assert lines[0] == "task,method,n,mean,std,best,metric,selection"
    assert lines[1] == "mnist->usps,erm,3,73,3.605551275,0,test/target_acc,source-val"
    assert lines[2] == "mnist->usps,dann,3,83,2.645751311,1,test/target_acc,source-val"
    assert lines[3] == "usps->mnist,erm,3,61,1,1,test/target_acc,source-val"
    assert len(lines) == 5


def test_lower_is_better_ties_uneven_n_and_oracle(stored):
    records = load_records(stored)
    table = make_table(records, higher_is_better=False, average=False)
    assert "| mnist->usps | **73.0 ± 3.6** | 83.0 ± 2.6 |" in table
    assert "(lower is better)" in table
    # drop one seed of a cell: its n is shown, the caption gives the range
    fewer = [r for r in records if not (r["method"] == "erm" and r["task"] == "usps->mnist" and r["seed"] == 2)]
    table = make_table(fewer, average=False)
    assert "| usps->mnist | **60.5 ± 0.7 (n=2)** | 58.0 ± 2.6 |" in table
    assert "n=2-3 seeds (cells with fewer than 3 show their n)" in table
    # equal displayed means are both bold; an oracle method is never bold
    tie = [dict(r, method="dann2") for r in records if r["method"] == "dann"]
    oracle = [dict(r, method="oracle", metrics={**r["metrics"], "test/target_acc": 0.99}) for r in records if r["method"] == "erm"]
    table = make_table(records + tie + oracle, average=False)
    assert "| mnist->usps | 73.0 ± 3.6 | **83.0 ± 2.6** | **83.0 ± 2.6** | 99.0 ± 0.0 |" in table
    assert table.startswith("| Task | erm | dann | dann2 | oracle |")


def test_oracle_selection_is_marked(stored):
    table = make_table(load_records(stored), selection="target-oracle")
    caption = table.splitlines()[-1]
    assert caption.startswith("Table: ORACLE model selection (uses target labels")
    assert "Model selection: target-oracle (max val/target_acc per seed; uses target labels)" in caption


def test_errors_name_the_fix(stored, tmp_path):
    records = load_records(stored)
    with pytest.raises(ValueError, match="unknown metric .*'test/target_ac'.*did you mean 'test/target_acc'"):
        make_table(records, metric="test/target_ac")
    with pytest.raises(ValueError, match="unknown table format 'tex'"):
        make_table(records, fmt="tex")
    with pytest.raises(ValueError, match="no finished run to tabulate .*1 failed"):
        make_table([r for r in records if r["status"] == "failed"])


def test_table_command_writes_the_same_table(stored, tmp_path, capsys):
    out = tmp_path / "t.tex"
    assert table_main([str(stored), "--format", "latex", "-o", str(out)]) == 0
    assert out.read_text() == make_table(load_records(stored), fmt="latex")
    assert table_main([str(stored), "--rows", "method", "--no-average"]) == 0
    assert capsys.readouterr().out == make_table(load_records(stored), rows="method", cols="task", average=False)


def test_split_by_a_sweep_parameter(stored):
    records = load_records(stored)
    for r in records:
        if r["method"] == "dann":
            w = 0.1 if r["seed"] == 0 else 1.0
            r["sweep"] = {"name": "s", "params": {"model.losses[0].init_args.weight": w, "seed": r["seed"]}}
    table = make_table(records, split_by=["model.losses[0].init_args.weight"], average=False)
    # dann seed 0 -> "dann weight=0.1" (80 and 55); seeds 1, 2 -> "dann weight=1.0" (84, 85 and 60, 59)
    assert table.splitlines()[:4] == [
        "| Task | erm | dann weight=0.1 | dann weight=1.0 |",
        "|:--|--:|--:|--:|",
        "| mnist->usps | 73.0 ± 3.6 | 80.0 (n=1) | **84.5 ± 0.7 (n=2)** |",
        "| usps->mnist | **61.0 ± 1.0** | 55.0 (n=1) | 59.5 ± 0.7 (n=2) |",
    ]


def test_table_command_filters_tasks_and_methods(stored, capsys):
    records = load_records(stored)
    task, method = records[0]["task"], records[0]["method"]
    assert table_main([str(stored), "--tasks", task, "--methods", method]) == 0
    kept = [r for r in records if r["task"] == task and r["method"] == method]
    assert capsys.readouterr().out == make_table(kept)
    assert table_main([str(stored), "--methods", "no-such-method"]) == 2


def test_method_order_reads_numbers_as_numbers():
    from da.experiments.tables import method_order
    got = method_order(["dann weight=10", "oracle", "dann weight=3", "ft k=100", "ft k=None", "erm",
                        "dann weight=0.3", "ft k=25", "ft k=25 alpha=1.0", "dann weight=1e-3"])
    assert got == ["erm", "dann weight=1e-3", "dann weight=0.3", "dann weight=3", "dann weight=10",
                   "ft k=None", "ft k=25", "ft k=25 alpha=1.0", "ft k=100", "oracle"]
