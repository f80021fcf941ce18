"""benchmarks/peers.py: argument parsing, jobs, the table, the shared networks. The peers are never imported here
(CI does not install them); the benchmark itself is run by hand (benchmarks/README.md)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


peers = _load("peers")
peer_nets = _load("peer_nets")


def test_importing_the_script_imports_no_peer():
    assert not {"skada", "pytorch_adapt", "skorch"} & set(sys.modules)


def test_quick_and_default_arguments():
    q = peers.parse_args(["--quick"])
    assert (q.seeds, q.epochs, len(q.tasks)) == ([0], 10, 2)
    assert q.tasks[0] == "amazon_dann/books->amazon_dann/kitchen"
    d = peers.parse_args([])
    assert (d.seeds, d.epochs, len(d.tasks)) == ([0, 1, 2], 48, 4)
    assert d.methods == ["erm", "dann", "dan", "coral", "mcc", "mdd"]
    every = peers.parse_args(["--pairs", "all"])
    assert len(every.tasks) == 12 and len(set(every.tasks)) == 12


@pytest.mark.parametrize("argv", [["--pairs", "books->books"], ["--pairs", "books->toys"], ["--epochs", "0"],
                                  ["--pairs", "books"]])
def test_bad_arguments_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as err:
        peers.parse_args(argv)
    assert err.value.code == 2
    assert ("must be positive" if argv[0] == "--epochs" else "bad pair") in capsys.readouterr().err


def test_jobs_share_one_step_budget(tmp_path):
    args = peers.parse_args(["--pairs", "books->dvd", "--epochs", "3", "--seeds", "0", "1", "--methods", "erm",
                             "dann"])
    data = {args.tasks[0]: {"data": "x.pt", "n_s": 2000, "n_t": 1990, "n_test": 3000}}
    jobs = {f: peers.make_jobs(args, data, f, tmp_path) for f in peers.FRAMEWORKS}
    assert len(jobs["da"]) == 4
    assert {j["steps"] for js in jobs.values() for j in js} == {3 * (2000 // 64)}  # 93: whole skorch epochs
    assert [(j["method"], j["seed"]) for j in jobs["skada"]] == [("erm", 0), ("erm", 1), ("dann", 0), ("dann", 1)]


def _row(f, task, method, seed, acc, ms=2.0):
    return {"framework": f, "task": task, "method": method, "seed": seed, "acc": acc, "step_ms": ms}


def test_table_means_stds_and_reasons():
    t1, t2 = "amazon_dann/books->amazon_dann/kitchen", "amazon_dann/dvd->amazon_dann/books"
    results = [_row("da", t1, "dann", 0, 80.0, 4.0), _row("da", t1, "dann", 1, 82.0, 6.0),
               _row("da", t2, "dann", 0, 70.0), _row("da", t2, "dann", 1, 74.0),
               {"framework": "skada", "task": t1, "method": "dann", "seed": 0, "error": "no such thing"},
               _row("skada", t2, "dann", 0, 60.0)]
    table = peers.format_table(results, [t1, t2], ["dann"], ["da", "skada"])
    lines = table.splitlines()
    assert lines[0] == "| task | method | da acc | da ms/step | skada acc | skada ms/step |"
    assert lines[2] == "| B→K | dann | 81.0 ± 1.4 | 5.00 | n/a [1] |  |"
    assert lines[3] == "| D→B | dann | 72.0 ± 2.8 | 2.00 | 60.0 | 2.00 |"
    # mean over tasks per seed (75, 78), then over seeds: 76.5 ± 2.1; skada's missing cell names the reason
    assert lines[4] == "| mean of 2 | dann | 76.5 ± 2.1 | 3.50 | n/a [1] |  |"
    assert lines[-1] == "[1] no such thing"


def test_merging_runs_fills_failed_cells_only():
    t = "amazon_dann/books->amazon_dann/kitchen"
    first = [_row("da", t, "erm", 0, 70.0), {"framework": "da", "task": t, "method": "mcc", "seed": 0, "error": "x"}]
    second = [_row("da", t, "mcc", 0, 81.0), {"framework": "da", "task": t, "method": "erm", "seed": 0, "error": "y"},
              _row("da", t, "erm", 1, 72.0)]
    merged = {(r["method"], r["seed"]): r for r in peers.merge_runs(first + second)}
    assert merged[("mcc", 0)]["acc"] == 81.0 and merged[("erm", 0)]["acc"] == 70.0 and len(merged) == 3


def test_short_task_names():
    assert peers.short_task("amazon_dann/electronics->amazon_dann/dvd") == "E→D"
    assert peers.task_name("kitchen->books") == "amazon_dann/kitchen->amazon_dann/books"


def test_the_shared_discriminator_is_da_s_default_discriminator():
    from da.losses import DomainDiscriminator

    ours, theirs = peer_nets.Discriminator(50), DomainDiscriminator(50)
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    assert not any(isinstance(m, torch.nn.Dropout) for m in ours)  # da's default: no dropout beside BatchNorm


def test_shared_networks_and_clock():
    net = peer_nets.make_classifier_net(20, 3, hidden=[7])
    assert net.feature.out_features == 7 and net(torch.randn(5, 20)).shape == (5, 3)
    assert peer_nets.FeatureMLP(input_shape=[4, 5], hidden=[6]).layers[0].in_features == 20
    x = torch.randn(10, 20)
    y = net(x).argmax(-1)
    y[:4] = (y[:4] + 1) % 3
    assert peer_nets.accuracy(net, x, y, batch_size=3) == pytest.approx(60.0)
    clock = peer_nets.StepClock(warmup=2)
    for _ in range(5):
        clock.start()
        torch.randn(200, 200) @ torch.randn(200, 200)
        clock.stop()
    s = clock.summary()
    assert (s["steps"], s["timed_steps"]) == (5, 3) and s["step_ms"] > 0


def test_peers_are_a_benchmark_only_extra():
    import tomllib

    extras = tomllib.loads((BENCH.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(p.startswith("skada") for p in extras["peers"])
    installed_by_ci = " ".join(extras["dev"]).lower()
    assert "skada" not in installed_by_ci and "pytorch-adapt" not in installed_by_ci


def test_the_readme_peers_table_is_rebuilt_from_its_shipped_records(capsys, monkeypatch):
    """The README's peers table is what `peers.py --table results/peers.jsonl` prints from the shipped records."""
    repo = BENCH.parent
    monkeypatch.chdir(repo)
    readme = (repo / "README.md").read_text()
    command = "python benchmarks/peers.py --quick --table results/peers.jsonl"
    assert command in readme and (repo / "results" / "peers.jsonl").is_file()
    after = readme[readme.index(command):]
    after = after[after.index("```\n\n") + len("```\n\n"):]
    assert peers.main(["--quick", "--table", "results/peers.jsonl"]) == 0
    printed = capsys.readouterr().out
    assert after.startswith(printed), "README peers table differs from results/peers.jsonl"
